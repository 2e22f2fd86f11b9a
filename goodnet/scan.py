"""Scan a model for a backdoor without poisoned data: `goodnet scan`. Load B and clean images,
reverse-engineer a trigger per label (Neural Cleanse), write the verdict, the anomaly index and the
reversed triggers."""

from __future__ import annotations

import inspect
import numbers
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from .devices import compute_device
from .errors import DataError, OutputError, SettingsError
from .inference import predict
from .inspection.trigger_reversal import reverse_triggers
from .io import output_dir
from .io.data import as_path, check_fits_model, check_input_range, checked_scale, load_images, shown, trained_range
from .io.model_files import ModelSource, model_source
from .io.output_dir import check_output_dir, release_output
from .measure.sanity import SanityCheck
from .repairs.base import MAX_SEED
from .report.scan_report import SCAN_MARKER, write_scan
from .spec import check_flags, environment, file_record, model_record

# what `**settings` may name: reverse_triggers' own keywords, less those scan_files sets itself
SCAN_SETTINGS = tuple(
    name
    for name, p in inspect.signature(reverse_triggers).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("seed", "progress")
)


@dataclass
class ScanRun:
    scan: Any  # TriggerScan
    document: dict[str, Any]  # scan.json
    model: nn.Module


def scan_files(
    source: ModelSource | str | os.PathLike,
    clean_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    input_scale: float = 1.0,
    progress: bool = True,
    force: bool = False,
    seed: int = 0,
    **settings,
) -> ScanRun:
    """Scan B (`source`) with the clean images of `clean_path`; write `out_dir`. Paths may be str or
    os.PathLike; `settings` are reverse_triggers' (schedule, steps, ...). A refused call leaves
    `out_dir` free for the next one."""
    source = model_source(source)
    clean_path = as_path(clean_path, "clean_path")
    out_dir = as_path(out_dir, "out_dir", OutputError, "a directory path (str or os.PathLike)")
    input_scale = checked_scale(input_scale)
    check_flags(progress=progress, force=force)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise SettingsError(f"seed must be an integer from 0 to {MAX_SEED}, not {shown(seed)}")
    unknown = sorted(set(settings) - set(SCAN_SETTINGS))
    if unknown:
        raise SettingsError(
            f"trigger scan: unknown setting(s) {', '.join(unknown)} (known: {', '.join(SCAN_SETTINGS)})"
        )
    claimed_before = os.path.abspath(out_dir) in output_dir._CLAIMS  # a caller's claim stays the caller's
    check_output_dir(out_dir, marker=SCAN_MARKER, claim=True, inputs=source.input_files() + [clean_path])
    try:
        clean = load_images(clean_path, input_scale)
        model = source.load_backdoored(clean.image_shape)
        check_fits_model(clean, model.input_shape, model.num_classes, "clean-valid")
        check_input_range(clean, trained_range(model), "clean-valid")
        sanity = SanityCheck.of(predict(model, clean.x), clean, int(model.num_classes), force)
        if not sanity.above_chance and not force:
            raise DataError(sanity.refusal(clean.value_range))
        scan = reverse_triggers(model, clean, clean.value_range, seed=int(seed), progress=progress, **settings)
        inputs = {"model": source.path, "clean_valid": clean_path, "input_scale": float(input_scale)}
        provenance = {
            **environment(str(compute_device())),
            "model": model_record(source),
            "data": {"clean_valid": file_record(clean_path)},
            "seed": int(seed),
            "options": {"input_scale": float(input_scale), "force": force, **settings},
        }
        return ScanRun(scan, write_scan(out_dir, scan, clean.value_range, inputs, provenance), model)
    finally:  # written, refused or interrupted: the output is free again
        if not claimed_before:
            release_output(out_dir)
