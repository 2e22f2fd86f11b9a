"""Backdoor scanners measured over a population of models, as the TrojAI model-scanning rounds
score them: one suspicion score per model and scanner, turned into a probability that the model is
backdoored by Platt scaling fitted on a development population only, then judged on a separate
evaluation population by ROC-AUC, cross-entropy, the share of clean models flagged at the scanner's
own operating point, the share of backdoored ones flagged, and how often the suspected target is the
attacker's.

Scores (larger is more suspicious): Neural Cleanse's largest anomaly index; MM-BD's -log10 of its
p-value (which the calibration reads as ln(1 + score): see TRANSFORMS). Operating points are each scanner's published rule: an anomaly index above 2, a p-value at
or below 0.05. Platt scaling (Platt 1999) fits p = 1 / (1 + exp(A * score + B)) by maximum
likelihood on smoothed targets ((N+ + 1) / (N+ + 2) for backdoored models, 1 / (N- + 2) for clean
ones), which keeps the fit finite when the development population is perfectly separated.

A population of a few dozen models measures a scanner coarsely, so every measure comes with its 95 %
interval: Wilson's score interval for each share of models (clean models flagged, backdoored models
flagged, targets named), and for ROC-AUC the percentile interval of a bootstrap that resamples the
clean and the backdoored models separately (Efron and Tibshirani 1993; fixed seed, so a rerun gives the
same interval). A population its scanner separates perfectly gets the interval [1, 1] from the
bootstrap, which says only that no resample of these models overlapped.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError, SettingsError, shown_path
from ..metrics import CONFIDENCE, proportion_interval

SCANNERS = ("nc", "mm-bd")
SCANNER_TITLES = {"nc": "Neural Cleanse", "mm-bd": "MM-BD"}
SCORE_NAMES = {"nc": "largest anomaly index", "mm-bd": "-log10 p-value"}
P_FLOOR = 1e-300  # an MM-BD p-value below this scores as this
CE_EPSILON = 1e-12  # probabilities are clipped to [eps, 1 - eps] in the cross-entropy
AUC_RESAMPLES = 2000  # bootstrap resamples of the ROC-AUC interval
AUC_SEED = 0
CALIBRATION_FILE = os.path.join(os.path.dirname(__file__), "scanner_calibration.json")


@dataclass(frozen=True)
class ScanSummary:
    """What a population measure needs from one scan of one model."""

    scanner: str
    score: float  # larger is more suspicious
    flagged: bool  # at the scanner's own operating point
    suspects: list[int]  # suspected target labels, most suspicious first (empty when not flagged)
    evidence: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ScanSummary:
        return cls(**doc)


def summarize(scanner: str, scan) -> ScanSummary:
    """A TriggerScan ('nc') or MarginScan ('mm-bd') as its score, flag and suspects."""
    if scanner == "nc":
        evidence = {
            "max_anomaly_index": round(float(scan.max_anomaly), 4),
            "anomaly_index": [round(float(v), 4) for v in scan.anomaly],
            "mask_norms": [round(float(v), 4) for v in scan.norms],
        }
        return ScanSummary(
            "nc", float(scan.max_anomaly), bool(scan.suspects), list(scan.suspects), evidence, scan.seconds
        )
    if scanner == "mm-bd":
        score = -math.log10(max(float(scan.p_value), P_FLOOR))
        evidence = {
            "p_value": float(scan.p_value),
            "largest_margin_label": scan.target,
            "max_margin": [round(float(v), 4) for v in scan.statistics],
        }
        return ScanSummary("mm-bd", score, scan.flagged, scan.suspects, evidence, scan.seconds)
    raise SettingsError(f"unknown scanner '{scanner}' (known: {', '.join(SCANNERS)})")


# what the sigmoid reads of each scanner's score: MM-BD's -log10 p is heavy-tailed (a planted
# target can reach p = 1e-260), and one such model flattens a fit on it, so the fit reads
# ln(1 + score); chosen on the development part, where it fits with a lower cross-entropy than the
# raw score and puts 5 of its 8 BadNets above one half where the raw score puts 1
TRANSFORMS = {"nc": "identity", "mm-bd": "log1p"}


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of one scanner's score: probability = 1 / (1 + exp(slope * t(score) + intercept)),
    t the identity or ln(1 + score) (`transform`)."""

    scanner: str
    slope: float
    intercept: float
    fitted_on: str  # which population, in words
    backdoored: int
    clean: int
    transform: str = "identity"

    def probability(self, score: float) -> float:
        score = float(score)
        if not math.isfinite(score):
            raise DataError(f"{self.scanner}: a scanner's score must be finite to calibrate, not {score}")
        z = self.slope * transformed(score, self.transform) + self.intercept  # the log-odds of clean
        return float(math.exp(-math.log1p(math.exp(z)))) if z < 0 else float(math.exp(-z - math.log1p(math.exp(-z))))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def transformed(score: float, transform: str) -> float:
    if transform == "identity":
        return score
    if transform == "log1p":
        return math.log1p(max(score, 0.0))
    raise DataError(f"unknown calibration transform '{transform}' (known: identity, log1p)")


