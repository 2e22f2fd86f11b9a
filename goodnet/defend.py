"""Defend files: `defend(spec)` loads B and the data files a DefenseSpec names, runs its repair,
measures the result and writes the output folder. This is `goodnet defend`, and the demo and batch
run exactly it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from .devices import compute_device
from .errors import SettingsError
from .inspection.strip import StripSettings
from .inspection.trigger_reversal import reverse_triggers
from .io.data import load_sets, trained_range
from .io.model_files import ModelSource
from .io.output_dir import held_output
from .io.repaired_files import ModelExports
from .io.role_checks import role_warnings
from .measure import Measurement, RunInputs, run_repair
from .measure.relearning import RelearnSettings, RelearnTest
from .outputs import write_outputs
from .repairs import Repair
from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP
from .spec import DefenseSpec


@dataclass(frozen=True)
class DefenseRun:
    result: Measurement
    document: dict[str, Any]  # results.json
    model: nn.Module  # B
    scans: dict[str, Any] | None = None  # trigger scans by model name (--scan)


def defend(spec: DefenseSpec) -> DefenseRun:
    """Load B and the data, repair, measure, write `spec.out_dir`. The output is claimed before any
    work; a refused call leaves it free for the next one. With clean and poisoned test data, G's
    detection is scored beside STRIP's; `spec.scan` reverses triggers of B and of every B' on the
    clean validation data, so a user without poisoned data sees whether the anomaly index fell."""
    if not isinstance(spec, DefenseSpec):
        raise SettingsError(f"defend takes a DefenseSpec (see DefenseSpec.build), not {type(spec).__name__}")
    with held_output(spec.out_dir, inputs=spec.input_files()):  # before any work
        return _defend(spec)


def defend_files(
    source: ModelSource | str | os.PathLike,
    data_paths: dict[str, str | os.PathLike | None],
    out_dir: str | os.PathLike,
    repair: Repair | str,
    input_scale: float = 1.0,
    onnx: bool = False,
    progress: bool = True,
    force: bool = False,
    max_drop: float | None = DEFAULT_MAX_DROP,
    holdout: float = DEFAULT_HOLDOUT,
    strip: StripSettings | None = StripSettings(),
    scan: bool = False,
    scan_schedule: str = "reference",
    relearn: RelearnSettings | None = None,
    relearn_reference: str | os.PathLike | None = None,
) -> DefenseRun:
    """`defend` of the DefenseSpec these arguments build (see DefenseSpec.build): every input is
    checked before any work, and a refused call leaves `out_dir` free for the next one."""
    return defend(
        DefenseSpec.build(
            source,
            data_paths,
            out_dir,
            repair,
            input_scale,
            onnx,
            progress,
            force,
            max_drop,
            holdout,
            strip,
            scan,
            scan_schedule,
            relearn,
            relearn_reference,
        )
    )


def _spread(images) -> bool:
    """Whether the images' values span a range (constant images say nothing about the scale)."""
    low, high = images.value_range
    return low < high


def _defend(spec: DefenseSpec) -> DefenseRun:
    source = spec.source
    exports = ModelExports(
        keras_like=source.path if source.is_keras else None, onnx=spec.onnx, keras_config=source.keras_config
    )
    sets = load_sets(spec.data, spec.input_scale)
    doubts = role_warnings(sets, spec.data)  # and a refusal where a number would mean nothing
    model = source.load_backdoored(next(iter(sets.values())).image_shape if sets else None)
    value_range = {"values": None, "from": None}
    given = "clean_valid" if "clean_valid" in sets else next(iter(sets), None)
    if trained_range(model) is not None:
        value_range = {"values": list(trained_range(model)), "from": "B's file"}
    elif given is not None and _spread(sets[given]):
        # B beat chance on these values (the sanity check): its B' and G files record them
        model.input_range = tuple(float(v) for v in sets[given].value_range)
        model.input_range_origin = f"B's file records none: taken from the {given.replace('_', '-')} data"
        value_range = {"values": list(model.input_range), "from": f"the {given} data (B's file records none)"}
    inputs = RunInputs(
        {role: path for role, path in spec.data.items() if path},
        float(spec.input_scale),
        tuple(doubts),
        {**spec.provenance(str(compute_device())), "input_range": value_range},
    )
    relearn = None
    if spec.relearn is not None:
        reference_source = spec.reference_source
        reference = None if reference_source is None else reference_source.load_backdoored(model.input_shape)
        relearn = RelearnTest(
            spec.relearn, reference, None if reference is None else os.path.abspath(spec.relearn_reference)
        )
    result = run_repair(
        model,
        spec.repair,
        sets,
        progress=spec.progress,
        force=spec.force,
        max_drop=spec.guard.max_drop,
        holdout=spec.guard.holdout,
        strip=spec.strip,
        inputs=inputs,
        relearn=relearn,
    )
    scans = None
    if spec.scan:
        clean = sets["clean_valid"]
        scans = {
            "B": reverse_triggers(
                model, clean, clean.value_range, progress=spec.progress and "scanning B", schedule=spec.scan_schedule
            )
        }
        for m in result.models:
            scans[f"B' {m.name}"] = reverse_triggers(
                m.repaired.model,
                clean,
                clean.value_range,
                progress=spec.progress and f"scanning B' {m.name}",
                schedule=spec.scan_schedule,
            )
    return DefenseRun(
        result=result, document=write_outputs(spec.out_dir, result, model, exports, scans), model=model, scans=scans
    )
