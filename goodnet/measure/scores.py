"""The numbers a repair is judged by, each defined once: a model's clean accuracy and ASR per data
set, G's accuracy and flag rates, the clean-accuracy drop. Everything that reports a number reads
it from a Measurement, which is built from these functions only."""

from __future__ import annotations

import numpy as np

from ..io.data import ImageSet
from ..metrics import accuracy, flag_rate
from ..models.goodnet import goodnet_labels
from ..pruning.selection import drop_percent

ROLE_METRICS = ("backdoored", "repaired", "goodnet", "flagged")
SCORE_KEYS = ("valid_accuracy", "test_accuracy", "valid_asr", "test_asr")


def role_metrics(backdoored: np.ndarray, repaired: np.ndarray, truth: np.ndarray, extra_class: int) -> dict[str, float]:
    """On one data set: accuracy (ASR on a poisoned set) of B, of B', of their G, and the share G
    flags (its detection rate on poisoned inputs, its false-alarm rate on clean ones)."""
    g = goodnet_labels(backdoored, repaired, extra_class)
    return {
        "backdoored": accuracy(backdoored, truth),
        "repaired": accuracy(repaired, truth),
        "goodnet": accuracy(g, truth),
        "flagged": flag_rate(g, extra_class),
    }


def model_scores(data: dict[str, ImageSet], labels: dict[str, np.ndarray]) -> dict[str, float | None]:
    """One model's clean accuracy and ASR on the validation and test sets (None: set not given)."""

    def score(role: str) -> float | None:
        return accuracy(labels[role], data[role].y) if role in data else None

    return {
        "valid_accuracy": score("clean_valid"),
        "test_accuracy": score("clean_test"),
        "valid_asr": score("poisoned_valid"),
        "test_asr": score("poisoned_test"),
    }


def goodnet_scores(
    data: dict[str, ImageSet],
    backdoored: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    extra_class: int,
    split: str,
) -> dict[str, float | None]:
    """G (B vs the B' with these `labels`) on the clean and poisoned sets of `split` ("valid" or
    "test"), with its flag rates: detection on poisoned inputs, false alarms on clean ones."""
    out: dict[str, float | None] = {}
    for kind, key, flag_key in (("clean", "accuracy", "flagged_clean"), ("poisoned", "asr", "flagged_poisoned")):
        role = f"{kind}_{split}"
        if role not in data:
            out[f"{split}_{key}"], out[flag_key] = None, None
            continue
        g = goodnet_labels(backdoored[role], labels[role], extra_class)
        out[f"{split}_{key}"] = accuracy(g, data[role].y)
        out[flag_key] = flag_rate(g, extra_class)
    return {k: out[k] for k in (f"{split}_accuracy", f"{split}_asr", "flagged_poisoned", "flagged_clean")}


def curve_valid_drop(base: np.ndarray, pruned: np.ndarray, truth: np.ndarray, drop: str) -> float:
    """Clean validation drop of a pruned model's labels from B's, measured as the stopping rules
    measured it (`drop`: "absolute" or "relative")."""
    correct = [int((labels == truth).sum()) for labels in (base, pruned)]
    return drop_percent(correct[0], correct[1], len(truth), drop)


def test_drop(metrics: dict[str, dict[str, float]]) -> float | None:
    """Points of clean test accuracy B' lost from B's (None without clean test data)."""
    test = metrics.get("clean_test")
    return None if test is None else test["backdoored"] - test["repaired"]