def fit_platt(scores, backdoored) -> tuple[float, float]:
    """Platt's (1999) sigmoid fit: (A, B) minimising the cross-entropy of 1 / (1 + exp(A s + B))
    against the smoothed targets."""
    from scipy.optimize import minimize

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(backdoored, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise DataError("calibrating a scanner needs both clean and backdoored models")
    if not np.all(np.isfinite(s)):
        raise DataError("calibrating a scanner needs finite scores")
    target = np.where(y, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

    def loss(params):
        z = params[0] * s + params[1]  # log-odds of clean
        # -[t log p + (1 - t) log(1 - p)] with p = sigmoid(-z), written stably
        value = np.sum(target * np.logaddexp(0.0, z) + (1.0 - target) * np.logaddexp(0.0, -z))
        p = 1.0 / (1.0 + np.exp(np.clip(z, -700, 700)))
        gradient_z = target - p  # d loss / d z
        return value, np.array([np.sum(gradient_z * s), np.sum(gradient_z)])

    prior = math.log((negatives + 1.0) / (positives + 1.0))
    if float(np.ptp(s)) == 0.0:  # one score for every model: no slope to fit, the base rate only
        mean_target = float(np.mean(target))
        return 0.0, math.log((1.0 - mean_target) / mean_target)
    result = minimize(loss, np.array([0.0, prior]), jac=True, method="BFGS")
    if not np.all(np.isfinite(result.x)):
        raise DataError("calibrating a scanner: the sigmoid fit did not converge")
    slope, intercept = (float(v) for v in result.x)
    return slope, intercept


def calibrate(scanner: str, summaries: list[ScanSummary], backdoored: list[bool], fitted_on: str) -> Calibration:
    """The scanner's Platt calibration fitted on these scans and their known answers."""
    transform = TRANSFORMS.get(scanner, "identity")
    slope, intercept = fit_platt([transformed(s.score, transform) for s in summaries], backdoored)
    positives = int(sum(bool(b) for b in backdoored))
    return Calibration(scanner, slope, intercept, fitted_on, positives, len(backdoored) - positives, transform)


def load_calibrations(path: str | None = None) -> dict[str, Calibration]:
    """The calibrations in `path` (default: the ones shipped with goodnet, fitted on its
    development zoo), by scanner."""
    path = path or CALIBRATION_FILE
    try:
        with open(path) as f:
            doc = json.load(f)
        return {name: Calibration(**entry) for name, entry in doc["calibrations"].items()}
    except FileNotFoundError:
        raise DataError(f"{shown_path(path)}: no such calibration file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{shown_path(path)}: not a goodnet scanner calibration file ({exc})") from None


def save_calibrations(path: str, calibrations: dict[str, Calibration], provenance: dict[str, Any]) -> None:
    doc = {"calibrations": {k: c.to_json() for k, c in calibrations.items()}, "provenance": provenance}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


@dataclass(frozen=True)
class Member:
    """One model of a population with its known answer: clean, or backdoored with a single target
    (`target`) or several (`target` None, e.g. all-to-all)."""

    name: str
    backdoored: bool
    target: int | None = None
    asr: float | None = None  # the attack's success on the poisoned test images (%), for the record
    meets_bar: bool | None = None  # a BadNet that met the zoo's bar (test ASR >= 90 %, clean within 2 points)


def cross_entropy(probabilities, backdoored) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [1e-12, 1 - 1e-12]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), CE_EPSILON, 1.0 - CE_EPSILON)
    y = np.asarray(backdoored, dtype=bool)
    return float(np.mean(-np.where(y, np.log(p), np.log(1.0 - p))))


