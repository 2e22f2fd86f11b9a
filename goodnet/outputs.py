"""A repair's output folder, written atomically: the model files (io.repaired_files: each B' and
its G) and the report rendered from the Measurement (report.writer). A refused or interrupted write
leaves nothing behind (io.output_dir)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .errors import OutputError
from .io.output_dir import atomic_directory
from .io.repaired_files import ModelExports
from .measure.measurement import Measurement
from .report.writer import write_report


def write_outputs(
    out_dir: str,
    result: Measurement,
    model: nn.Module,
    exports: ModelExports = ModelExports(),
    scans: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the whole result folder for `result` (B = `model`) atomically; return results.json.
    `scans`: trigger scans by model name (B, then each B'), for the report's scan section."""
    if not isinstance(result, Measurement) or not isinstance(model, nn.Module):
        raise OutputError(
            f"write_outputs writes a Measurement and its model B, not {type(result).__name__} and "
            f"{type(model).__name__}"
        )
    with atomic_directory(out_dir) as stage:
        os.makedirs(os.path.join(stage, "models"))
        files = {
            m.name: exports.save(stage, model, m.name, m.repaired.model, m.repaired.single_layer) for m in result.models
        }
        return write_report(stage, result, files, scans)
