"""FT-SAM (Zhu et al., ICCV 2023): fine-tuning with sharpness-aware minimisation, clean data only.

Why plain fine-tuning leaves some backdoors in place: the paper finds that the neurons that carry a
backdoor have larger weight norms than the others, and that clean fine-tuning barely moves them:
they sit in a minimum of the clean loss that its gradient does not leave. FT-SAM replaces each
fine-tuning step by a sharpness-aware one: the weights are first moved, by first order, to the
worst point of the clean loss within a radius `rho` (w + e, e along the gradient), the gradient is
taken there, the weights are put back and that gradient is applied. In the adaptive form (ASAM,
Kwon et al. 2021) the radius is measured relative to each weight's size, e = rho * |w|^2 * g /
||(|w| * g)||, so the large-norm neurons are perturbed most; minimising the loss at their perturbed
point flattens them, which in practice shrinks their norms and breaks the trigger's shortcut while
the clean task, spread over many small weights, is kept.

From the paper (and its authors' BackdoorBench settings): the adaptive form with rho = 2, SGD with
momentum 0.9, weight decay 5e-4 and a cosine schedule. What is ours: the schedule is fine-tune's
(40 epochs at rate 0.05, shifts and random erasing, gradient clipping at norm 5; the authors use
rate 0.01 over 100 epochs of larger batches and label smoothing 0.1, which we leave out), so the
`fine-tune` and `ft-sam` rows differ only by the sharpness-aware step. BatchNorm layers normalise
the perturbed pass with its batch's statistics but do not fold them into their running ones
(common SAM practice), so the statistics the model is evaluated with come from its real weights.
The cost is two forward-backward passes per batch: about twice plain fine-tuning. With the paper's
settings, on the development zoo (seed 0; fine-tune's ASR in brackets): 0.6 % ASR on
patch/small_cnn/0-255 (2.1 %), 1.4 % on blended/resnet8 (28.6 %) and 0.4 % on sig/resnet8
(11.6 %), clean accuracy never lower; nothing was changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import TuningSchedule


@register_repair
@dataclass(frozen=True)
class SharpnessAwareTuning(TuningSchedule):
    name = "ft-sam"
    description = ("FT-SAM (Zhu et al. 2023): fine-tuning whose every step is sharpness-aware (adaptive SAM), "
                   "which shrinks the large-norm neurons that carry a backdoor")

    rho: float = setting(2.0, "radius of the sharpness-aware weight perturbation (relative to each weight's "
                              "size when adaptive)", low=0.0, low_open=True)
    adaptive: bool = setting(True, "ASAM's adaptive radius, relative to each weight's size (the paper's), "
                                   "instead of SAM's plain radius")

    def milder(self) -> list[Repair]:
        """A lower rate, then also fewer epochs; the radius halves with the rate (a smaller radius is
        closer to plain fine-tuning, which keeps clean accuracy)."""
        return [replace(self.slower(k, e), rho=self.rho / 2) for k, e in self.RATE_STEPS]

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        tuned = self.tune(copy.deepcopy(model), clean.x, clean.y, data.value_range,
                          "sharpness-aware fine-tuning" if progress else None, sharpness=self.rho,
                          adaptive=self.adaptive)
        return RepairOutcome([RepairedModel(self.name, tuned, {}, weights_changed=True)],
                             {"fitted_on": len(clean), "rho": self.rho, "adaptive": self.adaptive})
