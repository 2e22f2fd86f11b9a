"""Scan a model for a backdoor without poisoned data: `goodnet scan`. Load B and clean images,
reverse-engineer a trigger per label (Neural Cleanse), write the verdict, the anomaly index and the
reversed triggers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import DataError
from .inference import predict
from .inspection.trigger_reversal import reverse_triggers
from .io.data import check_fits_model, check_input_range, load_images, trained_range
from .io.model_files import ModelSource
from .io.output_dir import check_output_dir
from .repairs.runner import SanityCheck
from .report.scan_report import SCAN_MARKER, write_scan


@dataclass
class ScanRun:
    scan: Any  # TriggerScan
    document: dict[str, Any]  # scan.json
    model: nn.Module


def scan_files(source: ModelSource | str, clean_path: str, out_dir: str, input_scale: float = 1.0,
               progress: bool = True, force: bool = False, seed: int = 0, **settings) -> ScanRun:
    """Scan B (`source`) with the clean images of `clean_path`; write `out_dir`."""
    source = ModelSource(source) if isinstance(source, str) else source
    check_output_dir(out_dir, marker=SCAN_MARKER, claim=True)
    clean = load_images(clean_path, input_scale)
    model = source.load_backdoored(clean.image_shape)
    check_fits_model(clean, model.input_shape, model.num_classes, "clean-valid")
    check_input_range(clean, trained_range(model), "clean-valid")
    sanity = SanityCheck.of(predict(model, clean.x), clean, int(model.num_classes), force)
    if not sanity.above_chance and not force:
        raise DataError(sanity.refusal(clean.value_range))
    scan = reverse_triggers(model, clean, clean.value_range, seed=seed, progress=progress, **settings)
    inputs = {"model": source.path, "clean_valid": clean_path, "input_scale": float(input_scale)}
    return ScanRun(scan, write_scan(out_dir, scan, clean.value_range, inputs), model)
