"""FT-SAM (Zhu et al., ICCV 2023): fine-tuning with sharpness-aware minimisation, clean data only.

The paper finds that the neurons carrying a backdoor have larger weight norms and that clean
fine-tuning barely moves them. FT-SAM makes every fine-tuning step sharpness-aware in ASAM's adaptive
form: the gradient g is taken, every parameter is moved to w + e with e = rho * |w|^2 * g /
(||(|w| * g)|| + 1e-12) (the norm over all parameters at once, so large weights move most), the
gradient is taken again there, the weights are put back and that second gradient is applied by SGD.
BatchNorm layers normalise the perturbed pass with its batch's statistics but do not fold them into
their running ones. The loss is label-smoothed cross-entropy (0.1).

Defaults are the authors' BackdoorBench code (defense/ft-sam.py, utils/defense_utils/sam/,
config/defense/ft-sam/config.yaml): rho 2, adaptive, label smoothing 0.1, SGD 0.01 with momentum 0.9
and weight decay 5e-4, batches of 256, 100 epochs, random crops, no clipping. Departures:
- the cosine schedule decays once over the run, stepped per epoch as BackdoorBench's ft.py and fp.py
  do (ft-sam.py steps a 100-step cosine once per batch, so its rate rises and falls every 200 batches);
- no horizontal flips (BackdoorBench flips CIFAR-10 only; goodnet cannot tell whether a flip keeps a label);
- `variant=goodnet` gives goodnet's schedule instead (batches of 64, shifts and random erasing, per-batch
  cosine, clipping at norm 5, no label smoothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..lazy_torch import nn, torch
from ..model_copies import copy_model
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import BackdoorBenchSchedule

LABEL_SMOOTHING = 0.1  # BackdoorBench's ft-sam config


@register_repair
@dataclass(frozen=True)
class SharpnessAwareTuning(BackdoorBenchSchedule):
    name = "ft-sam"
    relative_cost = 2.0
    description = (
        "FT-SAM (Zhu et al. 2023): fine-tuning whose every step is sharpness-aware (adaptive SAM), "
        "which shrinks the large-norm neurons that carry a backdoor"
    )

    rho: float = setting(
        2.0,
        "radius of the sharpness-aware weight perturbation (relative to each weight's size when adaptive)",
        low=0.0,
        low_open=True,
    )
    adaptive: bool = setting(
        True, "ASAM's adaptive radius, relative to each weight's size (the paper's), instead of SAM's plain radius"
    )

    def milder(self) -> list[Repair]:
        """A lower rate, then also fewer epochs; the radius halves with the rate (a smaller radius is
        closer to plain fine-tuning, which keeps clean accuracy)."""
        return [replace(self.slower(k, e), rho=self.rho / 2) for k, e in self.RATE_STEPS]

    def tuning_options(self) -> dict[str, Any]:
        options = super().tuning_options()
        if self.variant == "reference":
            options["label_smoothing"] = LABEL_SMOOTHING
        return options

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        tuned = self.tune(
            copy_model(model),
            clean.x,
            clean.y,
            data.value_range,
            "sharpness-aware fine-tuning" if progress else None,
            sharpness=self.rho,
            adaptive=self.adaptive,
        )
        return RepairOutcome(
            [RepairedModel(self.name, tuned, {}, weights_changed=True)],
            {"fitted_on": len(clean), "rho": self.rho, "adaptive": self.adaptive},
        )
