"""Neural Cleanse's repair (Wang et al., IEEE S&P 2019): reverse the trigger, then unlearn it.

Why it works: the trigger scan (goodnet.inspection.trigger_reversal) finds, on clean images only,
each label's smallest trigger; a backdoor target's is an outlier far below the others (anomaly
index > 2). A reversed trigger that sends clean images to the target is close enough to the real
one that B reacts to both through the same neurons. Fine-tuning B on clean images of which a share
also carries that reversed trigger, labelled with their TRUE labels, teaches B that the trigger
means nothing, and the shortcut is unlearnt.

From the paper: the scan and its anomaly threshold of 2, unlearning only when a label is flagged
(nothing detected, nothing to fix: B is handed back unchanged, and the details say so) and a share
of 20 % of the training images stamped with the reversed trigger. What differs: the paper
fine-tunes one epoch on 10 % of the training data; we fine-tune on our (smaller) clean validation
set with fine-tune's schedule and augmentation (SGD, cosine decay, shifts, random erasing), so this
row differs from fine-tune's only by the reversed trigger; the stamped images are shown in addition
to their clean versions in each batch (through fine_tune's `penalty` hook, weighted by their share)
rather than instead of them; with several flagged labels each stamped image gets one of their
triggers at random. The scan runs on the clean images the repair fits on, with settings scaled for
a CPU (see trigger_reversal): 400 steps of 16 images per label, chosen on the development zoo.
A scan costs labels x steps x images forward and backward passes whatever the data size; the
guard's milder retries reuse it (same B, same data, same scan settings).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..inspection.trigger_reversal import TriggerScan, reverse_triggers
from .base import FitMemo, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import TuningSchedule

_last_scan = FitMemo(1)  # milder retries of the guard scan the same B and data


@register_repair
@dataclass(frozen=True)
class NeuralCleanse(TuningSchedule):
    name = "nc"
    description = ("Neural Cleanse (Wang et al. 2019): reverse a trigger per label on clean data; if a label's is "
                   "anomalously small, fine-tune with it stamped on clean images, true labels")

    stamped_share: float = setting(0.2, "share of every batch also shown stamped with a flagged label's reversed "
                                        "trigger (true labels)", low=0.0, low_open=True, high=1.0)
    scan_steps: int = setting(400, "trigger scan: most optimisation steps per label", low=1)
    scan_batch: int = setting(16, "trigger scan: clean images per label and step", low=1)
    scan_group: int = setting(10, "trigger scan: labels optimised together in one batched forward pass", low=1)

    def scan(self, model: nn.Module, data: RepairData, progress: bool = False) -> TriggerScan:
        """The trigger scan of B on the clean images the repair fits on (remembered for the next call
        with the same B, data and scan settings: the guard's milder retries)."""
        clean = data.clean_valid
        settings = {"seed": self.seed, "steps": self.scan_steps, "batch_size": self.scan_batch,
                    "group": self.scan_group}
        scan, _ = _last_scan.get(model, clean.x, clean.y, {**settings, "value_range": data.value_range},
                                 lambda: reverse_triggers(model, clean, data.value_range,
                                                          progress="reversing triggers" if progress else False,
                                                          **settings))
        return scan

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        scan = self.scan(model, data, progress)
        details: dict[str, Any] = {"fitted_on": len(clean), "scan": scan.to_json()}
        suspects = scan.suspects
        if not suspects:
            details["unchanged"] = f"the trigger scan flagged no label ({scan.verdict}): nothing to unlearn"
            return RepairOutcome([RepairedModel(self.name, model, {}, weights_changed=False,
                                                details={"unchanged": details["unchanged"]})], details)
        position = {int(label): i for i, label in enumerate(scan.labels)}
        rows = [position[t] for t in suspects]
        masks = torch.from_numpy(scan.masks[rows]).unsqueeze(1)  # (S, 1, H, W)
        patterns = torch.from_numpy(scan.patterns[rows])  # (S, C, H, W), in the data's range
        generator = torch.Generator().manual_seed(self.seed)

        def stamped_loss(tuned: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            k = max(1, int(round(self.stamped_share * len(x))))  # the batch is already in random order
            pick = torch.randint(0, len(rows), (k,), generator=generator)  # drawn on the CPU
            mask, pattern = masks[pick].to(x.device), patterns[pick].to(x.device)
            stamped = (1 - mask) * x[:k] + mask * pattern
            return F.cross_entropy(tuned(stamped), y[:k]) * (k / len(x))

        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        tuned = self.tune(copy.deepcopy(model), clean.x, clean.y, data.value_range,
                          "unlearning reversed triggers" if progress else None, penalty=stamped_loss)
        details["unlearned_labels"] = suspects
        return RepairOutcome([RepairedModel(self.name, tuned, {}, weights_changed=True)], details)
