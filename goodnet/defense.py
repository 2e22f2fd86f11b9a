"""The lab's pruning defense as one library call: profile, sweep, select, measure.

Only clean validation data decides anything (the pruning order and the stopping point); the other
data sets are measured at every step so the curve and the table can show what the choice did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from torch import nn

from .data import ImageSet, check_fits_model
from .errors import GoodnetError
from .graph_split import split_at_conv
from .metrics import accuracy, flag_rate, goodnet_labels
from .profiling import channel_means, pruning_order
from .selection import DROPS, RULES, Selection, drop_percent, select
from .sweep import DEFAULT_BATCH_SIZE, SweepPredictions, predict, run_trunk, sweep

ROLES = ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")
DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0, 30.0)


@dataclass(frozen=True)
class DefenseData:
    clean_valid: ImageSet
    poisoned_valid: ImageSet | None = None
    clean_test: ImageSet | None = None
    poisoned_test: ImageSet | None = None

    def present(self) -> dict[str, ImageSet]:
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}


@dataclass(frozen=True)
class DefenseSettings:
    layer: str = "conv_3"
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    order: str = "ascending"
    drop: str = "absolute"
    rules: Sequence[str] = ("crossing",)  # rules whose models are saved; both are always reported
    batch_size: int = DEFAULT_BATCH_SIZE

    def validate(self) -> None:
        if self.order not in ("ascending", "descending"):
            raise GoodnetError(f"unknown order '{self.order}' (ascending or descending)")
        if self.drop not in DROPS:
            raise GoodnetError(f"unknown drop '{self.drop}' ({' or '.join(DROPS)})")
        for rule in self.rules:
            if rule not in RULES:
                raise GoodnetError(f"unknown rule '{rule}' ({' or '.join(RULES)})")
        if not self.thresholds:
            raise GoodnetError("give at least one threshold")
        for x in self.thresholds:
            if not (np.isfinite(x) and 0 < x <= 100):
                raise GoodnetError(f"threshold {x} is not a percentage in (0, 100]")
        if self.batch_size < 1:
            raise GoodnetError("batch size must be at least 1")


@dataclass
class DefenseResult:
    settings: DefenseSettings
    cut: str
    num_channels: int
    num_classes: int
    mean_activation: np.ndarray
    order: np.ndarray
    sweeps: dict[str, SweepPredictions]
    truth: dict[str, np.ndarray]
    selections: list[Selection]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def extra_class(self) -> int:
        return self.num_classes

    def pruned_channels(self, steps: int) -> list[int]:
        return [int(c) for c in self.order[:steps]]

    def model_metrics(self, steps: int) -> dict[str, float | None]:
        """B'_steps on every data set (steps = 0 is B)."""
        def score(role: str) -> float | None:
            if role not in self.sweeps:
                return None
            return accuracy(self.sweeps[role].labels[steps], self.truth[role])
        return {"valid_accuracy": score("clean_valid"), "test_accuracy": score("clean_test"),
                "valid_asr": score("poisoned_valid"), "test_asr": score("poisoned_test")}

    def goodnet_metrics(self, steps: int, split: str = "test") -> dict[str, float | None]:
        """G(B, B'_steps) on the clean and poisoned sets of `split` ('valid' or 'test')."""
        out: dict[str, float | None] = {}
        for kind, key, flag_key in (("clean", "accuracy", "flagged_clean"), ("poisoned", "asr", "flagged_poisoned")):
            role = f"{kind}_{split}"
            if role not in self.sweeps:
                out[f"{split}_{key}"], out[flag_key] = None, None
                continue
            labels = self.sweeps[role].labels
            g = goodnet_labels(labels[0], labels[steps], self.extra_class)
            out[f"{split}_{key}"] = accuracy(g, self.truth[role])
            out[flag_key] = flag_rate(g, self.extra_class)
        return out

    def valid_drop(self, steps: int) -> float:
        labels = self.sweeps["clean_valid"].labels
        y = self.truth["clean_valid"]
        correct = [int((labels[k] == y).sum()) for k in (0, steps)]
        return drop_percent(correct[0], correct[1], len(y), self.settings.drop)


