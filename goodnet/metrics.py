"""The numbers a defense is judged by, as percentages 0..100."""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of inputs labelled as `truth`: clean accuracy, or ASR when `truth` is the attacker's."""
    return float(np.mean(labels == truth) * 100.0)


attack_success_rate = accuracy


def goodnet_labels(backdoored: np.ndarray, repaired: np.ndarray, extra_class: int) -> np.ndarray:
    """G's answer: the shared label when B and B' agree, `extra_class` (flagged) otherwise."""
    return np.where(backdoored == repaired, backdoored, extra_class)


def flag_rate(labels: np.ndarray, extra_class: int) -> float:
    """Share of inputs G flags as poisoned (detection rate on poisoned data, false alarms on clean)."""
    return float(np.mean(labels == extra_class) * 100.0)
