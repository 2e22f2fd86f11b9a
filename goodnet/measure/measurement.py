"""The Measurement: every number of one repair of B, computed once, here, and frozen.

`measure` takes what a repair handed over (its RepairOutcome) and the data sets, predicts with B and
each B' once per set (the pruning curve's cached sweep for a sweep's models), and derives every
number from those predictions through goodnet.measure.scores. results.json, report.md, the CLI's
lines, compare's and batch's rows all read a Measurement; none of them computes a number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ..inference import DEFAULT_BATCH_SIZE, predict
from ..inspection.detection_scores import DetectionScore, disagreement_scores
from ..inspection.strip import StripSettings
from ..io.data import ImageSet
from ..io.role_checks import label_warnings
from ..pruning.curve import PruningCurve
from ..repairs.base import Repair, RepairedModel, RepairOutcome
from ..repairs.do_no_harm import HarmCheck
from .relearning import Relearning, RelearnTest
from .sanity import SanityCheck
from .scores import curve_valid_drop, goodnet_scores, model_scores, role_metrics, test_drop
from .verdict import NextStep, Verdict, next_step, verdict


@dataclass(frozen=True)
class RunInputs:
    """Where the data came from, for the record: role -> file, what the files' values were divided
    by (--input-scale), and what was doubtful about them before any work (io.role_checks)."""

    files: dict[str, str] = field(default_factory=dict)
    input_scale: float = 1.0
    warnings: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)  # what produced the result (DefenseSpec.provenance)


@dataclass(frozen=True)
class ModelMeasurement:
    """One B' and its G, measured on every data set given."""

    repaired: RepairedModel
    labels: dict[str, np.ndarray]  # role -> B''s predictions
    metrics: dict[str, dict[str, float]]  # role -> B, B', G accuracy (ASR) and G's flag rate
    scores: dict[str, float | None]  # B''s clean accuracy and ASR on the validation and test sets
    goodnet_valid: dict[str, float | None]  # G on the validation sets, with its flag rates
    goodnet_test: dict[str, float | None]  # G on the test sets, with its flag rates
    test_drop: float | None  # points of clean test accuracy lost from B's
    # G's continuous score (B''s doubt in B's answer) on clean vs poisoned test inputs; None when
    # either test set is missing
    detection: DetectionScore | None = None
    # was the backdoor removed, at what clean cost, within the budget? (with confidence intervals)
    verdict: Verdict | None = None

    @property
    def name(self) -> str:
        return self.repaired.name


@dataclass(frozen=True)
class ThresholdChoice:
    """One stopping rule's choice for one budget X of a pruning sweep, measured."""

    name: str  # the B' it names, e.g. "x2_crossing"
    x: float
    rule: str
    reached: bool
    channels_pruned: int | None  # None: the budget was never reached
    pruned: list[int] | None = None
    valid_drop: float | None = None  # clean validation drop, as the rule measured it
    repaired: dict[str, float | None] | None = None
    goodnet: dict[str, float | None] | None = None


@dataclass(frozen=True)
class Measurement:
    """One repair of B, measured: B, each B' and its G (B vs B') on every data set given."""

    repair: Repair  # as requested
    details: dict[str, Any]
    seconds: float
    num_classes: int
    data: dict[str, ImageSet]  # role -> images (never shown to the repair unless its contract allows)
    backdoored: dict[str, np.ndarray]  # role -> B's predictions
    baseline: dict[str, float | None]  # B's clean accuracy and ASR on the validation and test sets
    models: tuple[ModelMeasurement, ...]
    sizes: dict[str, int]
    value_range: dict[str, list[float]]
    timings: dict[str, float]
    inputs: dict[str, str] = field(default_factory=dict)  # role -> file, when read from files
    input_scale: float = 1.0
    warnings: tuple[str, ...] = ()  # what is doubtful about the inputs (io.role_checks)
    provenance: dict[str, Any] = field(default_factory=dict)  # files, hashes, versions, seeds, options
    sanity: SanityCheck | None = None  # None when no clean validation data was given
    harm: HarmCheck | None = None  # the do-no-harm guard's check (None: the repair was not guarded)
    delivered: Repair | None = None  # the settings whose B' was delivered (milder ones after a fallback)
    strip: DetectionScore | None = None  # STRIP on B, the input-level baseline for G's detection
    strip_settings: StripSettings | None = None
    notice: str | None = None  # the repair's one line when it could not act on B (B' is B, or nearly)
    curve: PruningCurve | None = None
    thresholds: tuple[ThresholdChoice, ...] = ()  # a sweep's stopping rules' choices
    curve_rows: tuple[dict[str, Any], ...] = ()  # a sweep's every step (curve.csv)
    dead_channels: int | None = None  # a sweep's channels with mean activation 0 on clean validation data
    next_step: NextStep | None = None  # what to try when no B' removed the backdoor within its budget
    relearning: Relearning | None = None  # does the repair hold? (None: not asked)
    data_formats: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> what its reader found

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        return tuple(m.verdict for m in self.models if m.verdict is not None)

    @property
    def extra_class(self) -> int:
        return self.num_classes


