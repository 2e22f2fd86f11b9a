"""Reconstructive Neuron Pruning (Li et al., ICML 2023), as the authors' code runs it, clean data only.

1. Unlearn: on a copy of B in train mode, gradient *ascent* on the clean cross-entropy with SGD
   (lr 0.01, momentum 0.9, weight decay 5e-4; lr x0.1 after epochs 10 and 20). After each epoch,
   stop once the accuracy of that epoch's own training predictions is at or below 20 %.
2. Recover: on the unlearned copy, weights fixed, learn one mask in [0, 1] per BatchNorm channel
   that multiplies the BN's scale (its shift is kept). Loss 0.2 x clean cross-entropy, train mode,
   SGD (lr 0.2, momentum 0.9), masks clipped to [0, 1] after every step, 20 epochs.
3. Prune B: every channel whose mask is at or below 0.2 gets its BN scale set to 0 (shift kept).
   That is exactly what a mask of 0 does, so the masks rank channels for the operation applied.

Models without BatchNorm: the mask scales each conv channel's kernel, before its bias, and pruning
zeroes that kernel. The channel then outputs its bias, as a pruned BN channel outputs its shift.

Departures from the reference code:
- one threshold (0.2) gives one B'; the reference logs a sweep of thresholds 0 to 0.9 for the reader
  to choose from. `pruning_by="budget"` instead prunes in increasing mask order while clean
  validation accuracy drops less than `budget` points.
- at most `unlearn_epochs` (20) unlearning epochs; the reference's loop allows one more.
- no data augmentation; an epoch is a pass over all of `clean_valid` (the reference: 500 images).
- B' is reported with weights changed, not as channels zeroed: a pruned BN channel outputs its shift.
- when gradient ascent overflows (models without BatchNorm on large input values), unlearning stops at
  the last finite weights, and recovery skips the batches whose gradient is not finite.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from ..devices import device_of, to_model
from ..errors import ModelError
from ..lazy_torch import F, nn, torch
from ..metrics import model_accuracy
from ..pruning.graph_split import conv_layers
from ..pruning.zeroing import DESCRIPTION_ATTRIBUTES
from .base import FitMemo, Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair

# masks of recent fits, so the guard's milder attempts (lower threshold or budget) do not redo them
_MASK_CACHE = FitMemo(2)


def _batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, size):
        yield order[start : start + size]


def _is_batchnorm(module: nn.Module) -> bool:
    return (isinstance(module, nn.BatchNorm2d) or getattr(module, "original_name", None) == "BatchNorm2d") and getattr(
        module, "weight", None
    ) is not None


def mask_sites(model: nn.Module) -> tuple[str, list[str]]:
    """("batchnorm", every BatchNorm2d with a scale) when the model has one, as in the reference,
    else ("conv", every Conv2d): the modules whose channels carry an RNP mask."""
    bns = [name for name, m in model.named_modules() if _is_batchnorm(m)]
    if bns:
        return "batchnorm", bns
    convs = conv_layers(model)
    if not convs:
        raise ModelError("rnp: the model has no BatchNorm2d or Conv2d layer to mask")
    return "conv", convs


def masked_output(out: torch.Tensor, module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The output of `module` with its per-channel scale multiplied by `mask`, shift kept:
    a BN's gamma*x_hat + beta becomes gamma*mask*x_hat + beta; a conv's W*x + b becomes mask*(W*x) + b."""
    bias = getattr(module, "bias", None)
    if bias is None:
        return out * mask.view(1, -1, 1, 1)
    shift = bias.view(1, -1, 1, 1)
    return (out - shift) * mask.view(1, -1, 1, 1) + shift


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> list:
    """Forward hooks applying `masks` (module name -> one value per channel); remove them when done."""
    modules = dict(model.named_modules())
    return [
        modules[name].register_forward_hook(lambda module, inputs, out, m=mask: masked_output(out, module, m))
        for name, mask in masks.items()
    ]


def prune_scales(model: nn.Module, chosen: dict[str, list[int]]) -> nn.Module:
    """A copy of `model` whose channels `chosen` (module name -> channels) have their scale set to 0:
    a BN's weight (gamma) or a conv's kernel. Shifts (BN beta, conv bias) are kept, as in the reference."""
    pruned = copy.deepcopy(model)
    for attr in DESCRIPTION_ATTRIBUTES:  # deepcopy of TorchScript drops plain Python attributes
        if hasattr(model, attr) and not hasattr(pruned, attr):
            setattr(pruned, attr, getattr(model, attr))
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, channels in chosen.items():
            modules[name].weight[torch.as_tensor(channels, dtype=torch.long)] = 0
    return pruned