def roc_auc_interval(
    scores, backdoored, confidence: float = CONFIDENCE, resamples: int = AUC_RESAMPLES, seed: int = AUC_SEED
) -> tuple[float, float]:
    """The percentile interval of the ROC-AUC of `scores` (larger: more suspicious) over a stratified
    bootstrap: each resample draws as many backdoored and as many clean models as there are, with
    replacement, from each kind alone. Ties between a clean and a backdoored score count one half, as
    in the ROC-AUC itself."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(backdoored, dtype=bool)
    positive, negative = s[y], s[~y]
    if positive.size == 0 or negative.size == 0:
        raise DataError("a ROC-AUC needs both clean and backdoored models")
    # wins[i, j]: backdoored model i against clean model j (1 above, 0.5 tied, 0 below)
    wins = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    for b in range(resamples):
        rows = rng.integers(0, positive.size, positive.size)
        cols = rng.integers(0, negative.size, negative.size)
        aucs[b] = wins[np.ix_(rows, cols)].mean()
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(aucs, [tail, 1.0 - tail])
    return float(low), float(high)


def share_interval(count: int, total: int) -> list[float] | None:
    """Wilson's 95 % interval of `count` of `total` models, as shares 0..1 (None without models)."""
    if total <= 0:
        return None
    interval = proportion_interval(count, total)
    return [round(interval.low / 100.0, 4), round(interval.high / 100.0, 4)]


def population_measure(
    members: list[Member], summaries: list[ScanSummary], calibration: Calibration | None
) -> dict[str, Any]:
    """One scanner over a population: ROC-AUC of its score, cross-entropy of its calibrated
    probability, clean models flagged (false-positive rate) and backdoored models flagged at its
    own operating point and at the calibrated one (a probability of at least 0.5), and target
    accuracy (single-target backdoored models flagged with the attacker's target as their first
    suspect). Each ROC-AUC and share comes with its 95 % interval (`*_interval`: [low, high])."""
    from sklearn.metrics import roc_auc_score

    if len(members) != len(summaries):
        raise DataError("a population measure needs one scan per model")
    truth = [m.backdoored for m in members]
    positives, negatives = sum(truth), len(truth) - sum(truth)
    scores = [s.score for s in summaries]
    clean_flagged = sum(s.flagged for m, s in zip(members, summaries) if not m.backdoored)
    bad_flagged = sum(s.flagged for m, s in zip(members, summaries) if m.backdoored)
    single = [(m, s) for m, s in zip(members, summaries) if m.backdoored and m.target is not None]
    named = sum(bool(s.suspects) and s.suspects[0] == m.target for m, s in single)
    result: dict[str, Any] = {
        "models": len(members),
        "backdoored": positives,
        "clean": negatives,
        "roc_auc": round(float(roc_auc_score(truth, scores)), 4) if positives and negatives else None,
        "roc_auc_interval": (
            [round(v, 4) for v in roc_auc_interval(scores, truth)] if positives and negatives else None
        ),
        "clean_flagged": clean_flagged,
        "clean_fpr": round(clean_flagged / negatives, 4) if negatives else None,
        "clean_fpr_interval": share_interval(clean_flagged, negatives),
        "backdoored_flagged": bad_flagged,
        "tpr": round(bad_flagged / positives, 4) if positives else None,
        "tpr_interval": share_interval(bad_flagged, positives),
        "single_target_models": len(single),
        "target_named": named,
        "target_accuracy": round(named / len(single), 4) if single else None,
        "target_accuracy_interval": share_interval(named, len(single)),
        "cross_entropy": None,
        "calibration": None,
    }
    for key in ("calibrated_clean_flagged", "calibrated_clean_fpr", "calibrated_clean_fpr_interval"):
        result[key] = None
    for key in ("calibrated_backdoored_flagged", "calibrated_tpr", "calibrated_tpr_interval"):
        result[key] = None
    if calibration is not None:
        probabilities = [calibration.probability(s) for s in scores]
        result["cross_entropy"] = round(cross_entropy(probabilities, truth), 4)
        result["calibration"] = calibration.fitted_on
        # the calibrated operating point: a probability of a backdoor of at least one half
        likely = [p >= 0.5 for p in probabilities]
        clean_likely = sum(f for m, f in zip(members, likely) if not m.backdoored)
        bad_likely = sum(f for m, f in zip(members, likely) if m.backdoored)
        result["calibrated_clean_flagged"] = clean_likely
        result["calibrated_clean_fpr"] = round(clean_likely / negatives, 4) if negatives else None
        result["calibrated_clean_fpr_interval"] = share_interval(clean_likely, negatives)
        result["calibrated_backdoored_flagged"] = bad_likely
        result["calibrated_tpr"] = round(bad_likely / positives, 4) if positives else None
        result["calibrated_tpr_interval"] = share_interval(bad_likely, positives)
    return result