CURVE_COLUMNS = [
    "channels_pruned",
    "fraction_pruned",
    "channel",
    "mean_activation",
    "recomputed_inputs",
    "valid_accuracy",
    "valid_asr",
    "test_accuracy",
    "test_asr",
    "goodnet_valid_accuracy",
    "goodnet_valid_asr",
    "goodnet_test_accuracy",
    "goodnet_test_asr",
    "flagged_poisoned",
    "flagged_clean",
]


def measure(
    model: nn.Module,
    repair: Repair,
    outcome: RepairOutcome,
    data: dict[str, ImageSet],
    backdoored: dict[str, np.ndarray],
    seconds: float,
    sanity: SanityCheck | None = None,
    strip: StripSettings | None = None,
    inputs: RunInputs = RunInputs(),
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    relearn: RelearnTest | None = None,
) -> Measurement:
    """Measure B (`model`), every B' of `outcome` and every G on every set of `data` (and with
    `relearn`, put every B' through the re-learning test).
    `backdoored`: B's predictions already made (role -> labels); the rest are made here."""
    curve = outcome.curve
    if curve is not None:
        for role, images in data.items():  # measuring, not deciding: the repair has finished
            curve.measure(role, images.x, progress)
        backdoored = {role: curve.labels[role].labels[0] for role in data}
    else:
        backdoored = {
            role: backdoored[role] if role in backdoored else predict(model, images.x, batch_size)
            for role, images in data.items()
        }
    extra = int(model.num_classes)
    truth = {role: images.y for role, images in data.items()}
    # the clean-accuracy budget each B' was given: the guard's, or a sweep's X for its `within` B'
    # (a `crossing` B' is by design the first one at or past X, so X is its target, not a budget)
    budgets = {} if curve is None else {sel.name: float(sel.x) for sel in curve.selections if sel.rule == "within"}
    relative = curve is not None and curve.drop == "relative"  # X in percent of B's accuracy
    guard_budget = None if outcome.guard is None else float(outcome.guard.max_drop)

    def measured(repaired: RepairedModel, labels: dict[str, np.ndarray]) -> ModelMeasurement:
        metrics = {role: role_metrics(backdoored[role], labels[role], images.y, extra) for role, images in data.items()}
        swept = repaired.name in budgets
        budget = budgets[repaired.name] if swept else guard_budget
        return ModelMeasurement(
            repaired,
            labels,
            metrics,
            model_scores(data, labels),
            goodnet_scores(data, backdoored, labels, extra, "valid"),
            goodnet_scores(data, backdoored, labels, extra, "test"),
            test_drop(metrics),
            goodnet_detection(repaired.model, data, backdoored, batch_size),
            verdict(repaired.name, truth, backdoored, labels, budget, relative and swept) if data else None,
        )

    models = []
    for candidate in outcome.models:
        if candidate.curve_step is not None:
            labels = _step_labels(curve, data, candidate.curve_step)
        else:
            labels = {role: predict(candidate.model, images.x, batch_size) for role, images in data.items()}
        models.append(measured(candidate, labels))
    strip_score = None
    if strip is not None and {"clean_test", "poisoned_test", "clean_valid"} <= set(data):
        strip_score = strip.detect(
            model, data["clean_test"].x, data["poisoned_test"].x, data["clean_valid"].x, batch_size=batch_size
        )
    doubts = tuple(inputs.warnings) + tuple(
        line
        for role in ("poisoned_valid", "poisoned_test")
        if role in data
        for line in label_warnings(data[role], backdoored[role], role)
    )
    thresholds, rows = (
        ((), ())
        if curve is None
        else (_thresholds(curve, data, backdoored, extra), _curve_rows(curve, data, backdoored, extra))
    )
    relearning = (
        None
        if relearn is None
        else relearn.run({m.repaired.name: m.repaired.model for m in models}, data, progress, batch_size)
    )
    return Measurement(
        relearning=relearning,
        repair=repair,
        details=outcome.details,
        seconds=seconds,
        num_classes=extra,
        data=data,
        backdoored=backdoored,
        baseline=model_scores(data, backdoored),
        models=tuple(models),
        sizes={role: len(images) for role, images in data.items()},
        value_range={role: [float(images.x.min()), float(images.x.max())] for role, images in data.items()},
        data_formats={role: dict(images.source) for role, images in data.items() if images.source},
        timings={"repair": seconds, **(dict(curve.timings) if curve is not None else {})},
        inputs=dict(inputs.files),
        input_scale=float(inputs.input_scale),
        warnings=doubts,
        provenance=dict(inputs.provenance),
        sanity=sanity,
        harm=outcome.guard,
        delivered=outcome.delivered or repair,
        strip=strip_score,
        strip_settings=strip if strip_score is not None else None,
        notice=outcome.notice,
        curve=curve,
        thresholds=thresholds,
        curve_rows=rows,
        dead_channels=None if curve is None else int((curve.mean_activation == 0).sum()),
        next_step=next_step(
            repair.name,
            tuple(m.verdict for m in models if m.verdict is not None),
            outcome.guard.max_drop if outcome.guard is not None and outcome.guard.delivered == "B unchanged" else None,
        ),
    )


