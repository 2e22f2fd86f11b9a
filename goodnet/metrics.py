"""The numbers a defense is judged by, as percentages 0..100."""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from .inference import predict


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of inputs labelled as `truth`: clean accuracy, or ASR when `truth` is the attacker's."""
    return float(np.mean(labels == truth) * 100.0)


def flag_rate(labels: np.ndarray, extra_class: int) -> float:
    """Share of inputs G flags as poisoned (detection rate on poisoned data, false alarms on clean)."""
    return float(np.mean(labels == extra_class) * 100.0)


def model_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """`accuracy` of `model`'s predictions on images `x` with labels `y`."""
    return accuracy(predict(model, x), y)


def binomial_tail(correct: int, total: int, chance: float) -> float:
    """P(at least `correct` of `total` right) for a model right with probability `chance` per input:
    how likely an accuracy this high is from guessing alone (one-sided binomial test)."""
    if correct <= chance * total:
        return 1.0
    if chance <= 0.0:
        return 0.0
    k = np.arange(correct, total + 1)
    log_pmf = (
        math.lgamma(total + 1)
        - np.array([math.lgamma(i + 1) + math.lgamma(total - i + 1) for i in k])
        + k * math.log(chance)
        + (total - k) * math.log1p(-chance)
    )
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))