@register_repair
@dataclass(frozen=True)
class ReconstructiveNeuronPruning(Repair):
    name = "rnp"
    relative_cost = 0.25
    description = (
        "Reconstructive Neuron Pruning (Li et al. 2023): unlearn clean data, learn BatchNorm-scale "
        "masks that recover it, zero the scale of every channel whose mask is at or below a threshold"
    )
    fit_settings: ClassVar[tuple[str, ...]] = (
        "unlearn_lr",
        "unlearn_floor",
        "unlearn_epochs",
        "unlearn_schedule",
        "recover_lr",
        "recover_alpha",
        "recover_epochs",
        "batch_size",
        "seed",
    )

    pruning_by: Literal["threshold", "budget"] = setting(
        "threshold",
        "threshold: prune every channel whose mask is at or below --threshold (the paper's rule); "
        "budget: prune in increasing mask order while the clean drop stays below --budget",
    )
    threshold: float = setting(0.2, "prune channels whose recovered mask is at or below this", low=0.0, high=1.0)
    budget: float = setting(
        2.0, "with --pruning-by budget: clean validation accuracy budget, in points", low=0.0, low_open=True, high=100.0
    )
    unlearn_lr: float = setting(0.01, "unlearning learning rate (gradient ascent, SGD)", low=0.0, low_open=True)
    unlearn_floor: float = setting(
        20.0,
        "stop unlearning after the first epoch whose training accuracy is at or below this (%)",
        low=0.0,
        high=100.0,
    )
    unlearn_epochs: int = setting(20, "most unlearning epochs", low=1)
    unlearn_schedule: tuple[int, ...] = setting(
        (10, 20), "epochs after which the unlearning rate is divided by 10", low=1
    )
    recover_lr: float = setting(0.2, "mask recovery learning rate", low=0.0, low_open=True)
    recover_alpha: float = setting(0.2, "weight of the clean loss in mask recovery", low=0.0, low_open=True)
    recover_epochs: int = setting(20, "mask recovery epochs", low=1)
    batch_size: int = setting(128, "batch size of unlearning and recovery", low=1)
    seed: int = setting(0, "seed of the repair's random choices and training", low=0, high=2**63 - 1)

    def milder(self) -> list[Repair]:
        """A lower mask threshold (or a smaller budget), on the same masks."""
        if self.pruning_by == "budget":
            return [replace(self, budget=self.budget / k) for k in (2, 4)]
        if self.threshold == 0:  # nothing milder than pruning nothing
            return []
        return [replace(self, threshold=self.threshold / k) for k in (2, 4)]

    def check_model(self, model: nn.Module) -> None:
        self.refuse_torchscript(
            model,
            "it learns its channel masks through forward hooks, which TorchScript's compiled forward does not run",
        )

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        settings = {k: v for k, v in self.settings().items() if k in self.fit_settings}
        (kind, masks, epochs_used), reused = _MASK_CACHE.get(
            model, clean.x, clean.y, settings, lambda: self.fit(model, clean.x, clean.y)
        )
        # the reference ranks the masks as written to its mask file, to 4 decimals, in module order
        ranked = sorted(
            ((round(float(v), 4), name, c) for name, m in masks.items() for c, v in enumerate(m)), key=lambda t: t[0]
        )
        if self.pruning_by == "threshold":
            chosen = [(name, c) for v, name, c in ranked if v <= self.threshold]
        else:
            chosen = self._within_budget(model, ranked, clean)
        pruned = {
            name: sorted(c for n, c in chosen if n == name) for name in masks if any(n == name for n, _ in chosen)
        }
        details = {
            "pruned": pruned,
            "channels_pruned": len(chosen),
            "masked": kind,
            "unlearn_epochs": epochs_used,
            "masks_reused": reused,
            "masks": {n: [round(float(v), 4) for v in m] for n, m in masks.items()},
        }
        notice = None
        if not chosen:
            rule = (
                f"at or below {self.threshold:g}"
                if self.pruning_by == "threshold"
                else f"prunable within a {self.budget:g}-point budget"
            )
            notice = f"rnp: no channel's recovered mask is {rule}; model unchanged"
        # weights_changed: a pruned BN channel outputs its shift, not 0, so B' is not "B with channels zeroed"
        return RepairOutcome(
            [RepairedModel(self.name, prune_scales(model, pruned), pruned, weights_changed=bool(chosen))],
            details,
            notice=notice,
        )

    def _within_budget(self, model: nn.Module, ranked: list, clean) -> list[tuple[str, int]]:
        base = model_accuracy(model, clean.x, clean.y)
        chosen: list[tuple[str, int]] = []
        for _, name, c in ranked:  # increasing mask while the clean drop stays below the budget
            trial: dict[str, list[int]] = {}
            for n, k in chosen + [(name, c)]:
                trial.setdefault(n, []).append(k)
            if base - model_accuracy(prune_scales(model, trial), clean.x, clean.y) >= self.budget:
                break
            chosen.append((name, c))
        return chosen

    def fit(self, model: nn.Module, x, y) -> tuple[str, dict[str, torch.Tensor], int]:
        """(where the masks sit, the recovered masks per module, unlearning epochs run)."""
        kind, sites = mask_sites(model)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        generator = torch.Generator().manual_seed(self.seed)
        unlearned, epochs_used, _ = self.unlearn(model, xs, ys, generator)
        masks = self.recover(unlearned, sites, xs, ys, generator)
        return kind, masks, epochs_used

    def unlearn(
        self, model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, generator: torch.Generator
    ) -> tuple[nn.Module, int, list[float]]:
        """(the unlearned copy, epochs run, training accuracy (%) of each epoch)."""
        unlearned = copy.deepcopy(model)
        unlearned.train()
        optimizer = torch.optim.SGD(unlearned.parameters(), lr=self.unlearn_lr, momentum=0.9, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.unlearn_schedule), gamma=0.1)
        accuracies: list[float] = []
        diverged = False
        for _ in range(self.unlearn_epochs):
            correct = seen = 0
            for idx in _batches(len(xs), self.batch_size, generator):
                labels = to_model(ys[idx], unlearned)
                optimizer.zero_grad()
                logits = unlearned(to_model(xs[idx], unlearned))
                loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    diverged = True
                    break
                correct += int((logits.argmax(dim=1) == labels).sum())
                seen += len(idx)
                (-loss).backward()
                before = [p.detach().clone() for p in unlearned.parameters()]
                optimizer.step()
                if not all(torch.isfinite(p).all() for p in unlearned.parameters()):
                    with torch.no_grad():  # keep the last finite weights
                        for p, kept in zip(unlearned.parameters(), before):
                            p.copy_(kept)
                    diverged = True
                    break
            schedule.step()
            accuracies.append(100.0 * correct / max(seen, 1))
            if diverged or accuracies[-1] <= self.unlearn_floor:
                break
        return unlearned, len(accuracies), accuracies

    def recover(
        self, unlearned: nn.Module, sites: list[str], xs: torch.Tensor, ys: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The masks (one per channel of each module in `sites`) after recovery (see module doc)."""
        modules = dict(unlearned.named_modules())
        width = {name: modules[name].weight.shape[0] for name in sites}
        masks = {name: torch.ones(width[name], device=device_of(unlearned), requires_grad=True) for name in sites}
        for p in unlearned.parameters():
            p.requires_grad_(False)
        hooks = attach_masks(unlearned, masks)
        optimizer = torch.optim.SGD(list(masks.values()), lr=self.recover_lr, momentum=0.9)
        unlearned.train()
        try:
            for _ in range(self.recover_epochs):
                for idx in _batches(len(xs), self.batch_size, generator):
                    optimizer.zero_grad()
                    loss = F.cross_entropy(unlearned(to_model(xs[idx], unlearned)), to_model(ys[idx], unlearned))
                    (self.recover_alpha * loss).backward()
                    if not all(m.grad is None or torch.isfinite(m.grad).all() for m in masks.values()):
                        continue  # an overflowing unlearned model gives no direction: no step
                    optimizer.step()
                    with torch.no_grad():
                        for mask in masks.values():
                            mask.clamp_(0, 1)
        finally:
            for hook in hooks:
                hook.remove()
        return {name: mask.detach().cpu() for name, mask in masks.items()}
