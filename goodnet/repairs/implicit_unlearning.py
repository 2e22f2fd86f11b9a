"""i-BAU: implicit backdoor adversarial unlearning (Zeng et al., ICLR 2022), clean data only.

A backdoor is a shortcut: one small input change sends (almost) every image to the target class.
The universal perturbation delta that raises the clean loss most is therefore often the trigger or
close to it, and a model that keeps its true answers under it has lost the shortcut. i-BAU solves

    min_theta  max_delta  L(f_theta(x + delta), y)      (clean x, y only)

and updates the model by the IMPLICIT HYPERGRADIENT: delta* depends on theta through the inner
player's gradient-descent map Phi(delta, theta) = delta - a * grad_delta L_in(delta, theta), and at
its fixed point the implicit function theorem gives

    dL_out/dtheta (total) = dL_out/dtheta + (dPhi/dtheta)^T v,   v = (I - dPhi/ddelta)^-T dL_out/ddelta,

with v approximated by K iterations v <- (dPhi/ddelta)^T v + dL_out/ddelta from v = 0 (a truncated
Neumann series, the authors' `fixed_point`; K = 0 is the plain gradient). Jacobian products are
vector-Jacobian products through grad_delta L_in (double backpropagation).

The default is the authors' `defense.py` step for step. Each round: delta starts at zero and takes
one SGD step (rate 10) per batch on -CE(f(x + delta), f's own labels) + 0.001 ||delta||^2, one pass
over the clean data in a fixed batch order; then, with that delta fixed, one Adam step (rate 0.001)
per batch on the hypergradient with K = 5, where L_in = -CE(f(x0 + delta), y0) + 0.001 ||delta||^2
on the FIRST batch (x0, y0), a = 0.1, and L_out = CE(f(x + m * delta), y) with delta on int(1 %) of
the batch's images (one of 100). 5 rounds, batches of 100, no bound or clamping on delta, the model
in evaluation mode throughout (BatchNorm's running statistics stay B's).

Departures:
- Value range: the reference assumes images in [0, 1]. With R = high - low of `data.value_range`,
  the rates are multiplied by R^2 and the penalty divided by R^2: for an equivalent model the
  perturbation is the same relative to the range on 0..255, [0, 1] or [-1, 1] data.
- The clean images are put in one seeded random order once and batched alike every round (the
  reference keeps its data's order: CIFAR-10's test images, which are not sorted by class).
- `variant="goodnet"`: our own minimax (not the paper's algorithm): `steps` normalised ascent steps
  on delta per batch, interleaved with the model's updates, warm-started from the last batch, inside
  an RMS ball of `radius` x R with x + delta clamped into the range; the inner map on the current
  batch with true labels and no penalty; a fresh batch order every round; `perturbed_share` of each
  batch (at least one image) carries delta. Its tuned settings: `--variant goodnet --rounds 10
  --perturbed-share 0.1`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from ..devices import to_model, training_layout
from ..errors import ModelError, SettingsError, TrainingDiverged
from ..lazy_torch import F, nn, torch
from ..model_copies import copy_model
from ..progress import progress as progress_bar
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


def fixed_point_hypergradient(
    params: list[torch.Tensor],
    delta: torch.Tensor,
    outer_loss: Callable[[torch.Tensor], torch.Tensor],
    inner_map: Callable[[torch.Tensor], torch.Tensor],
    fixed_point_steps: int,
    tol: float = 1e-10,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """(outer loss, hypergradient, plain gradient) in `params` at the inner solution `delta`, by the
    fixed-point method: v <- (dPhi/ddelta)^T v + dL_out/ddelta, `fixed_point_steps` times from v = 0
    (stopping early once v moves less than `tol`), then dL_out/dtheta + (dPhi/dtheta)^T v.
    `outer_loss(delta)`: L_out; `inner_map(delta)`: Phi(delta), both built from the model so that
    autograd reaches `params`."""
    delta = delta.detach().requires_grad_(True)
    loss = outer_loss(delta)
    grads = torch.autograd.grad(loss, params + [delta], allow_unused=True)
    plain = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads[:-1])]
    direct = torch.zeros_like(delta) if grads[-1] is None else grads[-1].detach()  # dL_out/ddelta
    if fixed_point_steps == 0:
        return loss.detach(), plain, plain
    phi = inner_map(delta)
    v = torch.zeros_like(delta)
    for _ in range(fixed_point_steps):
        previous = v
        (jtv,) = torch.autograd.grad(phi, delta, grad_outputs=v, retain_graph=True)  # (dPhi/ddelta)^T v
        v = jtv + direct
        if float((v - previous).norm()) < tol:
            break
    mixed = torch.autograd.grad(phi, params, grad_outputs=v, allow_unused=True)  # (dPhi/dtheta)^T v
    hyper = [g if m is None else g + m for g, m in zip(plain, mixed)]
    return loss.detach(), hyper, plain


def descent_map(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rate: float,
    penalty: float,
    perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The inner player's map Phi(delta) = delta - rate * grad_delta L_in, L_in = -CE(f(x + delta),
    y) + penalty * ||delta||^2 (the reference's; `perturb` replaces x + delta, e.g. by a clamped
    sum), built with create_graph so that it can be differentiated again."""

    def phi(delta: torch.Tensor) -> torch.Tensor:
        images = x + delta if perturb is None else perturb(x, delta)
        inner = -F.cross_entropy(model(images), y) + penalty * delta.pow(2).sum()
        (grad,) = torch.autograd.grad(inner, delta, create_graph=True)
        return delta - rate * grad

    return phi


