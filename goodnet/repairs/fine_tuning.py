"""Plain fine-tuning: the baseline every backdoor-defense paper reports.

The same schedule and augmentation as fine-pruning (SGD with momentum, cosine decay, shifts and
random erasing filled from the data's own range), on the same clean data, with nothing pruned.
Whatever fine-pruning (or any other repair) does better than this row is what its extra machinery
adds; on backdoors that wash out under any fine-tuning it adds nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .base import RepairData, RepairedModel, RepairOutcome
from .registry import register_repair
from .schedule import TuningSchedule


@register_repair
@dataclass(frozen=True)
class FineTuning(TuningSchedule):
    name = "fine-tune"
    description = ("plain fine-tuning on clean validation data (fine-prune's schedule and augmentation, "
                   "nothing pruned): the baseline")

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        tuned = self.tune(copy.deepcopy(model), data.clean_valid.x, data.clean_valid.y, data.value_range,
                          "fine-tuning" if progress else None)
        return RepairOutcome([RepairedModel(self.name, tuned, {}, weights_changed=True)],
                             {"fitted_on": len(data.clean_valid)})
