"""`run_repair`: B and data in, a Measurement out. It checks the inputs, checks that B is worth
repairing (SanityCheck), fits the repair (wrapped in the do-no-harm guard, `Guarded`, when the
repair is guarded and clean validation data are given) and hands the outcome to `measure`."""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..devices import device_of, placed
from ..errors import DataError, ModelError, SettingsError
from ..inference import DEFAULT_BATCH_SIZE, checked_batch_size, predict
from ..inspection.strip import StripSettings
from ..io.data import (
    ROLES,
    ImageSet,
    check_fits_model,
    check_images,
    check_input_range,
    range_origin,
    shown,
    trained_range,
)
from ..models.goodnet import GoodNet
from ..repairs.base import Repair, RepairData
from ..repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP, Guarded
from ..repairs.registry import checked_repair
from .measurement import Measurement, RunInputs, measure
from .relearning import RelearnTest
from .sanity import SanityCheck

# Fewer clean validation images than this cannot resolve a budget of a few points (one image of 50
# is 2 points); --force goes on, and the guard's line then says how coarse its held-out part is.
MIN_CLEAN_IMAGES = 50


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
        check_input_range(images, trained_range(model), role.replace("_", "-"), range_origin(model))
    return checked


def checked_model(model: Any) -> nn.Module:
    """B as run_repair takes it: a model that says its input shape and number of classes."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module (e.g. from goodnet.load_model), not {shown(model)}")
    if isinstance(model, GoodNet):
        raise ModelError("model is a GoodNet; this needs the backdoored model B")
    if getattr(model, "input_shape", None) is None or getattr(model, "num_classes", None) is None:
        raise ModelError(
            f"model ({type(model).__name__}) does not say its input_shape and num_classes; load it "
            f"with goodnet.load_model (a class of your own: factory=...) or build it with "
            f"goodnet.build_model"
        )
    return model


def check_options(
    progress: Any = False,
    batch_size: Any = DEFAULT_BATCH_SIZE,
    force: Any = False,
    max_drop: Any = DEFAULT_MAX_DROP,
    holdout: Any = DEFAULT_HOLDOUT,
    strip: Any = None,
) -> None:
    """Refuse run_repair's options outside their ranges (the CLI's --max-drop, --holdout, ...)."""
    for name, value in (("progress", progress), ("force", force)):
        if not isinstance(value, (bool, np.bool_)):
            raise SettingsError(f"{name} must be True or False, not {shown(value)}")
    checked_batch_size(batch_size)
    if max_drop is not None and (
        isinstance(max_drop, (bool, np.bool_)) or not isinstance(max_drop, numbers.Real) or not 0 <= max_drop <= 100
    ):
        raise SettingsError(f"max_drop must be between 0 and 100 points (or None: no guard), not {shown(max_drop)}")
    if isinstance(holdout, (bool, np.bool_)) or not isinstance(holdout, numbers.Real) or not 0 < holdout < 1:
        raise SettingsError(f"holdout must be a share between 0 and 1 (both excluded), not {shown(holdout)}")
    if strip is not None and not isinstance(strip, StripSettings):
        raise SettingsError(f"strip must be a StripSettings or None, not {shown(strip)}")


def check_relearning(model: nn.Module, relearn: Any, data: Any) -> None:
    """Refuse a re-learning test that cannot run: not a RelearnTest, missing data, or a clean
    reference that does not take B's inputs or give B's classes."""
    if not isinstance(relearn, RelearnTest):
        raise SettingsError(f"relearn must be a RelearnTest or None, not {shown(relearn)}")
    missing = [
        r
        for r in ("clean_valid", "poisoned_valid", "poisoned_test")
        if not isinstance(data, Mapping) or data.get(r) is None
    ]
    if missing:
        raise DataError(
            "the re-learning test needs clean and poisoned validation data and poisoned test data; missing: "
            + ", ".join(r.replace("_", "-") for r in missing)
        )
    clean, poisoned = data["clean_valid"], data["poisoned_valid"]
    if isinstance(clean, ImageSet) and isinstance(poisoned, ImageSet):  # else check_data names the problem
        relearn.settings.tuning_size(len(clean), len(poisoned))  # before the repair, not after it
    reference = relearn.reference
    if reference is not None:
        shape, classes = getattr(reference, "input_shape", None), getattr(reference, "num_classes", None)
        if tuple(shape or ()) != tuple(model.input_shape) or classes != model.num_classes:
            raise ModelError(
                f"the clean reference takes {shape} and gives {classes} classes, but B takes "
                f"{tuple(model.input_shape)} and gives {model.num_classes}: it must be a model of B's kind"
            )
        described = [getattr(m, "config", None) for m in (model, reference)]
        if all(callable(c) for c in described) and (type(model), described[0]()) != (type(reference), described[1]()):
            raise ModelError(
                f"the clean reference is a {type(reference).__name__} {described[1]()}, but B is a "
                f"{type(model).__name__} {described[0]()}: it must be B's architecture"
            )


def run_repair(
    model: nn.Module,
    repair: Repair | str,
    data: dict[str, ImageSet],
    progress: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    force: bool = False,
    max_drop: float | None = DEFAULT_MAX_DROP,
    holdout: float = DEFAULT_HOLDOUT,
    strip: StripSettings | None = None,
    inputs: RunInputs = RunInputs(),
    relearn: RelearnTest | None = None,
) -> Measurement:
    """Repair B (`model`) with `repair`, which sees only the validation data its contract allows,
    then measure B, B' and G on every set in `data` (role -> images). B must first be clearly better
    than chance on the clean validation data (see SanityCheck), unless `force`. A guarded repair
    (most) runs inside `Guarded`: it fits on all but `holdout` of the clean validation data and must
    keep its B' within `max_drop` points of B on the rest, or falls back (see do_no_harm);
    `max_drop=None` turns the guard off (library use only). With clean and poisoned test data, each
    G's detection is scored (AUROC, TPR at 5 % FPR), and with `strip` STRIP's on B beside it.
    With `relearn`, every B' (and the clean reference it holds) is also put through the re-learning
    test (see relearning.py). `inputs` records where the data came from. The work runs on the compute device (see
    devices.py); B and every B' come back where B was. `repair` may also be a registered repair's
    name (its default settings). Every argument is checked before any work; a problem is a
    GoodnetError subclass with a one-line message."""
    model, repair = checked_model(model), checked_repair(repair)
    check_options(progress, batch_size, force, max_drop, holdout, strip)
    if not isinstance(inputs, RunInputs):
        raise SettingsError(f"inputs must be a RunInputs, not {shown(inputs)}")
    if relearn is not None:
        check_relearning(model, relearn, data)
    home = device_of(model)
    reference = None if relearn is None else relearn.reference
    with placed(model), placed(reference) if reference is not None else contextlib.nullcontext():
        result = _run_placed(
            model, repair, data, progress, batch_size, force, max_drop, holdout, strip, inputs, relearn
        )
        for m in result.models:
            if device_of(m.repaired.model) != home:
                m.repaired.model.to(home)
    return result


def _run_placed(
    model: nn.Module,
    repair: Repair,
    data: dict[str, ImageSet],
    progress: bool,
    batch_size: int,
    force: bool,
    max_drop: float | None,
    holdout: float,
    strip: StripSettings | None,
    inputs: RunInputs,
    relearn: RelearnTest | None = None,
) -> Measurement:
    model.eval()
    data = check_data(model, data)
    given = RepairData(data["clean_valid"], data.get("poisoned_valid")) if "clean_valid" in data else None
    repair.check_model(model)
    backdoored: dict[str, np.ndarray] = {}  # B's predictions, each made once
    sanity = None
    if given is not None:
        backdoored["clean_valid"] = predict(model, given.clean_valid.x, batch_size)
        uses_data = repair.data != "none" or (repair.guarded and max_drop is not None)  # the guard judges on it
        if len(given.clean_valid) < MIN_CLEAN_IMAGES and not force and uses_data:
            raise DataError(
                f"the clean validation data hold {len(given.clean_valid)} images: one image moves their "
                f"accuracy by {100 / len(given.clean_valid):.3g} points, too coarse to decide anything; "
                f"give at least {MIN_CLEAN_IMAGES} (--force goes on anyway)"
            )
        sanity = SanityCheck.of(backdoored["clean_valid"], given.clean_valid, int(model.num_classes), force)
        if not sanity.above_chance and not force and uses_data:
            raise DataError(sanity.refusal(given.value_range))
    fitted = repair
    if repair.guarded and max_drop is not None and given is not None:
        fitted = Guarded(repair, max_drop, holdout, batch_size, reference=backdoored["clean_valid"])
    start = time.perf_counter()
    outcome = fitted.run(model, given, progress)
    seconds = time.perf_counter() - start
    return measure(
        model, repair, outcome, data, backdoored, seconds, sanity, strip, inputs, progress, batch_size, relearn
    )
