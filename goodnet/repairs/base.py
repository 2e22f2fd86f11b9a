"""The one base class for repairs: B in, repaired model(s) B' out, with what was done.

Like a scikit-learn estimator, a repair is its settings plus one method. Settings are the fields of
a frozen dataclass, typed and with defaults, declared with `setting(...)` (help text and bounds);
they are checked once, when the repair is built, so a bad value fails before any work. The data
contract lives here too: a repair sees `RepairData.clean_valid` always and `poisoned_valid` only
when it declares itself an oracle (`data = "oracle"`), which the lab forbids for design and every
output labels. Nothing gets test data: measuring B' on test data is the runner's job.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import numbers
import typing
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import SettingsError
from ..io.data import ImageSet, split_holdout
from ..lazy_torch import nn
from ..pruning.curve import PruningCurve

DATA_NEEDS = ("none", "clean", "oracle")
MAX_SEED = (
    2**63 - 1
)  # the largest seed every random generator used takes (numpy's, torch's)  # no data at all / clean validation data / poisoned too


def setting(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    nonempty: bool = False,
) -> Any:
    """A repair setting: its default, a one-line help (shown by `goodnet defend --help`) and its
    bounds: numbers (or every number of a tuple) must lie in [low, high], (low, high] with
    `low_open`; `nonempty` tuples need at least one value."""
    return field(
        default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open, "nonempty": nonempty}
    )


@dataclass(frozen=True)
class SettingSpec:
    """One setting as the CLI and the registry see it."""

    name: str
    kind: str  # "int", "float", "str", "bool", "choice", "ints", "floats"
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nonempty: bool = False


def _kind(annotation: Any) -> tuple[str, tuple[str, ...]]:
    if annotation in (int, float, str, bool):
        return annotation.__name__, ()
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if not all(isinstance(a, str) for a in args):
            raise TypeError(f"Literal settings take text choices only, not {args!r}")
        return "choice", args
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float):
        return f"{args[0].__name__}s", ()
    raise TypeError(
        f"unsupported setting type {annotation!r} (int, float, str, bool, Literal[...], "
        f"tuple[int, ...] or tuple[float, ...])"
    )


@functools.cache  # a class's settings are fixed; registering, the CLI and every build ask for them
def _setting_specs(cls: type[Repair]) -> tuple[SettingSpec, ...]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        kind, choices = _kind(hints[f.name])
        meta = {k: v for k, v in f.metadata.items() if k in ("low", "high", "low_open", "nonempty")}
        specs.append(SettingSpec(f.name, kind, f.default, f.metadata.get("help", ""), choices, **meta))
    return tuple(specs)


@dataclass(frozen=True)
class RepairData:
    """What a repair may see. `clean_valid` is what it fits on; `held_out` (clean, given by the
    do-no-harm guard) is what it may use to choose among its own candidates, never to fit."""

    clean_valid: ImageSet
    poisoned_valid: ImageSet | None = None
    held_out: ImageSet | None = None

    @property
    def value_range(self) -> tuple[float, float]:
        """(lowest, highest) value in the clean validation images, as the model sees them: the range
        anything a repair synthesises (e.g. random-erasing fill) must stay in."""
        parts = [self.clean_valid.x] + ([self.held_out.x] if self.held_out is not None else [])
        return min(float(p.min()) for p in parts), max(float(p.max()) for p in parts)

    def fit_and_choose(self, seed: int) -> tuple[ImageSet, ImageSet]:
        """(fit on, choose among candidates on): the guard's held-out images when it gave them;
        without the guard (a repair run on its own), 20 % of every class held out here."""
        if self.held_out is not None:
            return self.clean_valid, self.held_out
        return split_holdout(self.clean_valid, 0.2, seed)


@dataclass
class RepairedModel:
    """One B' a repair hands over."""

    name: str  # its file stem and table label, e.g. "x2_crossing" or the repair's name
    model: nn.Module
    pruned: dict[str, list[int]] = field(default_factory=dict)  # layer -> channels zeroed
    weights_changed: bool = False  # True when B' is more than B with channels zeroed (e.g. fine-tuned)
    curve_step: int | None = None  # B' is step k of the outcome's pruning curve
    details: dict[str, Any] = field(default_factory=dict)  # JSON-ready

    @property
    def single_layer(self) -> tuple[str, list[int]] | None:
        """(layer, channels) when B' is B with channels of one conv zeroed and nothing else
        changed: G can then share B's trunk instead of running two whole models."""
        if self.weights_changed or len(self.pruned) != 1:
            return None
        return next(iter(self.pruned.items()))


