"""The numbers a defense is judged by, as percentages 0..100, and how far each can be trusted: a
share measured on n images is known only to within a confidence interval, and a change between two
models measured on the same images is known to within a paired one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .inference import predict
from .lazy_torch import nn


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


CONFIDENCE = 0.95  # every interval goodnet reports


@dataclass(frozen=True)
class Interval:
    """A percentage (or a change in points) with its confidence interval, measured on `n` images."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def to_json(self) -> dict[str, float | int]:
        return {
            "value": round(self.value, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "n": self.n,
            "confidence": self.confidence,
        }


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _wilson(hits: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion, as shares 0..1 (Wilson 1927)."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # p inside, despite rounding


def proportion_interval(hits: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """A share of `n` images in percent (an accuracy, an ASR) with Wilson's score interval, which
    keeps its coverage near the nominal level for small n and for shares near 0 or 100 %."""
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n > 0, got hits={hits}, n={n}")
    low, high = _wilson(int(hits), int(n), _z(confidence))
    return Interval(100.0 * hits / n, 100.0 * low, 100.0 * high, int(n), confidence)


def paired_change_interval(before: np.ndarray, after: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The change in percentage points from `before` to `after`, two models' per-image correctness
    (booleans) on the same images, with Newcombe's square-and-add interval for paired proportions
    (Newcombe 1998, method 10: Wilson intervals of both shares, combined with the correction for
    their correlation). The pairing matters: two models that agree on most images differ by far
    less noise than two independent samples would."""
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if before.shape != after.shape or before.ndim != 1 or before.size == 0:
        raise ValueError("before and after must be equally long, non-empty 1-d arrays")
    n = int(before.size)
    both = int(np.sum(before & after))  # right before and after
    lost = int(np.sum(before & ~after))  # right before only
    gained = int(np.sum(~before & after))  # right after only
    neither = n - both - lost - gained
    z = _z(confidence)
    p1, p2 = (both + lost) / n, (both + gained) / n
    l1, u1 = _wilson(both + lost, n, z)
    l2, u2 = _wilson(both + gained, n, z)
    margins = (both + lost) * (gained + neither) * (both + gained) * (lost + neither)
    phi = 0.0
    if margins > 0:
        a = both * neither - lost * gained
        phi = (a - n / 2) / math.sqrt(margins) if a > n / 2 else (a / math.sqrt(margins) if a < 0 else 0.0)
    change = p2 - p1
    low = change - math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    high = change + math.sqrt(max(0.0, (u2 - p2) ** 2 + (p1 - l1) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1)))
    return Interval(100.0 * change, 100.0 * max(-1.0, low), 100.0 * min(1.0, high), n, confidence)
