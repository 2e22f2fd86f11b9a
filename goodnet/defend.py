"""Defend files: load B and the data files, run one repair, write the output directory. This is
`goodnet defend`, and the demo runs exactly it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .inspection.strip import StripSettings
from .inspection.trigger_reversal import SCHEDULES, reverse_triggers
from .errors import DataError, OutputError, SettingsError
from .io import output_dir
from .io.data import ROLES, as_path, checked_scale, load_sets, shown
from .io.model_files import ModelSource, model_source
from .io.output_dir import check_output_dir, release_output
from .io.role_checks import label_warnings, role_warnings
from .repairs import Repair, RepairResult, run_repair
from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP
from .repairs.runner import check_options, checked_repair
from .report.writer import ModelExports, write_outputs


@dataclass
class DefenseRun:
    result: RepairResult
    document: dict[str, Any]  # results.json
    model: nn.Module  # B
    scans: dict[str, Any] | None = None  # trigger scans by model name (--scan)


def data_files(data_paths: Any) -> dict[str, str | None]:
    """`data_paths` (role -> file path, str or os.PathLike, or None) with str paths; unknown roles
    and anything but paths refused."""
    if not isinstance(data_paths, Mapping):
        raise DataError(f"data_paths must be a dict of role -> file path (roles: {', '.join(ROLES)}), "
                        f"not {shown(data_paths)}")
    unknown = set(data_paths) - set(ROLES)
    if unknown:
        raise SettingsError(f"unknown data roles {sorted(map(str, unknown))} (known: {', '.join(ROLES)})")
    return {role: None if path is None else as_path(path, f"data_paths[{role!r}]", DataError,
                                                    "a file path (str or os.PathLike) or None")
            for role, path in data_paths.items()}


def check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be True or False, not {shown(value)}")


def defend_files(source: ModelSource | str | os.PathLike, data_paths: dict[str, str | os.PathLike | None],
                 out_dir: str | os.PathLike, repair: Repair | str,
                 input_scale: float = 1.0, onnx: bool = False, progress: bool = True,
                 force: bool = False, max_drop: float | None = DEFAULT_MAX_DROP,
                 holdout: float = DEFAULT_HOLDOUT, strip: StripSettings | None = StripSettings(),
                 scan: bool = False, scan_schedule: str = "reference") -> DefenseRun:
    """Load B and the data, repair, measure, write `out_dir`. Every input is checked before work.
    With clean and poisoned test data, G's detection is scored beside STRIP's (`strip=None`: not STRIP).
    `scan`: reverse triggers (Neural Cleanse) of B and of every B' on the clean validation data, so a
    user without poisoned data sees whether the anomaly index fell; `scan_schedule`: the scan's
    cost schedule ("reference", the authors', or "goodnet", faster). Paths may be str or
    os.PathLike; `repair` may be a registered repair's name (its default settings). A refused call
    leaves `out_dir` free for the next one."""
    source = model_source(source)
    data_paths = data_files(data_paths)
    out_dir = as_path(out_dir, "out_dir", OutputError, "a directory path (str or os.PathLike)")
    repair = checked_repair(repair)
    input_scale = checked_scale(input_scale)
    check_flags(onnx=onnx, scan=scan)
    check_options(progress=progress, force=force, max_drop=max_drop, holdout=holdout, strip=strip)
    if scan:
        if not isinstance(scan_schedule, str) or scan_schedule not in SCHEDULES:
            raise SettingsError(f"trigger scan: schedule must be one of {', '.join(SCHEDULES)}, not "
                                f"{shown(scan_schedule)}")
        if not data_paths.get("clean_valid"):
            raise SettingsError("--scan reverses triggers on clean validation data: give --clean-valid")
    claimed_before = os.path.abspath(out_dir) in output_dir._CLAIMS  # a caller's claim stays the caller's
    check_output_dir(out_dir, claim=True, inputs=source.input_files() + list(data_paths.values()))  # before any work
    try:
        return _defend(source, data_paths, out_dir, repair, input_scale, onnx, progress, force, max_drop, holdout,
                       strip, scan, scan_schedule)
    finally:  # written, refused or interrupted: the output is free again
        if not claimed_before:
            release_output(out_dir)


def _defend(source: ModelSource, data_paths: dict[str, str | None], out_dir: str, repair: Repair,
            input_scale: float, onnx: bool, progress: bool, force: bool, max_drop: float | None, holdout: float,
            strip: StripSettings | None, scan: bool, scan_schedule: str) -> DefenseRun:
    exports = ModelExports(keras_like=source.path if source.is_keras else None, onnx=onnx,
                           keras_config=source.keras_config)
    sets = load_sets(data_paths, input_scale)
    doubts = role_warnings(sets, data_paths)  # and a refusal where a number would mean nothing
    model = source.load_backdoored(next(iter(sets.values())).image_shape if sets else None)
    result = run_repair(model, repair, sets, progress=progress, force=force, max_drop=max_drop, holdout=holdout,
                        strip=strip)
    result.warnings = doubts + [line for role in ("poisoned_valid", "poisoned_test") if role in sets
                                for line in label_warnings(sets[role], result.backdoored[role], role)]
    result.inputs = {role: path for role, path in data_paths.items() if path}
    result.input_scale = float(input_scale)
    scans = None
    if scan:
        clean = sets["clean_valid"]
        scans = {"B": reverse_triggers(model, clean, clean.value_range, progress=progress and "scanning B",
                                       schedule=scan_schedule)}
        for m in result.models:
            scans[f"B' {m.name}"] = reverse_triggers(m.repaired.model, clean, clean.value_range,
                                                     progress=progress and f"scanning B' {m.name}",
                                                     schedule=scan_schedule)
    return DefenseRun(result=result, document=write_outputs(out_dir, result, model, exports, scans), model=model,
                      scans=scans)