@dataclass
class RepairOutcome:
    models: list[RepairedModel]  # may be empty (e.g. no budget was ever reached)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-ready: what was pruned, chosen, ...
    curve: PruningCurve | None = None  # every step of a pruning sweep, when the repair has one
    # one line when the repair could not act on this model and hands B back unchanged (or nearly),
    # e.g. "clp: no channel of conv_2 (8 channels) can exceed u=3; model unchanged": the report and
    # the CLI print it, so an unchanged B' is never silent
    notice: str | None = None
    guard: Any = None  # the do-no-harm guard's HarmCheck, when the repair ran inside Guarded
    delivered: Repair | None = None  # the settings Guarded delivered (milder ones after a fallback)


class FitMemo:
    """The results of a repair's costly fit (ANP's masks, NC's trigger scan) for the last `size`
    (B, data, fit settings): the guard's milder attempts change only what follows the fit, so they
    reuse it instead of fitting again. Keyed by a digest of B's weights, the data and the settings."""

    def __init__(self, size: int):
        self.size = size
        self.entries: OrderedDict[str, Any] = OrderedDict()

    @staticmethod
    def key(model: nn.Module, x: np.ndarray, y: np.ndarray, settings: dict[str, Any]) -> str:
        digest = hashlib.sha256(repr(sorted(settings.items())).encode())
        for name, value in model.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().double().contiguous().numpy().tobytes())
        digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(np.ascontiguousarray(y).tobytes())
        return digest.hexdigest()

    def get(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, settings: dict[str, Any], fit: Callable[[], Any]
    ) -> tuple[Any, bool]:
        """(the fit's result, whether it was reused): `fit()` runs only when nothing is remembered."""
        key = self.key(model, x, y, settings)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key], True
        value = fit()
        self.entries[key] = value
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value, False

    def clear(self) -> None:
        self.entries.clear()


