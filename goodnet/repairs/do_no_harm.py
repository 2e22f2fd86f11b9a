"""Do no harm: a repair never hands over, silently, a B' that lost more clean accuracy than its budget.

`Guarded(repair, max_drop, holdout)` is itself a Repair, as scikit-learn's GridSearchCV is an
estimator: every repair gets the guard the same way. It holds out a share of every class of the
clean validation data. The repair fits on the
rest (and may use the held-out part to choose among its own candidates, never to fit). Each B' is
then judged on the held-out part: its accuracy there may fall at most `max_drop` points below B's.
A repair past that budget, or whose training diverged, is retried with its milder settings
(`Repair.milder()`: fewer epochs, a lower rate, fewer channels), and if none keeps the budget the
guard hands back B unchanged. Every attempt is recorded, and every output says what happened.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError, NonFiniteOutputs, SettingsError, TrainingDiverged
from ..inference import DEFAULT_BATCH_SIZE, predict
from ..io.data import holdout_mask, split_by_mask
from ..lazy_torch import nn
from ..metrics import accuracy, paired_change_interval
from .base import Repair, RepairData, RepairedModel, RepairOutcome

DEFAULT_MAX_DROP = 2.0  # points of held-out clean accuracy a repair may cost
DEFAULT_HOLDOUT = 0.2  # share of every class of the clean validation data held out
HOLDOUT_SEED = 0  # the held-out images are the same for every repair of the same data


@dataclass
class Attempt:
    """One try: the settings changed from the requested ones ({} for the request itself)."""

    changed: dict[str, Any]
    held_out_accuracy: float | None  # the worst of its B' (None when it diverged or gave none)
    drop: float | None
    status: str  # "within budget", "past budget", "diverged: ..."
    seconds: float
    # 95 % interval of the drop (points), paired on the held-out images (None with the drop)
    drop_interval: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "changed_settings": self.changed,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "held_out_accuracy": None if self.held_out_accuracy is None else round(self.held_out_accuracy, 4),
            "drop": None if self.drop is None else round(self.drop, 4),
            "drop_interval": None if self.drop_interval is None else [round(v, 4) for v in self.drop_interval],
        }


@dataclass
class HarmCheck:
    """What the guard measured and decided."""

    max_drop: float
    holdout: float
    held_out_images: int
    backdoored_accuracy: float  # B on the held-out images
    attempts: list[Attempt] = field(default_factory=list)
    delivered: str = "as asked"  # "as asked", "milder settings", "B unchanged"

    @property
    def requested_within_budget(self) -> bool:
        return self.attempts[0].status == "within budget"

    @property
    def fell_back(self) -> bool:
        return self.delivered != "as asked"

    @property
    def resolution(self) -> float:
        """Points of held-out accuracy one image is worth."""
        return 100.0 / max(self.held_out_images, 1)

    @property
    def decided_on_noise(self) -> bool:
        """The held-out images were too few for some decision: an attempt's drop interval reaches
        both sides of `max_drop` (or one held-out image is worth more than the budget)."""
        if self.resolution > self.max_drop:
            return True
        return any(
            a.drop_interval is not None and a.drop_interval[0] <= self.max_drop < a.drop_interval[1]
            for a in self.attempts
        )

    def coarse_note(self) -> str:
        if not self.decided_on_noise:
            return ""
        straddling = next(
            (
                a.drop_interval
                for a in self.attempts
                if a.drop_interval is not None and a.drop_interval[0] <= self.max_drop < a.drop_interval[1]
            ),
            None,
        )
        drop = "the drop" if straddling is None else f"the drop (95 % CI {straddling[0]:.2f} to {straddling[1]:.2f})"
        return (
            f"; WARNING: {self.held_out_images} held-out images cannot tell whether {drop} is within the "
            f"{self.max_drop:g}-point budget, so this decision may be noise: give more clean validation data"
        )

    def line(self, repair: Repair) -> str:
        """One line for the CLI and the report; loud when it fell back."""
        return self._line(repair) + self.coarse_note()

    def _line(self, repair: Repair) -> str:
        first = self.attempts[0]
        if not self.fell_back:
            return (
                f"do no harm: held-out clean accuracy {first.held_out_accuracy:.2f} % vs B's "
                f"{self.backdoored_accuracy:.2f} % on {self.held_out_images} images: drop {first.drop:.2f} points"
                f"{_interval_text(first)}, within the budget of {self.max_drop:g}: delivered as asked"
            )
        why = (
            first.status
            if first.drop is None
            else f"held-out drop {first.drop:.2f} points{_interval_text(first)} > budget {self.max_drop:g}"
        )
        if self.delivered == "B unchanged":
            return (
                f"WARNING: do no harm: {repair.name} failed the budget ({why}) and so did its "
                f"{len(self.attempts) - 1} milder settings; B is handed back UNCHANGED (still backdoored)"
            )
        last = self.attempts[-1]
        changed = ", ".join(f"{k}={v}" for k, v in last.changed.items())
        return (
            f"WARNING: do no harm: {repair.name} as asked failed the budget ({why}); delivered milder "
            f"settings instead ({changed}: held-out drop {last.drop:.2f})"
        )

    def to_json(self) -> dict[str, Any]:
        fell_from = self.attempts[0].to_json() if self.fell_back else None
        last = self.attempts[-1]
        return {
            "max_drop": self.max_drop,
            "holdout": self.holdout,
            "held_out_images": self.held_out_images,
            "points_per_held_out_image": round(self.resolution, 4),
            "backdoored_held_out_accuracy": round(self.backdoored_accuracy, 4),
            "within_budget": True,
            "requested_within_budget": self.requested_within_budget,
            "delivered": self.delivered,
            "fell_back_from": fell_from,
            "delivered_drop": 0.0 if self.delivered == "B unchanged" else round(last.drop, 4),
            "decided_on_noise": self.decided_on_noise,
            "attempts": [a.to_json() for a in self.attempts],
        }


def _interval_text(attempt: Attempt) -> str:
    if attempt.drop_interval is None:
        return ""
    return f" (95 % CI {attempt.drop_interval[0]:+.2f} to {attempt.drop_interval[1]:+.2f})"


def guarded_repair(
    model: nn.Module,
    repair: Repair,
    data: RepairData,
    backdoored_labels: np.ndarray,
    max_drop: float = DEFAULT_MAX_DROP,
    holdout: float = DEFAULT_HOLDOUT,
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[Repair, RepairOutcome, HarmCheck]:
    """Run `repair` (then its milder versions) fitted on part of `data.clean_valid`, judged on the
    rest; `backdoored_labels` are B's predictions on all of it. Returns the repair whose outcome is
    delivered (B unchanged: the requested one, with an outcome holding B itself), the outcome and
    the check."""
    clean = data.clean_valid
    held = holdout_mask(clean.y, holdout, HOLDOUT_SEED)
    if held.sum() == 0 or (~held).sum() == 0:
        raise DataError(
            f"the do-no-harm guard's held-out share ({holdout:g} of every class) leaves no images to "
            f"fit or to judge on among the {len(clean)} clean validation images; give more"
        )
    fit_set, held_set = split_by_mask(clean, held)
    guarded_data = RepairData(fit_set, data.poisoned_valid, held_set)
    check = HarmCheck(max_drop, holdout, int(held.sum()), accuracy(backdoored_labels[held], held_set.y))
    reference_right = backdoored_labels[held] == held_set.y
    for attempt in [repair] + repair.milder():
        start = time.perf_counter()
        try:
            outcome = attempt.run(model, guarded_data, progress)
            labels = [predict(m.model, held_set.x, batch_size) for m in outcome.models]
        except (TrainingDiverged, NonFiniteOutputs) as exc:  # a B' with NaN outputs diverged too
            check.attempts.append(
                Attempt(repair.changed_settings(attempt), None, None, f"diverged: {exc}", time.perf_counter() - start)
            )
            continue
        accuracies = [accuracy(found, held_set.y) for found in labels]
        worst = min(accuracies, default=check.backdoored_accuracy)
        drop = check.backdoored_accuracy - worst
        interval = None
        if labels:  # paired on the same held-out images as B: far less noisy than two samples
            change = paired_change_interval(reference_right, labels[int(np.argmin(accuracies))] == held_set.y)
            interval = (-change.high, -change.low)
        ok = drop <= max_drop + 1e-9
        check.attempts.append(
            Attempt(
                repair.changed_settings(attempt),
                worst,
                drop,
                "within budget" if ok else "past budget",
                time.perf_counter() - start,
                interval,
            )
        )
        if ok:
            check.delivered = "as asked" if attempt is repair else "milder settings"
            return attempt, outcome, check
    check.delivered = "B unchanged"
    unchanged = RepairedModel(
        repair.name, model, {}, weights_changed=False, details={"unchanged": "no settings kept the do-no-harm budget"}
    )
    return repair, RepairOutcome([unchanged], {"unchanged": True}), check


@dataclass(frozen=True)
class Guarded(Repair):
    """`repair` under the do-no-harm guard: fitted on all but `holdout` of every class of the clean
    validation data, each B' judged on the rest against B, milder settings then B unchanged past
    `max_drop` points. Its outcome carries the guard's check (`guard`) and the settings delivered
    (`delivered`). `reference`: B's predictions on the clean validation data, when already made."""

    inner: Repair
    max_drop: float = DEFAULT_MAX_DROP
    holdout: float = DEFAULT_HOLDOUT
    batch_size: int = DEFAULT_BATCH_SIZE
    reference: np.ndarray | None = field(default=None, compare=False, repr=False)

    guarded = False  # already guarded

    @classmethod
    def setting_specs(cls) -> list:
        return []  # the wrapped repair's settings are its own; the guard's are checked in check()

    def check(self) -> None:
        if not isinstance(self.inner, Repair) or isinstance(self.inner, Guarded):
            raise SettingsError(f"Guarded wraps one repair, not {type(self.inner).__name__}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.inner.description

    @property
    def data(self) -> str:  # type: ignore[override]
        return self.inner.data

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    def check_model(self, model: nn.Module) -> None:
        self.inner.check_model(model)

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        if data is None:
            raise SettingsError(f"the do-no-harm guard judges {self.inner.name} on clean validation data: give them")
        labels = self.reference if self.reference is not None else predict(model, data.clean_valid.x, self.batch_size)
        delivered, outcome, check = guarded_repair(
            model, self.inner, data, labels, self.max_drop, self.holdout, progress, self.batch_size
        )
        return dataclasses.replace(outcome, guard=check, delivered=delivered)
