"""results.json: the public, versioned schema of every repair's result (docs/results-schema.md),
serialised from a Measurement. Nothing here computes a number; each is read from the Measurement.

Deterministic for a fixed model and data: timings are kept out (timings.json).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..measure.measurement import Measurement, ThresholdChoice

SCHEMA_VERSION = 1


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: rounded(v) if isinstance(v, float) or v is None else v for k, v in d.items()}


def results_document(result: Measurement, files: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The results.json document; `files[model name]` are the files written for that B'."""
    repair = result.repair
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "mode": "repair",
        "repair": repair.name,
        "oracle": repair.oracle,
        "verdicts": [v.to_json() for v in result.verdicts],
        "next_step": None if result.next_step is None else result.next_step.to_json(),
        "relearning": None if result.relearning is None else result.relearning.to_json(),
        "provenance": result.provenance or None,
        "settings": repair.settings(),
        "details": result.details,
        "notice": result.notice,
        "warnings": list(result.warnings),
        "num_classes": result.num_classes,
        "extra_class": result.extra_class,
        "inputs": result.inputs,
        "sizes": result.sizes,
        "value_range": result.value_range,
        "data_formats": result.data_formats,
        "input_scale": result.input_scale,
        "sanity": None
        if result.sanity is None
        else {
            k: float(f"{v:.3g}") if k == "p_value" else rounded(v) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(result.sanity).items()
        },
        "do_no_harm": None
        if result.harm is None
        else {**result.harm.to_json(), "delivered_settings": result.delivered.settings()},
        "baseline": _rounded(result.baseline),
        "models": [
            {
                "name": m.name,
                "pruned": m.repaired.pruned,
                "weights_changed": m.repaired.weights_changed,
                "details": m.repaired.details,
                "metrics": {role: _rounded(v) for role, v in m.metrics.items()},
                "detection": None if m.detection is None else m.detection.to_json(),
                "verdict": None if m.verdict is None else m.verdict.to_json(),
                "files": files.get(m.name),
            }
            for m in result.models
        ],
        "strip": None if result.strip is None else {**result.strip.to_json(), **result.strip_settings.to_json()},
    }
    if len(result.models) == 1:  # the one B': its numbers and files at the top, as every repair had them
        doc["metrics"], doc["files"] = doc["models"][0]["metrics"], doc["models"][0]["files"]
        doc["detection"] = doc["models"][0]["detection"]
    if result.curve is not None:
        doc.update(_curve_fields(result, files))
    return doc


def _threshold(choice: ThresholdChoice, files: dict[str, dict[str, str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "x": choice.x,
        "rule": choice.rule,
        "reached": choice.reached,
        "channels_pruned": choice.channels_pruned,
    }
    if choice.channels_pruned is None:
        entry.update(pruned=None, valid_drop=None, repaired=None, goodnet=None, files=None)
    else:
        entry.update(
            pruned=choice.pruned,
            valid_drop=rounded(choice.valid_drop),
            repaired=_rounded(choice.repaired),
            goodnet=_rounded(choice.goodnet),
            files=files.get(choice.name),
        )
    return entry


def _curve_fields(result: Measurement, files: dict[str, dict[str, str]]) -> dict[str, Any]:
    curve = result.curve
    means = curve.mean_activation
    return {
        "layer": curve.layer,
        "cut": curve.cut,
        "order": curve.order_name,
        "drop": curve.drop,
        "num_channels": curve.num_channels,
        "saved_rules": list(result.details.get("saved_rules", [])),
        "dead_channels": result.dead_channels,
        "mean_activation": [float(v) for v in means],
        "pruning_order": [int(c) for c in curve.order],
        "thresholds": [_threshold(choice, files) for choice in result.thresholds],
    }
