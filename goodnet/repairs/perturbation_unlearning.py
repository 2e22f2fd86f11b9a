"""Unlearning one universal adversarial perturbation, after i-BAU (Zeng et al., ICLR 2022): goodnet's
own method, clean data only.

Why: a backdoor is a shortcut, one small input change that sends every image to the target, so the
universal perturbation that most raises the clean loss is often the trigger or close to it. The
repair alternates, batch by batch: a few normalised gradient-ascent steps on one perturbation shared
by all images (kept across batches, its RMS at most `radius` times the data's value range), then a
fine-tuning step on the clean images' true labels with and without it (fine-tune's schedule and
augmentation, so its row differs from `fine-tune` only by the perturbation).

The ascent runs with the model in evaluation mode, as i-BAU's does: BatchNorm normalises with its
running statistics (in training mode a perturbation shared by the batch would shift the batch mean,
which BatchNorm subtracts again) and dropout is off. In the training step BatchNorm's running
statistics are updated by the clean batch only; the perturbed pass normalises with its own batch
statistics but leaves the running ones as they were.

Settings and their rationale: radius 0.1 of the value range in RMS is about the RMS of a
full-contrast patch covering 1 % of the image, or of a blend at 10 % opacity, so common triggers fit;
2 ascent steps per batch suffice because the perturbation is carried over from batch to batch and
keeps climbing; weight 1 gives the perturbed images as much say as the clean ones. Departures from
i-BAU: plain alternating steps instead of its implicit hypergradient, an RMS bound instead of its L2
penalty, and training mode (with clean-only running statistics) for the model's update where i-BAU
keeps the model in evaluation mode throughout.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..lazy_torch import F, nn, torch
from ..model_copies import copy_model
from ..models.training import running_stats_kept
from .base import RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import TuningSchedule


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Every module in evaluation mode (BatchNorm with running statistics, no dropout) for the
    duration; each module's own mode is put back after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class UniversalPerturbation:
    """One perturbation shared by every image, kept across batches (warm start) and found by
    normalised gradient ascent on the clean loss; RMS at most radius * (high - low)."""

    def __init__(self, shape: tuple[int, ...], value_range: tuple[float, float], radius: float, steps: int):
        self.low, self.high = value_range
        self.limit = radius * (self.high - self.low)
        self.steps = steps
        self.delta = torch.zeros(shape)

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        rms = float(delta.pow(2).mean().sqrt())
        return delta * (self.limit / rms) if rms > self.limit else delta

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`steps` ascent steps from the current perturbation, with `model` in evaluation mode."""
        delta = self.delta.to(x.device).clone()
        step = self.limit / 2
        with evaluation_mode(model):
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = F.cross_entropy(model(self.apply(x, delta)), y)
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = self._project(delta + step * grad / grad.pow(2).mean().sqrt().clamp_min(1e-12))
        self.delta = delta.detach()
        return self.delta

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (x + delta).clamp(self.low, self.high)


@register_repair
@dataclass(frozen=True)
class PerturbationUnlearning(TuningSchedule):
    name = "unlearn-uap"
    relative_cost = 1.6
    description = (
        "unlearn universal adversarial perturbations found on clean data (after i-BAU, Zeng et al. "
        "2022): fine-tuning on clean images with and without the perturbation that fools B most"
    )

    radius: float = setting(
        0.1, "largest RMS of the perturbation, as a share of the data's value range", low=0.0, low_open=True, high=1.0
    )
    steps: int = setting(2, "gradient-ascent steps on the perturbation per batch", low=1)
    weight: float = setting(1.0, "weight of the loss on perturbed images", low=0.0)

    # milder: a five times lower rate, then also fewer epochs (the perturbed loss makes each step
    # larger than plain fine-tuning's, so the rate comes down faster than fine-tune's halving)
    RATE_STEPS = ((5, 1), (25, 2), (50, 4))

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        adversary = UniversalPerturbation(clean.x.shape[1:], data.value_range, self.radius, self.steps)

        def penalty(tuned: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            delta = adversary.attack(tuned, x, y)  # evaluation mode
            with running_stats_kept(tuned):  # running statistics: from the clean batch only
                perturbed = tuned(adversary.apply(x, delta))
            return self.weight * F.cross_entropy(perturbed, y)

        tuned = self.tune(
            copy_model(model),
            clean.x,
            clean.y,
            data.value_range,
            "unlearning perturbations" if progress else None,
            penalty=penalty,
        )
        rms = float(adversary.delta.pow(2).mean().sqrt()) / (adversary.high - adversary.low)
        return RepairOutcome(
            [RepairedModel(self.name, tuned, {}, weights_changed=True)],
            {"fitted_on": len(clean), "last_perturbation_rms": round(rms, 4)},
        )
