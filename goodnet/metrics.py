"""The numbers a defense is judged by, as percentages 0..100."""

from __future__ import annotations

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