def run_defense(model: nn.Module, data: DefenseData, settings: DefenseSettings = DefenseSettings(),
                progress: bool = True) -> DefenseResult:
    """Profile on clean validation data, sweep every data set, select a B' per threshold."""
    settings.validate()
    model.eval()
    for role, images in data.present().items():
        check_fits_model(images, model.input_shape, model.num_classes, role.replace("_", "-"))
    split = split_at_conv(model, settings.layer)
    timings: dict[str, float] = {}
    crossing = {}
    start = time.perf_counter()
    for role, images in data.present().items():
        crossing[role] = run_trunk(split, images.x, settings.batch_size, desc=f"trunk {role}" if progress else None)
    timings["trunk"] = time.perf_counter() - start

    means = channel_means(crossing["clean_valid"][0])
    order = pruning_order(means, settings.order)

    start = time.perf_counter()
    sweeps = {role: sweep(split, tensors, order, settings.batch_size, desc=f"sweep {role}" if progress else None)
              for role, tensors in crossing.items()}
    timings["sweep"] = time.perf_counter() - start

    truth = {role: images.y for role, images in data.present().items()}
    valid = sweeps["clean_valid"].labels
    correct = [int(c) for c in (valid == truth["clean_valid"][None, :]).sum(axis=1)]
    selections = select(correct, len(truth["clean_valid"]), settings.thresholds, settings.drop, RULES)
    return DefenseResult(settings=settings, cut=split.cut, num_channels=split.num_channels,
                         num_classes=model.num_classes, mean_activation=means, order=order,
                         sweeps=sweeps, truth=truth, selections=selections, timings=timings)


@dataclass
class RepairRun:
    """One repair of B, measured: B, B' and G (B vs B') on whatever data sets were given."""

    repair: str
    oracle: bool
    settings: dict
    details: dict
    seconds: float
    num_classes: int
    metrics: dict[str, dict[str, float]]  # role -> {"backdoored", "repaired", "goodnet", "flagged"}


def measure_pair(model: nn.Module, repaired: nn.Module, sets: dict[str, ImageSet],
                 batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, dict[str, float]]:
    """Accuracy (ASR on poisoned sets) of B, B' and G, and the share G flags, per data set."""
    metrics = {}
    extra = int(model.num_classes)
    for role, images in sets.items():
        b = predict(model, images.x, batch_size)
        r = predict(repaired, images.x, batch_size)
        g = goodnet_labels(b, r, extra)
        metrics[role] = {"backdoored": accuracy(b, images.y), "repaired": accuracy(r, images.y),
                         "goodnet": accuracy(g, images.y), "flagged": flag_rate(g, extra)}
    return metrics


def run_repair(model: nn.Module, sets: dict[str, ImageSet], repair, progress: bool = False,
               batch_size: int = DEFAULT_BATCH_SIZE):
    """Repair B with `repair` (a repairs.Repair) on the validation data its contract allows, then
    measure B, B' and G on every set. Returns (RepairRun, RepairOutcome)."""
    from .repairs import RepairData

    model.eval()
    for role, images in sets.items():
        check_fits_model(images, model.input_shape, model.num_classes, role.replace("_", "-"))
    data = RepairData(sets["clean_valid"], sets.get("poisoned_valid")) if "clean_valid" in sets else None
    start = time.perf_counter()
    outcome = repair.run(model, data, progress)
    seconds = time.perf_counter() - start
    run = RepairRun(repair=repair.name, oracle=repair.uses_poisoned_data, settings=repair.settings(),
                    details=outcome.details, seconds=seconds, num_classes=int(model.num_classes),
                    metrics=measure_pair(model, outcome.model, sets, batch_size))
    return run, outcome
