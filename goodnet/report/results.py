"""results.json: the public, versioned schema of every repair's result (docs/results-schema.md).

Deterministic for a fixed model and data: timings are kept out (timings.json).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..metrics import accuracy, flag_rate
from ..models.goodnet import goodnet_labels
from ..pruning.selection import drop_percent
from ..repairs.runner import RepairResult

SCHEMA_VERSION = 1


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: rounded(v) if isinstance(v, float) or v is None else v for k, v in d.items()}


def model_scores(result: RepairResult, labels: dict[str, np.ndarray]) -> dict[str, float | None]:
    """One model's clean accuracy and ASR on the validation and test sets (None: set not given)."""
    def score(role: str) -> float | None:
        return accuracy(labels[role], result.data[role].y) if role in result.data else None
    return {"valid_accuracy": score("clean_valid"), "test_accuracy": score("clean_test"),
            "valid_asr": score("poisoned_valid"), "test_asr": score("poisoned_test")}


def goodnet_scores(result: RepairResult, labels: dict[str, np.ndarray], split: str = "test"
                   ) -> dict[str, float | None]:
    """G (B vs the B' with these `labels`) on the clean and poisoned sets of `split`, with its
    flag rates: detection on poisoned inputs, false alarms on clean ones."""
    out: dict[str, float | None] = {}
    for kind, key, flag_key in (("clean", "accuracy", "flagged_clean"), ("poisoned", "asr", "flagged_poisoned")):
        role = f"{kind}_{split}"
        if role not in result.data:
            out[f"{split}_{key}"], out[flag_key] = None, None
            continue
        g = goodnet_labels(result.backdoored[role], labels[role], result.extra_class)
        out[f"{split}_{key}"] = accuracy(g, result.data[role].y)
        out[flag_key] = flag_rate(g, result.extra_class)
    return {k: out[k] for k in (f"{split}_accuracy", f"{split}_asr", "flagged_poisoned", "flagged_clean")}


def valid_drop(result: RepairResult, steps: int) -> float:
    """Clean validation drop of the curve's model at `steps`, measured as its selection did."""
    labels = result.curve.labels["clean_valid"].labels
    y = result.data["clean_valid"].y
    correct = [int((labels[k] == y).sum()) for k in (0, steps)]
    return drop_percent(correct[0], correct[1], len(y), result.curve.drop)


def results_document(result: RepairResult, files: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The results.json document; `files[model name]` are the files written for that B'."""
    repair = result.repair
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "mode": "repair", "repair": repair.name, "oracle": repair.oracle,
        "settings": repair.settings(), "details": result.details, "notice": result.notice,
        "warnings": list(result.warnings),
        "num_classes": result.num_classes, "extra_class": result.extra_class, "inputs": result.inputs,
        "sizes": {role: len(images) for role, images in result.data.items()},
        "value_range": {role: [float(images.x.min()), float(images.x.max())] for role, images in result.data.items()},
        "input_scale": result.input_scale,
        "sanity": None if result.sanity is None else {
            k: float(f"{v:.3g}") if k == "p_value" else rounded(v) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(result.sanity).items()},
        "do_no_harm": None if result.harm is None else {
            **result.harm.to_json(), "delivered_settings": result.delivered.settings()},
        "baseline": _rounded(model_scores(result, result.backdoored)),
        "models": [{"name": m.name, "pruned": m.repaired.pruned, "weights_changed": m.repaired.weights_changed,
                    "details": m.repaired.details,
                    "metrics": {role: _rounded(v) for role, v in result.metrics(m.labels).items()},
                    "detection": None if m.detection is None else m.detection.to_json(),
                    "files": files.get(m.name)} for m in result.models],
        "strip": None if result.strip is None else {**result.strip.to_json(), **result.strip_settings.to_json()},
    }
    if len(result.models) == 1:  # the one B': its numbers and files at the top, as every repair had them
        doc["metrics"], doc["files"] = doc["models"][0]["metrics"], doc["models"][0]["files"]
        doc["detection"] = doc["models"][0]["detection"]
    if result.curve is not None:
        doc.update(_curve_fields(result, files))
    return doc


def _curve_fields(result: RepairResult, files: dict[str, dict[str, str]]) -> dict[str, Any]:
    curve = result.curve
    thresholds = []
    for sel in curve.selections:
        entry: dict[str, Any] = {"x": sel.x, "rule": sel.rule, "reached": sel.reached,
                                 "channels_pruned": sel.channels_pruned}
        if sel.channels_pruned is None:
            entry.update(pruned=None, valid_drop=None, repaired=None, goodnet=None, files=None)
        else:
            k = sel.channels_pruned
            labels = result.step_labels(k)
            entry.update(pruned=curve.pruned_channels(k), valid_drop=rounded(valid_drop(result, k)),
                         repaired=_rounded(model_scores(result, labels)),
                         goodnet=_rounded(goodnet_scores(result, labels, "test")),
                         files=files.get(sel.name))
        thresholds.append(entry)
    means = curve.mean_activation
    return {"layer": curve.layer, "cut": curve.cut, "order": curve.order_name, "drop": curve.drop,
            "num_channels": curve.num_channels, "saved_rules": list(result.details.get("saved_rules", [])),
            "dead_channels": int((means == 0).sum()), "mean_activation": [float(v) for v in means],
            "pruning_order": [int(c) for c in curve.order], "thresholds": thresholds}


CURVE_COLUMNS = ["channels_pruned", "fraction_pruned", "channel", "mean_activation", "recomputed_inputs",
                 "valid_accuracy", "valid_asr", "test_accuracy", "test_asr",
                 "goodnet_valid_accuracy", "goodnet_valid_asr", "goodnet_test_accuracy", "goodnet_test_asr",
                 "flagged_poisoned", "flagged_clean"]


def curve_rows(result: RepairResult) -> list[dict[str, Any]]:
    """One row per step of the pruning curve (curve.csv): the channel pruned, B' and G on every set."""
    curve = result.curve
    rows = []
    for k in range(curve.num_channels + 1):
        channel = int(curve.order[k - 1]) if k else None
        labels = result.step_labels(k)
        g_valid, g_test = goodnet_scores(result, labels, "valid"), goodnet_scores(result, labels, "test")
        recomputed = int(sum(curve.labels[role].recomputed[k - 1] for role in result.data)) if k else None
        rows.append({"channels_pruned": k, "fraction_pruned": k / curve.num_channels, "channel": channel,
                     "mean_activation": None if channel is None else float(curve.mean_activation[channel]),
                     "recomputed_inputs": recomputed, **model_scores(result, labels),
                     "goodnet_valid_accuracy": g_valid["valid_accuracy"], "goodnet_valid_asr": g_valid["valid_asr"],
                     "goodnet_test_accuracy": g_test["test_accuracy"], "goodnet_test_asr": g_test["test_asr"],
                     "flagged_poisoned": g_test["flagged_poisoned"], "flagged_clean": g_test["flagged_clean"]})
    return rows
