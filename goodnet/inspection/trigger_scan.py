"""A trigger scan's verdict: every label's reversed trigger (its mask norm) and which labels are
suspected targets. A backdoor's target needs a far smaller trigger than an honest label, so its
norm is an outlier below the median; the anomaly index measures how far, in consistent median
absolute deviations, as Neural Cleanse's authors do (mad_outlier_detection.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ANOMALY_THRESHOLD = 2.0  # the paper's: a label with an anomaly index above it is flagged
MAD_CONSISTENCY = 1.4826  # MAD x this estimates the standard deviation of normally distributed data
MEAN_AD_CONSISTENCY = math.sqrt(math.pi / 2)  # the same for the mean absolute deviation (1.2533)


def anomaly_indices(norms) -> np.ndarray:
    """Per label, how many consistent median absolute deviations (x 1.4826) its mask norm lies
    BELOW the median of all norms; 0 for norms at or above it. When the MAD is 0 (more than half the
    norms equal) the spread is the mean absolute deviation (x 1.2533, its own consistency constant)
    instead; when that is 0 too (all norms equal) every index is 0. Never divides by zero."""
    norms = np.asarray(norms, dtype=np.float64).reshape(-1)
    if norms.size == 0:
        return np.zeros(0)
    median = float(np.median(norms))
    deviation = np.abs(norms - median)
    spread = MAD_CONSISTENCY * float(np.median(deviation))
    if not spread > 0:
        spread = MEAN_AD_CONSISTENCY * float(np.mean(deviation))
    if not spread > 0:
        return np.zeros_like(norms)
    return np.maximum(median - norms, 0.0) / spread


@dataclass
class TriggerScan:
    """Every label's reversed trigger and the verdict drawn from their mask norms."""

    labels: list[int]
    norms: np.ndarray  # L1 norm of each label's recorded mask (in pixels)
    success: np.ndarray  # % of clean images of OTHER labels that the recorded trigger sends to the label
    reached: np.ndarray  # bool: some check reached the success threshold (else the trigger is the last one)
    masks: np.ndarray  # (L, H, W) in [0, 1]
    patterns: np.ndarray  # (L, C, H, W) in the data's value range
    anomaly: np.ndarray  # anomaly index per label (see anomaly_indices)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    only_reached: bool = False  # True: a label whose attack never succeeded is never flagged

    def _eligible(self) -> np.ndarray:
        eligible = np.ones(len(self.labels), dtype=bool)
        return eligible & np.asarray(self.reached, dtype=bool) if self.only_reached else eligible

    @property
    def suspects(self) -> list[int]:
        """Labels with an anomaly index above 2, most anomalous first."""
        order = np.argsort(-np.asarray(self.anomaly), kind="stable")
        eligible = self._eligible()
        return [int(self.labels[i]) for i in order if self.anomaly[i] > ANOMALY_THRESHOLD and eligible[i]]

    @property
    def max_anomaly(self) -> float:
        """The largest anomaly index among the labels that may be flagged (0 if none)."""
        values = np.asarray(self.anomaly)[self._eligible()]
        return float(values.max()) if values.size else 0.0

    @property
    def verdict(self) -> str:
        suspects = self.suspects
        if not suspects:
            return f"no single target found (largest anomaly index {self.max_anomaly:.1f} <= {ANOMALY_THRESHOLD:g})"
        position = {int(label): i for i, label in enumerate(self.labels)}
        first = suspects[0]
        text = f"label {first} is a suspected target (anomaly index {self.anomaly[position[first]]:.1f})"
        if len(suspects) > 1:
            others = ", ".join(f"{t} ({self.anomaly[position[t]]:.1f})" for t in suspects[1:6])
            more = f" and {len(suspects) - 6} more" if len(suspects) > 6 else ""
            text += f"; also flagged: {others}{more}"
        return text

    def to_json(self) -> dict[str, Any]:
        """Per-label numbers and the verdict, JSON-ready (masks and patterns stay out: they are
        images, for the caller to save)."""
        return {
            "verdict": self.verdict,
            "suspects": self.suspects,
            "max_anomaly_index": round(self.max_anomaly, 4),
            "anomaly_threshold": ANOMALY_THRESHOLD,
            "labels": [int(t) for t in self.labels],
            "mask_norms": [round(float(v), 4) for v in self.norms],
            "anomaly_index": [round(float(v), 4) for v in self.anomaly],
            "attack_success": [round(float(v), 2) for v in self.success],
            "reached_threshold": [bool(v) for v in self.reached],
            "settings": dict(self.settings),
            "seconds": round(float(self.seconds), 3),
        }
