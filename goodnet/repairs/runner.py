"""The one runner: repair B with any registered repair on the data its contract allows, then
measure B, every B' and every G on every data set given. Every defense goes through here, the
lab's sweep included, so every result has one type and one writer (goodnet.report)."""

from __future__ import annotations

import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ..devices import device_of, placed
from ..inference import DEFAULT_BATCH_SIZE, checked_batch_size, predict
from ..io.data import ROLES, ImageSet, check_fits_model, check_images, check_input_range, shown, trained_range
from ..errors import DataError, ModelError, SettingsError
from ..metrics import accuracy, binomial_tail, flag_rate
from ..inspection.detection_scores import DetectionScore, disagreement_scores
from ..inspection.strip import StripSettings
from ..models.goodnet import GoodNet, goodnet_labels
from ..pruning.curve import PruningCurve
from .base import Repair, RepairData, RepairedModel
from .registry import build_repair, repair_names
from .do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP, HarmCheck, guarded_repair

METRIC_KEYS = ("backdoored", "repaired", "goodnet", "flagged")
# B must beat guessing on its clean validation data this clearly before any repair runs
CHANCE_P_VALUE = 1e-6


# Fewer clean validation images than this cannot resolve a budget of a few points (one image of 50
# is 2 points); --force goes on, and the guard's line then says how coarse its held-out part is.
MIN_CLEAN_IMAGES = 50


@dataclass(frozen=True)
class SanityCheck:
    """Is B clearly better than chance on clean validation data? Chance is the accuracy of always
    answering the most common label (at least 1 / number of classes); "clearly" means a one-sided
    binomial test at CHANCE_P_VALUE."""

    valid_accuracy: float
    chance: float  # %
    images: int
    p_value: float
    above_chance: bool
    forced: bool  # the user went on anyway (--force)

    @classmethod
    def of(cls, labels: np.ndarray, images: ImageSet, num_classes: int, forced: bool) -> "SanityCheck":
        share = np.bincount(images.y).max() / len(images)
        chance = max(1.0 / num_classes, float(share))
        p_value = binomial_tail(int((labels == images.y).sum()), len(images), chance)
        return cls(accuracy(labels, images.y), chance * 100.0, len(images), p_value,
                   p_value < CHANCE_P_VALUE, forced)

    def refusal(self, value_range: tuple[float, float]) -> str:
        return (f"B is not clearly better than chance on the clean validation data ({self.valid_accuracy:.2f} % "
                f"of {self.images} images, chance {self.chance:.2f} %): check the pixel range (the data hold "
                f"{value_range[0]:g}..{value_range[1]:g}; --input-scale divides them), the labels, and that this "
                f"is the right model; --force goes on anyway")


@dataclass
class MeasuredModel:
    """A B' with its predictions on every data set."""

    repaired: RepairedModel
    labels: dict[str, np.ndarray]
    # G's continuous score (B''s doubt in B's answer) on clean vs poisoned test inputs; None when
    # either test set is missing
    detection: DetectionScore | None = None

    @property
    def name(self) -> str:
        return self.repaired.name


