"""Fine-pruning (Liu et al. 2018): prune like the lab, then fine-tune on clean data.

Pruning alone leaves the backdoor in the remaining weights; a short, fairly aggressive fine-tune
(SGD with momentum at 0.05, cosine decay, with shift and random-erasing augmentation) moves the
weights far enough to forget it. Plain Adam at 1e-3 barely moves the ASR (measured while building
this). Only clean validation data is used: the do-no-harm guard's fit part to fine-tune, its held-out
part to choose among the candidate budgets (or fractions of channels) by clean accuracy alone.
The pruned channels stay zero throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import SettingsError
from ..metrics import model_accuracy
from ..pruning.graph_split import following_batchnorm, resolve_layer
from ..pruning.profiling import activation_order
from ..pruning.zeroing import pruned_copy, zero_channels
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .lab_pruning import lab_pruning_channels
from .registry import register_repair
from .schedule import TuningSchedule


@register_repair
@dataclass(frozen=True)
class FinePruning(TuningSchedule):
    name = "fine-prune"
    description = ("fine-pruning (Liu et al. 2018): the lab's pruning of --layer at each candidate budget, then "
                   "fine-tuning on clean validation data; a held-out share picks the candidate")

    layer: str = setting("auto", "conv layer whose output channels are pruned (auto: conv_3 when the model "
                                  "has one, as in the lab, else its last conv layer with a kernel over 1x1)")
    budgets: tuple[float, ...] = setting(
        (4.0, 10.0), "candidate accuracy-drop budgets X (points) of the pruning before fine-tuning; the "
        "held-out clean accuracy picks one", low=0.0, low_open=True, high=100.0)
    fractions: tuple[float, ...] = setting(
        (), "further candidates: prune this share of --layer's channels (e.g. 0.5 0.8)", low=0.0, low_open=True,
        high=1.0)

    def check(self) -> None:
        if not self.budgets and not self.fractions:
            raise SettingsError("fine-prune needs at least one budget or fraction")
        if 1.0 in self.fractions:
            raise SettingsError("fine-prune: a fraction of 1 would prune every channel; use fractions below 1")

    def milder(self) -> list[Repair]:
        """Fewer channels and a lower rate, then also fewer epochs."""
        return [replace(self.slower(k, e), budgets=tuple(b / k for b in self.budgets),
                        fractions=tuple(f / k for f in self.fractions)) for k, e in self.RATE_STEPS]

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        layer = resolve_layer(model, self.layer)
        fit, held = data.fit_and_choose(self.seed)
        bn = following_batchnorm(model, layer)
        plans = [(f"x={x:g}", lab_pruning_channels(model, fit, layer, x)) for x in self.budgets]
        if self.fractions:
            order = activation_order(model, fit.x, layer)
            plans += [(f"fraction={f:g}", order[:int(round(f * len(order)))]) for f in self.fractions]
        candidates = []
        for label, channels in plans:
            torch.manual_seed(self.seed)
            tuned = self.tune(pruned_copy(model, layer, channels), fit.x, fit.y, data.value_range,
                              f"fine-tuning ({label})" if progress else None,
                              after_step=lambda m, c=channels: zero_channels(m, layer, c, bn))
            candidates.append((model_accuracy(tuned, held.x, held.y), -len(channels), label, channels, tuned))
        best = max(candidates, key=lambda c: c[:2])  # ties: fewer channels pruned
        return RepairOutcome([RepairedModel(self.name, best[4], {layer: best[3]}, weights_changed=True)], {
            "layer": layer, "pruned": {layer: best[3]}, "chosen": best[2],
            "held_out_accuracy": {c[2]: round(c[0], 4) for c in candidates}})
