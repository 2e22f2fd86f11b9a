"""The one registry of repairs. The CLI's `--repair` choices, options and help, and `goodnet
compare`'s roster, are all read from here.

A repair registers itself with `@register_repair` (its name, description, data needs and typed
settings are read off the class). A setting name means one thing across repairs: a second repair
may reuse `layer` or `seed` only with the same type, so each CLI option has one meaning. Repairs
outside this package are found through the `goodnet.repairs` entry-point group of installed
packages, or through modules named in the GOODNET_PLUGINS environment variable (comma-separated);
both are code the user chose to install or name, never something a model or data file says.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from importlib.metadata import entry_points

from ..errors import SettingsError
from ..io.data import shown
from .base import DATA_NEEDS, MAX_SEED, Repair, SettingSpec

REPAIRS: dict[str, type[Repair]] = {}
PLUGIN_VARIABLE = "GOODNET_PLUGINS"
ENTRY_POINT_GROUP = "goodnet.repairs"
_plugins_loaded = False
# names the command line uses for itself: a setting may not take them
RESERVED_SETTINGS = {
    "model",
    "arch",
    "factory",
    "repair",
    "clean_valid",
    "poisoned_valid",
    "clean_test",
    "poisoned_test",
    "input_scale",
    "out",
    "onnx",
    "force",
    "quiet",
    "help",
    "cache_dir",
    "retrain",
    "kinds",
    "repairs",
    "max_drop",
    "holdout",
    "no_strip",
    "scan",
}


def register_repair(cls: type[Repair]) -> type[Repair]:
    """Class decorator: add a Repair subclass to the registry (checked here, once)."""
    if not (isinstance(cls, type) and issubclass(cls, Repair)):
        raise TypeError(f"{cls!r} is not a Repair subclass")
    params = vars(cls).get("__dataclass_params__")
    if params is None or not params.frozen:
        raise TypeError(
            f"{cls.__name__} must be a frozen dataclass: put @dataclass(frozen=True) under @register_repair"
        )
    for attr in ("name", "description"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise TypeError(f"{cls.__name__} must set a non-empty `{attr}`")
    if cls.data not in DATA_NEEDS:
        raise TypeError(f"{cls.__name__}.data must be one of {DATA_NEEDS}, not {cls.data!r}")
    if cls.name in REPAIRS and REPAIRS[cls.name] is not cls:
        if REPAIRS[cls.name].__qualname__ != cls.__qualname__ or REPAIRS[cls.name].__module__ != cls.__module__:
            raise ValueError(f"repair name '{cls.name}' is taken by {REPAIRS[cls.name].__name__}")
    specs = cls.setting_specs()  # fails here for an unsupported setting type
    reserved = sorted({s.name for s in specs} & RESERVED_SETTINGS)
    if reserved:
        raise TypeError(f"{cls.__name__}: setting name(s) {', '.join(reserved)} are the command line's own")
    known = all_settings(load=False)
    for spec in specs:
        other = known.get(spec.name)
        if other is not None and (other[0].kind, other[0].choices) != (spec.kind, spec.choices):
            raise TypeError(
                f"{cls.__name__}.{spec.name} is a {spec.kind} but the setting of that name in "
                f"{', '.join(other[1])} is a {other[0].kind}: one name, one meaning"
            )
    unknown = set(cls.comparison) - {s.name for s in specs}
    if unknown:
        raise TypeError(f"{cls.__name__}.comparison names unknown settings {sorted(unknown)}")
    REPAIRS[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Import the repairs of installed plugins and of GOODNET_PLUGINS (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # a broken plugin is the user's code; name it, do not crash
            raise SettingsError(
                f"repair plugin '{point.name}' ({point.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from None
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGIN_VARIABLE, "").split(","))):
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise SettingsError(f"{PLUGIN_VARIABLE}: cannot import '{module}' ({type(exc).__name__}: {exc})") from None


def repair_class(name: str) -> type[Repair]:
    load_plugins()
    if not isinstance(name, str):
        raise SettingsError(f"a repair is named by text (known: {', '.join(REPAIRS)}), not {type(name).__name__}")
    if name not in REPAIRS:
        raise SettingsError(f"unknown repair '{name}' (known: {', '.join(REPAIRS)})")
    return REPAIRS[name]


def repair_names() -> list[str]:
    load_plugins()
    return list(REPAIRS)


def all_settings(load: bool = True) -> dict[str, tuple[SettingSpec, list[str]]]:
    """Every setting name of every registered repair: (its spec in the first repair that has it,
    the repairs that take it)."""
    if load:
        load_plugins()
    out: dict[str, tuple[SettingSpec, list[str]]] = {}
    for name, cls in REPAIRS.items():
        for spec in cls.setting_specs():
            out.setdefault(spec.name, (spec, []))[1].append(name)
    return out


def build_repair(name: str, given: dict | None = None, comparison: bool = False) -> Repair:
    """The repair `name` with the settings `given` (the rest at their defaults; `comparison`:
    at the settings `goodnet compare` uses). A setting the repair does not take is refused."""
    cls = repair_class(name)
    if given is not None and not isinstance(given, Mapping):
        raise SettingsError(
            f"the settings of the {name} repair must be a dict of setting -> value, not {type(given).__name__}"
        )
    given = dict(given or {})
    takes = {s.name for s in cls.setting_specs()}
    foreign = sorted(set(given) - takes)
    if foreign:
        options = ", ".join("--" + n.replace("_", "-") for n in foreign)
        own = ", ".join("--" + n.replace("_", "-") for n in sorted(takes)) or "none"
        raise SettingsError(f"the {name} repair does not take {options} (its settings: {own})")
    settings = {**(cls.comparison if comparison else {}), **given}
    return cls(**settings)


def checked_repair(repair: object) -> Repair:
    """A Repair; a registered repair's name (or a Repair class) is built with its default settings."""
    if isinstance(repair, str):
        repair = build_repair(repair)  # an unknown name: SettingsError listing the known ones
    elif isinstance(repair, type) and issubclass(repair, Repair) and repair is not Repair:
        repair = repair()
    if not isinstance(repair, Repair):
        raise SettingsError(
            f"repair must be a Repair or a repair name ({', '.join(repair_names())}), not {shown(repair)}"
        )
    seed = getattr(repair, "seed", None)  # one meaning across repairs: a seed of numpy's and torch's generators
    if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise SettingsError(f"{repair.name}: seed must be an integer from 0 to {MAX_SEED}, not {seed!r}")
    return repair
