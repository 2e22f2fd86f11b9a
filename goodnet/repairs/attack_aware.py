"""Attack-aware pruning, an ORACLE (the lab's): it looks at poisoned validation data, which the
lab forbids for design, so every output labels it as such. It bounds what pruning alone could do if
the defender knew the trigger.

Over the last three conv layers, each channel (in increasing mean clean activation, channel 0
included) is pruned on trial and kept pruned only if the poisoned validation ASR goes down while
the clean validation drop stays strictly below the budget X; otherwise it is restored. The budget
is checked before a pruning is kept, so it is never exceeded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from ..lazy_torch import nn
from ..metrics import model_accuracy
from ..pruning.graph_split import conv_layers
from ..pruning.profiling import activation_order
from ..pruning.zeroing import grouped, zero_channels
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


@register_repair
@dataclass(frozen=True)
class AttackAwarePruning(Repair):
    name = "attack-aware"
    relative_cost = 0.02
    description = (
        "an ORACLE that also reads --poisoned-valid: prune, channel by channel over the last "
        "conv layers, whatever lowers the poisoned-valid ASR within the clean budget"
    )
    data = "oracle"
    # Run by `compare --repairs attack-aware` only: it tries every channel of three layers with a full
    # pass each, which makes it slow, and as an oracle it can never count towards the clean-data bar.
    compared_by_default = False

    budget: float = setting(
        2.0,
        "clean validation accuracy budget, in points: the repair keeps the drop below it",
        low=0.0,
        low_open=True,
        high=100.0,
    )
    layers: int = setting(3, "how many of the last conv layers are tried", low=1)

    def milder(self) -> list[Repair]:
        """A smaller pruning budget."""
        return [replace(self, budget=self.budget / k) for k in (2, 4)]

    def check_model(self, model: nn.Module) -> None:
        self.refuse_torchscript(
            model,
            "it ranks conv channels by their activations through the model's torch.fx graph, and a "
            "TorchScript model cannot be profiled (its forward is compiled code)",
        )

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean, poisoned = data.clean_valid, data.poisoned_valid
        base_clean = model_accuracy(model, clean.x, clean.y)
        current = copy.deepcopy(model)
        current_asr = model_accuracy(current, poisoned.x, poisoned.y)
        kept: list[tuple[str, int]] = []
        trials = 0
        for layer in conv_layers(model)[-self.layers :]:
            for channel in activation_order(model, clean.x, layer):
                trials += 1
                trial = copy.deepcopy(current)
                zero_channels(trial, layer, [int(channel)])
                drop = base_clean - model_accuracy(trial, clean.x, clean.y)
                if drop >= self.budget:
                    continue
                asr = model_accuracy(trial, poisoned.x, poisoned.y)
                if asr < current_asr:
                    current, current_asr = trial, asr
                    kept.append((layer, int(channel)))
        pruned = grouped(kept)
        return RepairOutcome(
            [RepairedModel(self.name, current, pruned)],
            {
                "oracle": True,
                "budget_x": self.budget,
                "trials": trials,
                "pruned": pruned,
                "valid_asr": round(current_asr, 4),
                "valid_drop": round(base_clean - model_accuracy(current, clean.x, clean.y), 4),
            },
        )