def universal_ascent(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], rate: float, penalty: float
) -> torch.Tensor:
    """The reference's perturbation for one round: from zero, one SGD step of `rate` per batch on
    -CE(f(x + delta), f's labels on x) + penalty * ||delta||^2, one pass in the given order."""
    delta = torch.zeros_like(batches[0][0][:1])
    for x, _ in batches:
        with torch.no_grad():
            labels = model(x).argmax(1)
        delta.requires_grad_(True)
        loss = -F.cross_entropy(model(x + delta), labels) + penalty * delta.pow(2).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta - rate * grad).detach()
    return delta


class SharedPerturbation:
    """`variant="goodnet"`: one perturbation shared by every image of a batch, RMS at most radius *
    (high - low), x + delta clamped into [low, high], `steps` normalised ascent steps per batch."""

    def __init__(self, shape: tuple[int, ...], value_range: tuple[float, float], radius: float, steps: int):
        self.low, self.high = value_range
        self.limit = radius * (self.high - self.low)  # largest RMS
        self.steps = steps
        self.step = 2.5 * self.limit / max(steps, 1)  # RMS of one ascent step (the usual PGD ratio)
        self.delta = torch.zeros(shape)

    def reset(self) -> None:
        self.delta = torch.zeros_like(self.delta)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        rms = float(delta.pow(2).mean().sqrt())
        return delta * (self.limit / rms) if rms > self.limit else delta

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (x + delta).clamp(self.low, self.high)

    def maximise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`steps` normalised gradient-ascent steps on the batch loss, from the last batch's delta."""
        delta = self.delta.clone()
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(self.apply(x, delta)), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = self.project(delta + self.step * grad / grad.pow(2).mean().sqrt().clamp_min(1e-30))
        self.delta = delta.detach()
        return self.delta


