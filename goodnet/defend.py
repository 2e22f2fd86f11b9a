"""Defend files: load B and the data files, run one repair, write the output directory. This is
`goodnet defend`, and the demo runs exactly it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .inspection.strip import StripSettings
from .inspection.trigger_reversal import reverse_triggers
from .errors import SettingsError
from .io.data import load_sets
from .io.model_files import ModelSource
from .io.output_dir import check_output_dir
from .repairs import Repair, RepairResult, run_repair
from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP
from .report.writer import ModelExports, write_outputs


@dataclass
class DefenseRun:
    result: RepairResult
    document: dict[str, Any]  # results.json
    model: nn.Module  # B
    scans: dict[str, Any] | None = None  # trigger scans by model name (--scan)


def defend_files(source: ModelSource | str, data_paths: dict[str, str | None], out_dir: str, repair: Repair,
                 input_scale: float = 1.0, onnx: bool = False, progress: bool = True,
                 force: bool = False, max_drop: float | None = DEFAULT_MAX_DROP,
                 holdout: float = DEFAULT_HOLDOUT, strip: StripSettings | None = StripSettings(),
                 scan: bool = False, scan_schedule: str = "reference") -> DefenseRun:
    """Load B and the data, repair, measure, write `out_dir`. Every input is checked before work.
    With clean and poisoned test data, G's detection is scored beside STRIP's (`strip=None`: not STRIP).
    `scan`: reverse triggers (Neural Cleanse) of B and of every B' on the clean validation data, so a
    user without poisoned data sees whether the anomaly index fell; `scan_schedule`: the scan's
    cost schedule ("reference", the authors', or "goodnet", faster)."""
    source = ModelSource(source) if isinstance(source, str) else source
    check_output_dir(out_dir, claim=True)  # before any work, not after it
    exports = ModelExports(keras_like=source.path if source.is_keras else None, onnx=onnx,
                           keras_config=source.keras_config)
    sets = load_sets(data_paths, input_scale)
    model = source.load_backdoored(next(iter(sets.values())).image_shape if sets else None)
    result = run_repair(model, repair, sets, progress=progress, force=force, max_drop=max_drop, holdout=holdout,
                        strip=strip)
    result.inputs = {role: path for role, path in data_paths.items() if path}
    result.input_scale = float(input_scale)
    scans = None
    if scan:
        clean = sets.get("clean_valid")
        if clean is None:
            raise SettingsError("--scan reverses triggers on clean validation data: give --clean-valid")
        scans = {"B": reverse_triggers(model, clean, clean.value_range, progress=progress and "scanning B",
                                       schedule=scan_schedule)}
        for m in result.models:
            scans[f"B' {m.name}"] = reverse_triggers(m.repaired.model, clean, clean.value_range,
                                                     progress=progress and f"scanning B' {m.name}",
                                                     schedule=scan_schedule)
    return DefenseRun(result=result, document=write_outputs(out_dir, result, model, exports, scans), model=model,
                      scans=scans)
