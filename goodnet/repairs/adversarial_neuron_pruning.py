"""Adversarial Neuron Pruning, ANP (Wu & Wang, NeurIPS 2021), as the authors' code runs it, clean data only.

Why it works: a backdoored network is unusually fragile to small adversarial changes of its
neurons. Scaling each neuron's weight by (1 + delta) and its bias by (1 + xi), |delta|, |xi| of
the order of eps, makes a backdoored model collapse, often onto the target class, even on clean
images, where a benign model barely moves. ANP gives every neuron a mask m in [0, 1] (1 at first)
and learns the masks on clean data so that the loss stays low both as is and under the worst
neuron perturbation:
    min_m  alpha * L(m * w, b) + (1 - alpha) * max_{delta, xi} L((m + delta) * w, (1 + xi) * b).
Per batch of 128 clean images the inner max starts from delta, xi uniform in [-eps, eps] and
takes `perturb_steps` steps of size eps / perturb_steps along the SIGN of the gradient; the
masks take one SGD step (rate 0.2, momentum 0.9) and are clipped to [0, 1]; 2000 such iterations.
Neurons whose mask ends at or below `threshold` (0.2) are pruned by zeroing their masked weight.

A neuron is a channel of a BatchNorm layer (its weight is gamma, its bias beta), as in the
reference; the whole model is in training mode while the masks are learned (BatchNorm normalises
with each batch's statistics), the clean images get the reference's random 4-pixel crops and
horizontal flips, and batches are drawn with replacement, so a clean set smaller than a batch
still gives full batches (with repeats). The masks and perturbations act through forward hooks on
a copy of B; B's own weights are never trained.

Departures from the reference code:
- a conv layer with no BatchNorm after it (every conv of a BN-free CNN) has its output channels
  as neurons: the mask multiplies the conv kernel, the perturbation scales its bias by (1 + xi),
  and pruning zeroes the kernel (the reference only handles BatchNorm models);
- `prune_zeroes="channel"` prunes as the rest of goodnet does instead (conv kernel and bias and
  the BatchNorm's gamma and beta: the channel outputs 0, B' is B with channels zeroed);
- the guard's milder attempts (lower thresholds) reuse the masks of the first attempt.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..devices import device_of, to_model, training_layout
from ..errors import DataError, ModelError
from ..lazy_torch import F, nn, torch
from ..models.training import random_shift
from ..progress import progress as progress_bar
from ..pruning.graph_split import conv_layers, following_batchnorm
from ..pruning.zeroing import grouped, zero_channels
from .base import FitMemo, Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


def anp_neurons(model: nn.Module) -> dict[str, str | None]:
    """The modules whose channels ANP masks, in module order, each with the conv it follows (None
    for a BatchNorm that follows no conv): every BatchNorm with a weight and a bias (as the
    reference), and every conv not followed by one (goodnet's extension to BN-free layers)."""
    modules = dict(model.named_modules())
    owner: dict[str, str | None] = {}
    for name, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            owner[name] = None
    for conv in conv_layers(model):
        bn = following_batchnorm(model, conv)
        if bn is not None and bn in owner:
            if owner[bn] is None:
                owner[bn] = conv
        else:
            owner[conv] = conv
    order = {name: i for i, name in enumerate(modules)}
    return dict(sorted(owner.items(), key=lambda item: order[item[0]]))


class NeuronPerturbation:
    """A mask m, a weight perturbation delta and a bias perturbation xi per neuron (see
    `anp_neurons`), applied by forward hooks: a module whose output is w * x + b (BatchNorm: gamma *
    x_hat + beta; conv: kernel * x + bias) outputs (m * w) * x + b as is, and ((m + delta) * w) * x +
    (1 + xi) * b when perturbed. The mask never touches the bias, as in the reference."""

    def __init__(self, model: nn.Module, eps: float):
        self.eps = eps
        self.perturbed = False
        modules = dict(model.named_modules())
        self.neurons: dict[str, nn.Module] = {name: modules[name] for name in anp_neurons(model)}
        device = device_of(model)
        self.masks = {
            name: torch.ones(_width(m), device=device, requires_grad=True) for name, m in self.neurons.items()
        }
        self.delta = {name: torch.zeros_like(m, requires_grad=False) for name, m in self.masks.items()}
        self.xi = {name: torch.zeros_like(m, requires_grad=False) for name, m in self.masks.items()}
        self._hooks = [module.register_forward_hook(self._hook(name)) for name, module in self.neurons.items()]

    def _hook(self, name: str):
        def apply(module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (out.dim() - 2)
            mask = self.masks[name]
            scale = mask + self.delta[name] if self.perturbed else mask
            bias = getattr(module, "bias", None)
            if bias is None:
                return out * scale.view(shape)
            b = bias.view(shape)
            if not self.perturbed:
                return (out - b) * scale.view(shape) + b
            return (out - b) * scale.view(shape) + b * (1 + self.xi[name]).view(shape)

        return apply

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def randomise(self, generator: torch.Generator) -> None:
        """delta and xi uniform in [-eps, eps]: the random start of every batch's inner maximisation."""
        for store in (self.delta, self.xi):
            for name, value in store.items():
                noise = torch.rand(value.shape, generator=generator).to(value.device)  # drawn on the CPU
                store[name] = (noise * 2 - 1) * self.eps

    def ascend(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        """`steps` steps of sign-gradient ascent on the perturbed loss, each of size eps / steps.
        Like the reference, no clipping: from the uniform start delta and xi end within +-2 eps."""
        names = list(self.masks)
        size = self.eps / steps
        for _ in range(steps):
            for store in (self.delta, self.xi):
                for name in names:
                    store[name] = store[name].detach().requires_grad_(True)
            self.perturbed = True
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(
                loss, [self.delta[k] for k in names] + [self.xi[k] for k in names], allow_unused=True
            )
            with torch.no_grad():
                for i, name in enumerate(names):
                    for store, grad in ((self.delta, grads[i]), (self.xi, grads[len(names) + i])):
                        step = 0.0 if grad is None else size * torch.sign(grad)
                        store[name] = (store[name] + step).detach()
        self.perturbed = False

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: float, robust: bool = True
    ) -> torch.Tensor:
        """alpha * L(masked) + (1 - alpha) * L(masked and perturbed), the perturbed pass first as in
        the reference; without `robust` (eps = 0) the perturbed term is 0, as there."""
        robust_loss = 0.0
        if robust:
            self.perturbed = True
            robust_loss = F.cross_entropy(model(x), y)
        self.perturbed = False
        natural = F.cross_entropy(model(x), y)
        return alpha * natural + (1 - alpha) * robust_loss


def prunable(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which masks are pruned: at or below `threshold`, compared as the reference compares them (its
    pruning script reads the masks back from a file written with 4 decimals)."""
    return torch.round(masks.double() * 1e4) / 1e4 <= threshold


def _width(module: nn.Module) -> int:
    return module.num_features if isinstance(module, nn.modules.batchnorm._BatchNorm) else module.out_channels


# masks of recent optimisations, so the guard's milder attempts (lower thresholds only) do not redo them
_MASK_CACHE = FitMemo(4)


@register_repair
@dataclass(frozen=True)
class AdversarialNeuronPruning(Repair):
    name = "anp"
    relative_cost = 8.3
    description = (
        "Adversarial Neuron Pruning (Wu & Wang 2021): learn per-neuron masks that keep the clean "
        "loss low under adversarial neuron perturbations, prune the neurons whose mask falls low"
    )

    eps: float = setting(
        0.4, "perturbation budget: the random start of delta and xi and the size of the ascent", low=0.0, high=1.0
    )
    alpha: float = setting(0.2, "weight of the unperturbed loss (1 - alpha: the perturbed loss)", low=0.0, high=1.0)
    mask_lr: float = setting(0.2, "mask learning rate (SGD, momentum 0.9)", low=0.0, low_open=True)
    perturb_steps: int = setting(1, "sign-gradient ascent steps on the perturbation per batch", low=1)
    iterations: int = setting(2000, "mask-optimisation iterations (batches, drawn with replacement)", low=1)
    threshold: float = setting(0.2, "prune the neurons whose mask ends at or below this", low=0.0, high=1.0)
    batch_size: int = setting(128, "batch size of the mask optimisation", low=1)
    augment: bool = setting(
        True,
        "random 4-pixel crops and horizontal flips of the clean images while the masks are learned, as the reference",
    )
    prune_zeroes: Literal["weight", "channel"] = setting(
        "weight",
        "what pruning a neuron zeroes: 'weight' (the reference's: the masked weight, BatchNorm gamma "
        "or the kernel of a conv without BatchNorm) or 'channel' (goodnet's: conv kernel and bias and the "
        "BatchNorm's gamma and beta)",
    )
    seed: int = setting(0, "seed of the repair's random choices", low=0, high=2**63 - 1)

    MILDER_THRESHOLDS = (0.5, 0.25, 0.05)  # milder: threshold times these (fewer neurons pruned)

    def milder(self) -> list[Repair]:
        """A lower threshold: fewer neurons pruned (the masks are reused, see module doc)."""
        if self.threshold == 0:  # nothing milder than pruning nothing
            return []
        return [replace(self, threshold=self.threshold * k) for k in self.MILDER_THRESHOLDS]

    def check_model(self, model: nn.Module) -> None:
        self.refuse_torchscript(
            model, "it masks neurons with forward hooks, which TorchScript's compiled forward does not run"
        )
        if not conv_layers(model):
            raise ModelError("the anp repair prunes conv channels, and the model has no Conv2d layer")

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        fill = data.value_range[0]  # crop padding: the bottom of the data's range, as every repair pads
        settings = {
            **{k: v for k, v in self.settings().items() if k not in ("threshold", "prune_zeroes")},
            "fill": fill,
        }
        masks, reused = _MASK_CACHE.get(
            model, clean.x, clean.y, settings, lambda: self.optimise_masks(model, clean.x, clean.y, progress, fill=fill)
        )
        chosen = [
            (name, int(c)) for name, m in masks.items() for c in torch.nonzero(prunable(m, self.threshold)).flatten()
        ]
        repaired, pruned, changed = self.prune(model, chosen)
        details = {
            "pruned": pruned,
            "channels_pruned": len(chosen),
            "threshold": self.threshold,
            "prune_zeroes": self.prune_zeroes,
            "fitted_on": len(clean),
            "masks_reused": reused,
            "masks": {name: [round(float(v), 4) for v in m] for name, m in masks.items()},
        }
        notice = None
        if not chosen:
            lowest = min(float(m.min()) for m in masks.values())
            notice = (
                f"anp: no neuron's mask fell to the threshold {self.threshold:g} (lowest {lowest:.3f}); model unchanged"
            )
        return RepairOutcome(
            [RepairedModel(self.name, repaired, pruned, weights_changed=changed)], details, notice=notice
        )

    def prune(self, model: nn.Module, chosen: list[tuple[str, int]]) -> tuple[nn.Module, dict[str, list[int]], bool]:
        """(B', what was pruned by layer, whether B' is more than B with conv channels zeroed)."""
        pruned = copy.deepcopy(model)
        if not chosen:
            return pruned, {}, False
        modules = dict(pruned.named_modules())
        if self.prune_zeroes == "weight":  # the reference: the masked weight only, the bias stays
            with torch.no_grad():
                for name, channels in grouped(chosen).items():
                    modules[name].weight[torch.as_tensor(channels, dtype=torch.long)] = 0
            return pruned, grouped(chosen), True
        owners = anp_neurons(model)
        by_layer: list[tuple[str, int]] = []
        orphan = False
        with torch.no_grad():
            for name, channel in chosen:
                conv = owners.get(name)
                if conv is None:  # a BatchNorm after no conv: its gamma and beta
                    modules[name].weight[channel] = 0
                    modules[name].bias[channel] = 0
                    orphan = True
                by_layer.append((conv or name, channel))
            convs = set(conv_layers(model))
            for conv, channels in grouped(by_layer).items():
                if conv in convs:  # kernel and bias, and gamma and beta of the BatchNorm after it
                    zero_channels(pruned, conv, channels)
        return pruned, grouped(by_layer), orphan

    def optimise_masks(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, progress: bool = False, fill: float | None = None
    ) -> dict[str, torch.Tensor]:
        """The masks after `iterations` min-max steps (see module doc), per masked module."""
        if len(x) < 2:
            raise DataError("the anp repair needs at least 2 clean images (BatchNorm's batch statistics)")
        torch.manual_seed(self.seed)  # dropout, active in training mode as in the reference
        generator = torch.Generator().manual_seed(self.seed)
        work = copy.deepcopy(model).train()  # the reference's mask_train runs model.train()
        for p in work.parameters():
            p.requires_grad_(False)
        neurons = NeuronPerturbation(work, self.eps)
        optimizer = torch.optim.SGD(list(neurons.masks.values()), lr=self.mask_lr, momentum=0.9)
        xs, ys = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)).long()
        low = float(xs.min()) if fill is None else fill  # crop padding: the bottom of the range (black)
        robust = self.eps > 0
        with training_layout(work):
            try:
                for _ in progress_bar(range(self.iterations), "optimising neuron masks" if progress else None):
                    idx = torch.randint(len(xs), (self.batch_size,), generator=generator)  # with replacement
                    batch = xs[idx]
                    if self.augment and batch.dim() == 4:
                        batch = random_shift(batch, generator, pixels=4, fill=low)
                        flip = torch.rand(len(batch), generator=generator) < 0.5
                        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
                    batch, labels = to_model(batch, work), to_model(ys[idx], work)
                    if robust:
                        neurons.randomise(generator)
                        neurons.ascend(work, batch, labels, self.perturb_steps)
                    optimizer.zero_grad()
                    neurons.loss(work, batch, labels, self.alpha, robust).backward()
                    optimizer.step()
                    with torch.no_grad():
                        for mask in neurons.masks.values():
                            mask.clamp_(0.0, 1.0)
            finally:
                neurons.remove()
        return {name: mask.detach().cpu().clone() for name, mask in neurons.masks.items()}