def goodnet_detection(
    repaired: nn.Module,
    data: dict[str, ImageSet],
    backdoored: dict[str, np.ndarray],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DetectionScore | None:
    """G's detection on the test sets: its continuous score on clean (negative) vs poisoned
    (positive) test inputs; None unless both are given."""
    if not {"clean_test", "poisoned_test"} <= set(data):
        return None
    clean, poisoned = (
        disagreement_scores(repaired, data[r].x, backdoored[r], batch_size) for r in ("clean_test", "poisoned_test")
    )
    return DetectionScore.of(clean, poisoned)


def _step_labels(curve: PruningCurve, data: dict[str, ImageSet], steps: int) -> dict[str, np.ndarray]:
    """Predictions of the curve's model with `steps` channels pruned, on every data set."""
    return {role: curve.labels[role].labels[steps] for role in data}


def _thresholds(
    curve: PruningCurve, data: dict[str, ImageSet], backdoored: dict[str, np.ndarray], extra: int
) -> tuple[ThresholdChoice, ...]:
    out = []
    for sel in curve.selections:
        choice = ThresholdChoice(sel.name, sel.x, sel.rule, sel.reached, sel.channels_pruned)
        if sel.channels_pruned is not None:
            k = sel.channels_pruned
            labels = _step_labels(curve, data, k)
            base, pruned = curve.labels["clean_valid"].labels[0], curve.labels["clean_valid"].labels[k]
            choice = dataclasses.replace(
                choice,
                pruned=curve.pruned_channels(k),
                valid_drop=curve_valid_drop(base, pruned, data["clean_valid"].y, curve.drop),
                repaired=model_scores(data, labels),
                goodnet=goodnet_scores(data, backdoored, labels, extra, "test"),
            )
        out.append(choice)
    return tuple(out)


def _curve_rows(
    curve: PruningCurve, data: dict[str, ImageSet], backdoored: dict[str, np.ndarray], extra: int
) -> tuple[dict[str, Any], ...]:
    """One row per step of the pruning curve (curve.csv): the channel pruned, B' and G on every set."""
    rows = []
    for k in range(curve.num_channels + 1):
        channel = int(curve.order[k - 1]) if k else None
        labels = _step_labels(curve, data, k)
        g_valid = goodnet_scores(data, backdoored, labels, extra, "valid")
        g_test = goodnet_scores(data, backdoored, labels, extra, "test")
        recomputed = int(sum(curve.labels[role].recomputed[k - 1] for role in data)) if k else None
        rows.append(
            {
                "channels_pruned": k,
                "fraction_pruned": k / curve.num_channels,
                "channel": channel,
                "mean_activation": None if channel is None else float(curve.mean_activation[channel]),
                "recomputed_inputs": recomputed,
                **model_scores(data, labels),
                "goodnet_valid_accuracy": g_valid["valid_accuracy"],
                "goodnet_valid_asr": g_valid["valid_asr"],
                "goodnet_test_accuracy": g_test["test_accuracy"],
                "goodnet_test_asr": g_test["test_asr"],
                "flagged_poisoned": g_test["flagged_poisoned"],
                "flagged_clean": g_test["flagged_clean"],
            }
        )
    return tuple(rows)
