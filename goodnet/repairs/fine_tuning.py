"""Plain fine-tuning: the baseline every backdoor-defense paper reports.

The same schedule and augmentation as fine-pruning (SGD with momentum, cosine decay, shifts and
random erasing filled from the data's own range), on the same clean data, with nothing pruned.
Whatever fine-pruning (or any other repair) does better than this row is what its extra machinery
adds; on backdoors that wash out under any fine-tuning it adds nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..models.training import fine_tune
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


@register_repair
@dataclass(frozen=True)
class FineTuning(Repair):
    name = "fine-tune"
    description = ("plain fine-tuning on clean validation data (fine-prune's schedule and augmentation, "
                   "nothing pruned): the baseline")

    epochs: int = setting(40, "fine-tuning epochs", low=1)
    lr: float = setting(0.05, "fine-tuning learning rate (SGD, cosine decay)", low=0.0, low_open=True)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = setting(5e-4, "SGD weight decay", low=0.0)
    seed: int = setting(0, "seed of the repair's random choices and training")

    def milder(self) -> list[Repair]:
        """A lower rate, then also fewer epochs."""
        return [replace(self, lr=self.lr / k, epochs=max(1, self.epochs // e)) for k, e in ((2, 1), (4, 2), (10, 4))]

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        tuned = fine_tune(copy.deepcopy(model), data.clean_valid.x, data.clean_valid.y, self.epochs, self.seed,
                          lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                          value_range=data.value_range, progress="fine-tuning" if progress else None)
        return RepairOutcome([RepairedModel(self.name, tuned, {}, weights_changed=True)],
                             {"fitted_on": len(data.clean_valid)})
