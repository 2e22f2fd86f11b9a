"""A population manifest: the user's own models with known answers, for measuring a scanner.

`goodnet scan --population models.toml` measures the scanners over the models such a file lists
(ROC-AUC, cross-entropy, clean models flagged, target named), as `scan --zoo` does over the zoo.
The file is TOML; paths are relative to the file's folder. Top-level keys are defaults for every
model; each `[[model]]` table names one model and whether it is backdoored:

    clean_valid = "data/clean_valid.h5"   # default clean data for every model

    [[model]]
    model = "vendor_a.safetensors"
    backdoored = true
    target = 0                            # optional: the attacker's single target label

    [[model]]
    name = "clean reference"              # optional: how tables name it (default: the file name)
    model = "reference.keras"
    backdoored = false

A model may also set `clean_valid`, `arch`, `factory` and `input_scale`, as `goodnet scan` takes
them. Everything is checked before any model is loaded: an unknown key, a missing file, a
duplicate name or a population without both clean and backdoored models is refused in one line.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

from ..errors import DataError, SettingsError, shown_path
from .data import checked_scale, shown
from .file_checks import input_file_problem
from .model_files import ModelSource, manifest_arch, manifest_path, names_arch_file
from .toml_files import read_toml, refuse_unknown_keys

MODEL_KEYS = ("name", "model", "backdoored", "target", "clean_valid", "arch", "factory", "input_scale")
DEFAULT_KEYS = ("clean_valid", "arch", "factory", "input_scale")


@dataclass(frozen=True)
class PopulationEntry:
    """One model of a manifest, with its known answer and what `goodnet scan` needs to scan it."""

    name: str
    source: ModelSource
    clean_valid: str
    backdoored: bool
    target: int | None = None
    input_scale: float = 1.0


def read_population(path: str | os.PathLike, trust_code: bool = False) -> list[PopulationEntry]:
    """The entries of the manifest at `path`, checked (see the module's docstring)."""
    path = os.fspath(path)
    where = shown_path(path)
    document = read_toml(path, "a population manifest")
    folder = os.path.dirname(os.path.abspath(path))
    unknown = sorted(set(document) - set(DEFAULT_KEYS) - {"model"})
    if unknown:
        raise SettingsError(
            f"{where}: unknown top-level key(s) {', '.join(unknown)} "
            f"(known: {', '.join(DEFAULT_KEYS)} and [[model]] tables)"
        )
    models = document.get("model")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise SettingsError(f"{where}: lists no models: add one [[model]] table per model")
    defaults = {key: document[key] for key in DEFAULT_KEYS if key in document}
    _check_values(f"{where}: top level", defaults)
    entries = [_entry(where, folder, index, table, defaults, trust_code) for index, table in enumerate(models, 1)]
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SettingsError(f"{where}: two models are named {repeated[0]!r}: give each a distinct `name`")
    if all(e.backdoored for e in entries) or not any(e.backdoored for e in entries):
        kind = "backdoored" if entries[0].backdoored else "clean"
        raise SettingsError(
            f"{where}: every model is {kind}: a scanner is measured on clean and backdoored models together"
        )
    return entries


def _entry(where: str, folder: str, index: int, table: dict, defaults: dict, trust_code: bool) -> PopulationEntry:
    label = f"{where}: model {index}"
    refuse_unknown_keys(label, table, MODEL_KEYS)
    merged = {**defaults, **table}
    for key in ("model", "backdoored", "clean_valid"):
        if key not in merged:
            raise SettingsError(f"{label}: needs `{key}`")
    _check_values(label, table)
    backdoored = merged["backdoored"]
    if not isinstance(backdoored, bool):
        raise SettingsError(f"{label}: `backdoored` must be true or false, not {shown(backdoored)}")
    target = merged.get("target")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0:
            raise SettingsError(f"{label}: `target` must be a label (a whole number >= 0), not {shown(target)}")
        if not backdoored:
            raise SettingsError(f"{label}: a clean model has no `target`")
    model_path = manifest_path(merged["model"], folder)
    clean_path = manifest_path(merged["clean_valid"], folder)
    arch = manifest_arch(merged["arch"], folder) if "arch" in merged else None
    files = [("model", model_path, "a model file"), ("clean_valid", clean_path, "a data file")]
    if arch is not None and names_arch_file(arch):
        files.append(("arch", arch, "an architecture file"))
    for role, file, what in files:
        if role == "clean_valid" and os.path.isdir(file):
            continue  # an image folder: its reader checks it
        problem = input_file_problem(file, what)
        if problem is not None:
            raise SettingsError(f"{label}: {role} {shown_path(file)}: {problem}")
    name = merged.get("name") or os.path.basename(model_path)
    return PopulationEntry(
        name=name,
        source=ModelSource(model_path, arch=arch, factory=merged.get("factory"), trust_code=trust_code),
        clean_valid=clean_path,
        backdoored=backdoored,
        target=None if target is None else int(target),
        input_scale=float(merged.get("input_scale", 1.0)),
    )


def _check_values(label: str, table: dict) -> None:
    """The path and name keys of `table` non-empty strings, its input_scale a positive number."""
    for key in ("name", "model", "clean_valid", "arch", "factory"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise SettingsError(f"{label}: `{key}` must be a non-empty string, not {shown(table[key])}")
    if "input_scale" in table:
        try:
            checked_scale(table["input_scale"])
        except DataError as e:
            raise SettingsError(f"{label}: {e}") from None