@dataclass(frozen=True)
class Repair:
    """Subclasses are frozen dataclasses whose fields are their settings; they set `name`,
    `description` and `data`, implement `repair`, and register with `@register_repair`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line, shown in `goodnet defend --help`
    data: ClassVar[str] = "clean"  # one of DATA_NEEDS
    # settings `goodnet compare` uses instead of the defaults, when its table needs one B' per repair
    comparison: ClassVar[dict[str, Any]] = {}
    in_comparison: ClassVar[bool] = True  # False for repairs that need input no zoo can give
    compared_by_default: ClassVar[bool] = True  # False: `compare` runs it only when --repairs names it
    # True: the runner's do-no-harm guard fits it on part of the clean data, judges its B' on the
    # rest and falls back (milder settings, then B unchanged) past the budget. False only for
    # repairs whose budget is their purpose (the lab's sweep reports every X) or that use no data.
    guarded: ClassVar[bool] = True
    # its usual run time as a multiple of plain fine-tuning's on the same model and data (the median
    # over the zoo's evaluation part, docs/benchmarks.md); grids use it only to start their longest
    # cells first
    relative_cost: ClassVar[float] = 1.0

    @property
    def oracle(self) -> bool:
        return self.data == "oracle"

    def __post_init__(self) -> None:
        for spec in self.setting_specs():
            object.__setattr__(self, spec.name, self._checked(spec, getattr(self, spec.name)))
        self.check()

    def check(self) -> None:
        """Checks that involve several settings; raise SettingsError."""

    def milder(self) -> list[Repair]:
        """Milder versions of this repair, mildest last, that the do-no-harm guard tries in turn
        when this one hurts clean accuracy past the budget or diverges (fewer epochs, a lower rate,
        fewer channels). After them the guard hands back B unchanged."""
        return []

    def changed_settings(self, other: Repair) -> dict[str, Any]:
        """The settings of `other` (a milder version) that differ from this repair's."""
        mine, theirs = self.settings(), other.settings()
        return {k: v for k, v in theirs.items() if mine.get(k) != v}

    @classmethod
    def setting_specs(cls) -> list[SettingSpec]:
        return list(_setting_specs(cls))

    def _checked(self, spec: SettingSpec, value: Any) -> Any:
        option = f"{self.name}: {spec.name.replace('_', '-')}"
        if spec.kind in ("ints", "floats"):
            if (
                isinstance(value, (str, bytes))
                or not isinstance(value, (list, tuple, np.ndarray))
                or np.ndim(value) != 1
            ):
                raise SettingsError(f"{option} must be a list of numbers, not {value!r}")
            values = tuple(self._number(option, spec.kind[:-1], v, spec) for v in value)
            if spec.nonempty and not values:
                raise SettingsError(f"{option} needs at least one value")
            return values
        if spec.kind in ("int", "float"):
            return self._number(option, spec.kind, value, spec)
        if spec.kind == "bool":
            if not isinstance(value, bool):
                raise SettingsError(f"{option} must be true or false, not {value!r}")
            return value
        if not isinstance(value, str):
            raise SettingsError(f"{option} must be text, not {value!r}")
        if spec.kind == "choice" and value not in spec.choices:
            raise SettingsError(f"{option} must be one of {', '.join(spec.choices)}, not {value!r}")
        return value

    @staticmethod
    def _number(option: str, kind: str, value: Any, spec: SettingSpec) -> int | float:
        whole = isinstance(value, numbers.Integral) or (
            isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
        )
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or (kind == "int" and not whole):
            raise SettingsError(f"{option} must be {'an integer' if kind == 'int' else 'a number'}, not {value!r}")
        try:
            number = int(value) if kind == "int" else float(value)
        except OverflowError:
            raise SettingsError(f"{option} is too large: {value!r}") from None
        if kind == "int" and abs(number) > 2**63 - 1:
            raise SettingsError(f"{option} is too large: {value!r}")
        low, high, low_open = spec.low, spec.high, spec.low_open
        if (
            not math.isfinite(number)
            or (low is not None and (number <= low if low_open else number < low))
            or (high is not None and number > high)
        ):

            def bound(v: float) -> str:
                return str(int(v)) if float(v).is_integer() and abs(v) < 2**63 else f"{v:g}"

            if kind == "int" and low is not None and high is not None and not low_open:
                raise SettingsError(f"{option} must be an integer from {bound(low)} to {bound(high)}, not {value!r}")
            bounds = (
                f"{'(' if low_open else '['}{'-inf' if low is None else bound(low)}, "
                f"{'inf' if high is None else bound(high)}{']' if high is not None else ')'}"
            )
            raise SettingsError(f"{option} must be in {bounds}, not {value!r}")
        return number

    def settings(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples as lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)
        }

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """Refuse, before any work, a model these settings cannot apply to (e.g. a `layer` setting
        that names no conv layer of it); raise SettingsError or ModelError. By default: any model."""

    def refuse_torchscript(
        self, model: nn.Module, reason: str, instead: str = "load the model's PyTorch class with --factory instead"
    ) -> None:
        """For check_model: refuse a TorchScript model in one line when the repair needs what compiled
        code cannot give (a torch.fx graph, forward hooks); `reason` says what the repair needs,
        `instead` what the user can do."""
        from ..errors import ModelError
        from ..lazy_torch import torch

        if isinstance(model, torch.jit.ScriptModule):
            raise ModelError(f"the {self.name} repair cannot run on a TorchScript model: {reason}; {instead}")

    def run(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        """`repair` with the data contract enforced."""
        if self.data != "none" and (data is None or data.clean_valid is None):
            raise SettingsError(f"the {self.name} repair needs clean validation data (--clean-valid)")
        if self.oracle and data.poisoned_valid is None:
            raise SettingsError(
                f"the {self.name} repair is an oracle: it needs poisoned validation data (--poisoned-valid)"
            )
        if data is not None and not self.oracle:
            data = RepairData(clean_valid=data.clean_valid, held_out=data.held_out)  # never poisoned data
        return self.repair(model.eval(), data, progress)
