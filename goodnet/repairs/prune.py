"""The lab's repair: prune one conv layer's channels in increasing mean activation until clean
validation accuracy has dropped X points (the `crossing` rule, or the model before it)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..defense import DefenseData, DefenseSettings, run_defense
from ..errors import GoodnetError
from ..pruning import pruned_copy
from .base import Repair, RepairData, RepairOutcome


def lab_pruning_channels(model: nn.Module, data: RepairData, layer: str, x: float, rule: str,
                         progress: bool = False) -> list[int]:
    """The channels the lab's sweep prunes at budget `x`, decided on clean validation data only."""
    result = run_defense(model, DefenseData(clean_valid=data.clean_valid),
                         DefenseSettings(layer=layer, thresholds=(x,), rules=(rule,)), progress=progress)
    chosen = next(s for s in result.selections if s.rule == rule)
    if chosen.channels_pruned is None:
        raise GoodnetError(f"pruning {layer} never drops clean validation accuracy by {x:g} points")
    return result.pruned_channels(chosen.channels_pruned)


@dataclass
class LabPruning(Repair):
    name = "prune"
    layer: str = "conv_3"
    x: float = 10.0
    rule: str = "crossing"

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        channels = lab_pruning_channels(model, data, self.layer, self.x, self.rule, progress)
        return RepairOutcome(pruned_copy(model, self.layer, channels),
                             {"layer": self.layer, "x": self.x, "rule": self.rule, "pruned": {self.layer: channels}},
                             single_layer=(self.layer, channels))
