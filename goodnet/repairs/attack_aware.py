"""Attack-aware pruning, an ORACLE (from one of the lab's reports): it looks at poisoned validation
data, which the lab forbids for design, so every output labels it as such. It bounds what pruning
alone could do if the defender knew the trigger.

Over the last three conv layers, each channel (in increasing mean clean activation, channel 0
included) is pruned on trial and kept pruned only if the poisoned validation ASR goes down while
the clean validation drop stays strictly below the budget X; otherwise it is restored. The public
version overspent its budget by 8 points and skipped channel 0; here the budget is checked before
a pruning is kept, so it cannot be exceeded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from ..graph_split import conv_layers
from ..pruning import zero_channels
from .base import Repair, RepairData, RepairOutcome
from .fine_prune import activation_order
from .multi_layer import grouped, score


@dataclass
class AttackAwarePruning(Repair):
    name = "attack-aware"
    uses_poisoned_data = True
    x: float = 2.0  # clean validation budget, percentage points
    layers: int = 3  # how many of the last conv layers

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean, poisoned = data.clean_valid, data.poisoned_valid
        base_clean = score(model, clean)
        current = copy.deepcopy(model)
        current_asr = score(current, poisoned)
        kept: list[tuple[str, int]] = []
        trials = 0
        for layer in conv_layers(model)[-self.layers:]:
            for channel in activation_order(model, clean, layer):
                trials += 1
                trial = copy.deepcopy(current)
                zero_channels(trial, layer, [int(channel)])
                drop = base_clean - score(trial, clean)
                if drop >= self.x:
                    continue
                asr = score(trial, poisoned)
                if asr < current_asr:
                    current, current_asr = trial, asr
                    kept.append((layer, int(channel)))
        return RepairOutcome(current, {"oracle": True, "budget_x": self.x, "trials": trials,
                                       "pruned": grouped(kept), "valid_asr": round(current_asr, 4),
                                       "valid_drop": round(base_clean - score(current, clean), 4)})