@register_repair
@dataclass(frozen=True)
class ImplicitUnlearning(Repair):
    name = "i-bau"
    relative_cost = 0.76
    description = (
        "i-BAU (Zeng et al. 2022): minimax unlearning of the universal perturbation that fools B most, "
        "the model updated by the implicit hypergradient"
    )

    variant: Literal["reference", "goodnet"] = setting(
        "reference",
        "reference: the authors' defense.py; goodnet: our bounded, interleaved minimax "
        "(tuned with --rounds 10 --perturbed-share 0.1)",
    )
    rounds: int = setting(5, "rounds over the clean data (the reference's 5)", low=1)
    lr: float = setting(1e-3, "Adam rate of the model's update (the reference's 0.001)", low=0.0, low_open=True)
    batch_size: int = setting(100, "images per batch (the reference's 100)", low=1)
    perturbation_lr: float = setting(
        10.0,
        "reference: SGD rate of the perturbation, one step per batch, in units "
        "of the value range squared (the reference's 10 on [0, 1] data)",
        low=0.0,
        low_open=True,
    )
    perturbation_penalty: float = setting(
        1e-3,
        "reference: weight of ||delta||^2 in the perturbation's loss, in "
        "units of 1 / range squared (the reference's 0.001)",
        low=0.0,
    )
    fixed_point_steps: int = setting(
        5, "fixed-point iterations K of the implicit hypergradient (0: plain gradient)", low=0
    )
    inner_rate: float = setting(
        0.1,
        "rate a of the inner map delta - a * grad L_in, in units of the value range "
        "squared (the reference's 0.1 on [0, 1] data)",
        low=0.0,
    )
    perturbed_share: float = setting(
        0.01,
        "share of each batch that carries the perturbation in the model's loss (the reference's 1 %, rounded down)",
        low=0.0,
        low_open=True,
        high=1.0,
    )
    radius: float = setting(
        0.18,
        "goodnet variant: largest RMS of the perturbation, as a share of the value range",
        low=0.0,
        low_open=True,
        high=1.0,
    )
    steps: int = setting(5, "goodnet variant: normalised ascent steps on the perturbation per batch", low=1)
    seed: int = setting(
        0, "seed of the batch order and of the images that carry the perturbation", low=0, high=2**63 - 1
    )

    # milder: (rate divided by, rounds divided by), mildest last
    MILDER = ((2, 1), (5, 2), (10, 5))

    def milder(self) -> list[Repair]:
        """A lower rate, then also fewer rounds."""
        return [replace(self, lr=self.lr / k, rounds=max(1, self.rounds // r)) for k, r in self.MILDER]

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        if not any(p.is_floating_point() for p in model.parameters()):
            raise ModelError("i-bau needs a model with trainable floating-point weights; this one has none")

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        low, high = data.value_range
        if not high > low:
            raise SettingsError("i-bau needs clean images that are not all one value (their range is empty)")
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        tuned = copy_model(model).eval()  # evaluation mode throughout, as in the reference
        frozen = {p for p in tuned.parameters() if not p.requires_grad}
        params = [p for p in tuned.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(params, lr=self.lr)
        xs, ys = torch.from_numpy(clean.x), torch.from_numpy(clean.y).long()
        run = self._reference if self.variant == "reference" else self._goodnet
        corrections: list[float] = []
        carried = [0]  # images that carried the perturbation in the model's loss, all rounds
        with training_layout(tuned):
            delta = run(
                tuned, params, optimiser, xs, ys, high - low, (low, high), generator, corrections, carried, progress
            )
        tuned.zero_grad(set_to_none=True)
        if not all(torch.isfinite(p).all() for p in tuned.parameters()):
            raise TrainingDiverged(f"i-bau diverged: weights are no longer finite (rate {self.lr:g})")
        for p in frozen:
            p.requires_grad_(False)
        rms = float(delta.pow(2).mean().sqrt()) / (high - low)
        notice = None
        if carried[0] == 0:
            notice = (
                f"i-bau: no image carried the perturbation (int({self.perturbed_share:g} x batch of "
                f"{min(self.batch_size, len(clean))}) = 0); the model was only fine-tuned on clean images"
            )
        return RepairOutcome(
            [RepairedModel(self.name, tuned.eval(), {}, weights_changed=True)],
            {
                "fitted_on": len(clean),
                "variant": self.variant,
                "last_perturbation_rms": round(rms, 4),
                "perturbed_images": carried[0],
                "mean_hypergradient_correction": round(sum(corrections) / max(len(corrections), 1), 4),
            },
            notice=notice,
        )

    def _step(self, tuned, params, optimiser, hypergradient, round_, corrections) -> None:
        loss, hyper, plain = hypergradient
        if not torch.isfinite(loss) or not all(torch.isfinite(g).all() for g in hyper):
            raise TrainingDiverged(
                f"i-bau diverged: the loss or its hypergradient stopped being finite in "
                f"round {round_ + 1} (rate {self.lr:g})"
            )
        plain_norm = torch.sqrt(sum(g.pow(2).sum() for g in plain))
        change = torch.sqrt(sum((h - g).pow(2).sum() for h, g in zip(hyper, plain)))
        corrections.append(float(change / plain_norm.clamp_min(1e-30)))
        optimiser.zero_grad()
        for p, g in zip(params, hyper):
            p.grad = g
        optimiser.step()

    def _reference(
        self, tuned, params, optimiser, xs, ys, span, value_range, generator, corrections, carried, progress
    ):
        """The authors' defense.py, rates and penalty scaled to the value range (span = high - low)."""
        order = torch.randperm(len(xs), generator=generator)  # one order, kept every round
        batches = [
            (to_model(xs[idx], tuned), to_model(ys[idx], tuned))
            for idx in (order[s : s + self.batch_size] for s in range(0, len(xs), self.batch_size))
        ]
        penalty = self.perturbation_penalty / span**2
        phi = descent_map(tuned, *batches[0], self.inner_rate * span**2, penalty)  # always the first batch
        delta = torch.zeros_like(batches[0][0][:1])
        for round_ in progress_bar(range(self.rounds), "i-BAU unlearning" if progress else None):
            delta = universal_ascent(tuned, batches, self.perturbation_lr * span**2, penalty)
            for x, y in batches:
                count = int(len(x) * self.perturbed_share)
                carried[0] += count
                carries = torch.zeros((len(x),) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
                carries[torch.randperm(len(x), generator=generator)[:count].to(x.device)] = 1.0

                def outer(d: torch.Tensor, x=x, y=y, carries=carries) -> torch.Tensor:
                    return F.cross_entropy(tuned(x + carries * d), y)

                self._step(
                    tuned,
                    params,
                    optimiser,
                    fixed_point_hypergradient(params, delta, outer, phi, self.fixed_point_steps),
                    round_,
                    corrections,
                )
        return delta

    def _goodnet(self, tuned, params, optimiser, xs, ys, span, value_range, generator, corrections, carried, progress):
        """Our bounded, interleaved minimax (see the module docstring)."""
        adversary = SharedPerturbation(tuple(xs.shape[1:]), value_range, self.radius, self.steps)
        rate = self.inner_rate * span**2
        for round_ in progress_bar(range(self.rounds), "i-BAU unlearning" if progress else None):
            adversary.reset()
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), self.batch_size):
                idx = order[start : start + self.batch_size]
                x, y = to_model(xs[idx], tuned), to_model(ys[idx], tuned)
                adversary.delta = adversary.delta.to(x.device)
                delta = adversary.maximise(tuned, x, y)
                count = max(1, round(self.perturbed_share * len(idx)))
                carried[0] += count
                carries = torch.zeros((len(idx),) + (1,) * (x.dim() - 1), device=x.device)
                carries[torch.randperm(len(idx), generator=generator)[:count].to(x.device)] = 1.0

                def outer(d: torch.Tensor, x=x, y=y, carries=carries) -> torch.Tensor:
                    return F.cross_entropy(tuned(adversary.apply(x, carries * d)), y)

                # ascent map on the current batch: delta + a grad CE = delta - a grad(-CE), no penalty
                phi = descent_map(tuned, x, y, rate, 0.0, adversary.apply)
                self._step(
                    tuned,
                    params,
                    optimiser,
                    fixed_point_hypergradient(params, delta, outer, phi, self.fixed_point_steps),
                    round_,
                    corrections,
                )
        return adversary.delta
