"""Plain fine-tuning on clean data: the baseline every backdoor-defense paper reports.

There is no paper behind it; it is BackdoorBench's `ft` baseline (defense/ft.py with
config/defense/ft/config.yaml): SGD at rate 0.01 with momentum 0.9 and weight decay 5e-4, batches
of 256, 100 epochs, a cosine schedule stepped once per epoch, random crops with 4-pixel padding, plain
cross-entropy. Whatever another repair does better than this row is what its extra machinery adds.

Departures from BackdoorBench's ft.py:
- no horizontal flips (BackdoorBench flips CIFAR-10 only; goodnet cannot tell whether a flip keeps a
  label, e.g. of a digit or a traffic sign);
- it fine-tunes on the clean validation data it is given, not on a 5 % sample of the training set;
- `variant=goodnet` gives goodnet's own schedule instead (batches of 64, shifts and random erasing,
  cosine decay per batch, gradient clipping at norm 5; pass --lr 0.05 --epochs 40 for its rate and length).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lazy_torch import nn, torch
from ..model_copies import copy_model
from .base import RepairData, RepairedModel, RepairOutcome
from .registry import register_repair
from .schedule import BackdoorBenchSchedule


@register_repair
@dataclass(frozen=True)
class FineTuning(BackdoorBenchSchedule):
    name = "fine-tune"
    description = (
        "plain fine-tuning on clean validation data (BackdoorBench's ft baseline: SGD 0.01, "
        "100 epochs, random crops): the baseline"
    )

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        tuned = self.tune(
            copy_model(model),
            data.clean_valid.x,
            data.clean_valid.y,
            data.value_range,
            "fine-tuning" if progress else None,
        )
        return RepairOutcome(
            [RepairedModel(self.name, tuned, {}, weights_changed=True)], {"fitted_on": len(data.clean_valid)}
        )