@dataclass
class RepairResult:
    """One repair of B, measured: B, each B' and its G (B vs B') on every data set given."""

    repair: Repair
    details: dict[str, Any]
    seconds: float
    num_classes: int
    data: dict[str, ImageSet]  # role -> images (never shown to the repair unless its contract allows)
    backdoored: dict[str, np.ndarray]  # role -> B's predictions
    models: list[MeasuredModel]
    curve: PruningCurve | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # role -> file, when read from files
    sanity: SanityCheck | None = None  # None when no clean validation data was given
    input_scale: float = 1.0  # what the data files' values were divided by (--input-scale)
    harm: HarmCheck | None = None  # the do-no-harm guard's check (None: the repair is not guarded)
    delivered: Repair | None = None  # the settings whose B' was delivered (milder ones after a fallback)
    strip: DetectionScore | None = None  # STRIP on B, the input-level baseline for G's detection
    strip_settings: StripSettings | None = None
    notice: str | None = None  # the repair's one line when it could not act on B (B' is B, or nearly)
    warnings: list[str] = field(default_factory=list)  # what is doubtful about the inputs (io.role_checks)

    @property
    def extra_class(self) -> int:
        return self.num_classes

    def metrics(self, labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        """Per data set: accuracy (ASR on poisoned sets) of B, of the B' with these `labels`, of
        their G, and the share G flags."""
        out = {}
        for role, images in self.data.items():
            g = goodnet_labels(self.backdoored[role], labels[role], self.extra_class)
            out[role] = {"backdoored": accuracy(self.backdoored[role], images.y),
                         "repaired": accuracy(labels[role], images.y),
                         "goodnet": accuracy(g, images.y), "flagged": flag_rate(g, self.extra_class)}
        return out

    def step_labels(self, steps: int) -> dict[str, np.ndarray]:
        """Predictions of the curve's model with `steps` channels pruned, on every data set."""
        return {role: self.curve.labels[role].labels[steps] for role in self.data}


def check_data(model: nn.Module, data: dict[str, ImageSet | None]) -> dict[str, ImageSet]:
    """Refuse unknown roles, anything but ImageSets, images and labels a data file could not hold
    (see io.data.check_arrays) and data the model cannot take, before any work; return the sets
    given (float32 images, int64 labels) in role order."""
    if not isinstance(data, Mapping):
        raise DataError(f"data must be a dict of role -> ImageSet (roles: {', '.join(ROLES)}), not {shown(data)}")
    unknown = set(data) - set(ROLES)
    if unknown:
        raise SettingsError(f"unknown data roles {sorted(map(str, unknown))} (known: {', '.join(ROLES)})")
    checked = {role: check_images(data[role], role.replace("_", "-")) for role in ROLES if data.get(role) is not None}
    for role, images in checked.items():
        check_fits_model(images, model.input_shape, model.num_classes, role.replace("_", "-"))
        check_input_range(images, trained_range(model), role.replace("_", "-"))
    return checked


MAX_SEED = 2 ** 63 - 1  # the largest seed every random generator used takes (numpy's, torch's)


def checked_model(model: Any) -> nn.Module:
    """B as run_repair takes it: a model that says its input shape and number of classes."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module (e.g. from goodnet.load_model), not {shown(model)}")
    if isinstance(model, GoodNet):
        raise ModelError("model is a GoodNet; this needs the backdoored model B")
    if getattr(model, "input_shape", None) is None or getattr(model, "num_classes", None) is None:
        raise ModelError(f"model ({type(model).__name__}) does not say its input_shape and num_classes; load it "
                         f"with goodnet.load_model (a class of your own: factory=...) or build it with "
                         f"goodnet.build_model")
    return model


def checked_repair(repair: Any) -> Repair:
    """A Repair; a registered repair's name (or a Repair class) is built with its default settings."""
    if isinstance(repair, str):
        repair = build_repair(repair)  # an unknown name: SettingsError listing the known ones
    elif isinstance(repair, type) and issubclass(repair, Repair) and repair is not Repair:
        repair = repair()
    if not isinstance(repair, Repair):
        raise SettingsError(f"repair must be a Repair or a repair name ({', '.join(repair_names())}), "
                            f"not {shown(repair)}")
    seed = getattr(repair, "seed", None)  # one meaning across repairs: a seed of numpy's and torch's generators
    if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise SettingsError(f"{repair.name}: seed must be an integer from 0 to {MAX_SEED}, not {seed!r}")
    return repair


def check_options(progress: Any = False, batch_size: Any = DEFAULT_BATCH_SIZE, force: Any = False,
                  max_drop: Any = DEFAULT_MAX_DROP, holdout: Any = DEFAULT_HOLDOUT, strip: Any = None) -> None:
    """Refuse run_repair's options outside their ranges (the CLI's --max-drop, --holdout, ...)."""
    for name, value in (("progress", progress), ("force", force)):
        if not isinstance(value, (bool, np.bool_)):
            raise SettingsError(f"{name} must be True or False, not {shown(value)}")
    checked_batch_size(batch_size)
    if max_drop is not None and (isinstance(max_drop, (bool, np.bool_)) or not isinstance(max_drop, numbers.Real)
                                 or not 0 <= max_drop <= 100):
        raise SettingsError(f"max_drop must be between 0 and 100 points (or None: no guard), not {shown(max_drop)}")
    if isinstance(holdout, (bool, np.bool_)) or not isinstance(holdout, numbers.Real) or not 0 < holdout < 1:
        raise SettingsError(f"holdout must be a share between 0 and 1 (both excluded), not {shown(holdout)}")
    if strip is not None and not isinstance(strip, StripSettings):
        raise SettingsError(f"strip must be a StripSettings or None, not {shown(strip)}")


def run_repair(model: nn.Module, repair: Repair | str, data: dict[str, ImageSet], progress: bool = False,
               batch_size: int = DEFAULT_BATCH_SIZE, force: bool = False, max_drop: float | None = DEFAULT_MAX_DROP,
               holdout: float = DEFAULT_HOLDOUT, strip: StripSettings | None = None) -> RepairResult:
    """Repair B (`model`) with `repair`, which sees only the validation data its contract allows,
    then measure B, B' and G on every set in `data` (role -> images). B must first be clearly better
    than chance on the clean validation data (see SanityCheck), unless `force`. A guarded repair
    (most) fits on all but `holdout` of the clean validation data and must keep its B' within
    `max_drop` points of B on the rest, or falls back (see do_no_harm); `max_drop=None` turns the
    guard off (library use only). With clean and poisoned test data, each G's detection is scored
    (AUROC, TPR at 5 % FPR), and with `strip` STRIP's on B beside it (blending clean validation images).
    The work runs on the compute device (see devices.py); B and every B' come back where B was.
    `repair` may also be a registered repair's name (its default settings). Every argument is
    checked before any work; a problem is a GoodnetError subclass with a one-line message."""
    model, repair = checked_model(model), checked_repair(repair)
    check_options(progress, batch_size, force, max_drop, holdout, strip)
    home = device_of(model)
    with placed(model):
        result = _run_placed(model, repair, data, progress, batch_size, force, max_drop, holdout, strip)
        for m in result.models:
            if device_of(m.repaired.model) != home:
                m.repaired.model.to(home)
    return result


def _run_placed(model: nn.Module, repair: Repair, data: dict[str, ImageSet], progress: bool, batch_size: int,
                force: bool, max_drop: float | None, holdout: float, strip: StripSettings | None) -> RepairResult:
    model.eval()
    data = check_data(model, data)
    given = RepairData(data["clean_valid"], data.get("poisoned_valid")) if "clean_valid" in data else None
    repair.check_model(model)
    backdoored: dict[str, np.ndarray] = {}  # B's predictions, each computed once
    sanity = None
    if given is not None:
        backdoored["clean_valid"] = predict(model, given.clean_valid.x, batch_size)
        uses_data = repair.data != "none" or (repair.guarded and max_drop is not None)  # the guard judges on it
        if len(given.clean_valid) < MIN_CLEAN_IMAGES and not force and uses_data:
            raise DataError(f"the clean validation data hold {len(given.clean_valid)} images: one image moves their "
                            f"accuracy by {100 / len(given.clean_valid):.3g} points, too coarse to decide anything; "
                            f"give at least {MIN_CLEAN_IMAGES} (--force goes on anyway)")
        sanity = SanityCheck.of(backdoored["clean_valid"], given.clean_valid, int(model.num_classes), force)
        if not sanity.above_chance and not force and uses_data:
            raise DataError(sanity.refusal(given.value_range))
    start = time.perf_counter()
    harm, delivered = None, repair
    if repair.guarded and max_drop is not None and given is not None:
        delivered, outcome, harm = guarded_repair(model, repair, given, backdoored["clean_valid"], max_drop,
                                                  holdout, progress, batch_size)
    else:
        outcome = repair.run(model, given, progress)
    seconds = time.perf_counter() - start

    curve = outcome.curve
    if curve is not None:
        for role, images in data.items():  # measuring, not deciding: the repair has finished
            curve.measure(role, images.x, progress)

    def step_labels(steps: int) -> dict[str, np.ndarray]:
        return {role: curve.labels[role].labels[steps] for role in data}

    if curve is not None:
        backdoored = step_labels(0)
    else:
        for role, images in data.items():
            if role not in backdoored:
                backdoored[role] = predict(model, images.x, batch_size)
    measured = []
    for candidate in outcome.models:
        if candidate.curve_step is not None:
            labels = step_labels(candidate.curve_step)
        else:
            labels = {role: predict(candidate.model, images.x, batch_size) for role, images in data.items()}
        measured.append(MeasuredModel(candidate, labels, goodnet_detection(candidate.model, data, backdoored,
                                                                           batch_size)))
    strip_score = None
    if strip is not None and {"clean_test", "poisoned_test", "clean_valid"} <= set(data):
        strip_score = strip.detect(model, data["clean_test"].x, data["poisoned_test"].x, data["clean_valid"].x,
                                   batch_size=batch_size)
    return RepairResult(repair=repair, details=outcome.details, seconds=seconds, num_classes=int(model.num_classes),
                        data=data, backdoored=backdoored, models=measured, curve=curve, sanity=sanity,
                        harm=harm, delivered=delivered, strip=strip_score,
                        strip_settings=strip if strip_score is not None else None, notice=outcome.notice)


def goodnet_detection(repaired: nn.Module, data: dict[str, ImageSet], backdoored: dict[str, np.ndarray],
                      batch_size: int = DEFAULT_BATCH_SIZE) -> DetectionScore | None:
    """G's detection on the test sets: its continuous score on clean (negative) vs poisoned
    (positive) test inputs; None unless both are given."""
    if not {"clean_test", "poisoned_test"} <= set(data):
        return None
    clean, poisoned = (disagreement_scores(repaired, data[r].x, backdoored[r], batch_size)
                       for r in ("clean_test", "poisoned_test"))
    return DetectionScore.of(clean, poisoned)
