"""The one writer: everything a repair's result leaves on disk, for every repair.

results.json (the public schema, see results.py), metrics.csv, report.md (and the same as one
self-contained report.html), timings.json, sample
images, the models (B' and its G, in our format, plus Keras and ONNX when asked), and, when the
repair selected from a pruning curve, curve.csv, curve.png, activations.png and the rules table.
All of it is written into one directory atomically (see io/output_dir.py).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import OutputError, one_line
from ..io.keras.export import export_like, keras_suffix
from ..io.model_files import model_suffix, save_model
from ..io.onnx_export import export_onnx, require_onnx
from ..io.output_dir import atomic_directory
from ..models.goodnet import build_goodnet, goodnet_labels
from ..repairs.base import RepairedModel
from ..repairs.runner import METRIC_KEYS, RepairResult
from .html_page import write_page
from .plots import plot_activations, plot_curve, plot_samples
from .results import CURVE_COLUMNS, curve_rows, results_document
from .scan_report import scan_figures, scan_markdown
from .tables import (DETECTION_NOTE, ORACLE_NOTE, SUMMARY_NOTE, detection_table, forced_note, forced_past_sanity,
                     pruned_summary, rules_table, summary_table)


@dataclass(frozen=True)
class ModelExports:
    """Extra formats written next to our own files: B' as a Keras file in the layout (and format:
    .h5, .weights.h5 or .keras) of `keras_like`, the Keras file B came from (`keras_config`: its
    architecture's raw Keras description when B's file holds none), G and B' as ONNX."""

    keras_like: str | None = None
    onnx: bool = False
    keras_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.onnx:
            require_onnx()  # before any work, not after

    def filenames(self, stem: str, model: nn.Module) -> dict[str, str]:
        names = {"repaired": f"models/repaired_{stem}{model_suffix(model)}",
                 "goodnet": f"models/goodnet_{stem}{model_suffix(model)}"}
        if self.keras_like:
            names["repaired_keras"] = f"models/repaired_{stem}{keras_suffix(self.keras_like)}"
        if self.onnx:
            names["goodnet_onnx"] = f"models/goodnet_{stem}.onnx"
            names["repaired_onnx"] = f"models/repaired_{stem}.onnx"
        return names

    def save(self, stage: str, model: nn.Module, repaired: RepairedModel) -> dict[str, str]:
        """Save B' and its G (B = `model`) under `stage`; return the file names."""
        names = self.filenames(repaired.name, model)
        goodnet = build_goodnet(model, repaired.model, repaired.single_layer)
        save_model(repaired.model, os.path.join(stage, names["repaired"]))
        save_model(goodnet, os.path.join(stage, names["goodnet"]))
        if self.keras_like:
            export_like(repaired.model, self.keras_like, os.path.join(stage, names["repaired_keras"]),
                        self.keras_config)
        if self.onnx:
            export_onnx(goodnet, os.path.join(stage, names["goodnet_onnx"]))
            export_onnx(repaired.model, os.path.join(stage, names["repaired_onnx"]))
        return names


def _json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def _csv(path: str, columns: list[str], rows: list[dict[str, Any]], digits: int) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else (round(v, digits) if isinstance(v, float) else v))
                             for k, v in row.items()})


def write_outputs(out_dir: str, result: RepairResult, model: nn.Module,
                  exports: ModelExports = ModelExports(), scans: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the whole result directory for `result` (B = `model`) atomically; return results.json.
    `scans`: trigger scans by model name (B, then each B'), for the report's scan section."""
    if not isinstance(result, RepairResult) or not isinstance(model, nn.Module):
        raise OutputError(f"write_outputs writes a RepairResult and its model B, not {type(result).__name__} and "
                          f"{type(model).__name__}")
    with atomic_directory(out_dir) as stage:
        os.makedirs(os.path.join(stage, "models"))
        files = {m.name: exports.save(stage, model, m.repaired) for m in result.models}
        doc = results_document(result, files)
        if scans:
            doc["scan"] = {name: scan.to_json() for name, scan in scans.items()}
        _json(os.path.join(stage, "results.json"), doc)
        metric_rows = [{"model": m["name"], "data": role, **values}
                       for m in doc["models"] for role, values in m["metrics"].items()]
        _csv(os.path.join(stage, "metrics.csv"), ["model", "data", *METRIC_KEYS], metric_rows, 4)
        figures = []
        if result.curve is not None:
            rows = curve_rows(result)
            _csv(os.path.join(stage, "curve.csv"), CURVE_COLUMNS, rows, 6)
            plot_curve(result.curve, rows, os.path.join(stage, "curve.png"))
            plot_activations(result.curve, os.path.join(stage, "activations.png"))
        figures += _write_samples(stage, result)
        scan_parts = []
        if scans:
            value_range = result.data["clean_valid"].value_range
            scan_files = [name for i, (title, scan) in enumerate(scans.items())
                          for name in scan_figures(stage, scan, value_range, "b" if i == 0 else f"b_prime_{i}", title)]
            scan_parts = scan_markdown(scans, scan_files)
        with open(os.path.join(stage, "report.md"), "w") as f:
            f.write(report_markdown(result, doc, figures, scan_parts))
        write_page(stage, "report.md", "report.html", f"goodnet: repair {result.repair.name}")
        _json(os.path.join(stage, "timings.json"),
              {"repair": round(result.seconds, 4),
               **({k: round(v, 4) for k, v in result.curve.timings.items()} if result.curve else {})})
    return doc


def _write_samples(stage: str, result: RepairResult) -> list[str]:
    """Test images (validation images when no test set is given) with B's and G's answers, for
    the first B'."""
    if not result.models:
        return []
    first = result.models[0]
    names = []
    for role in ("clean_test", "poisoned_test", "clean_valid", "poisoned_valid"):
        kind = role.split("_")[0]
        if role not in result.data or any(n.startswith(kind) for n in names):
            continue
        g = goodnet_labels(result.backdoored[role], first.labels[role], result.extra_class)
        name = f"{kind}_samples.png"
        plot_samples(result.data[role], result.backdoored[role], g, result.extra_class,
                     f"{role.replace('_', ' ')} (G of B' {first.name})", os.path.join(stage, name),
                     poisoned=kind == "poisoned")
        names.append(name)
    return names


def report_markdown(result: RepairResult, doc: dict[str, Any], samples: list[str],
                    scan_parts: list[str] | None = None) -> str:
    repair, curve = result.repair, result.curve
    settings = ", ".join(f"`{k}={v}`" for k, v in doc["settings"].items())
    parts = [f"# goodnet: repair `{repair.name}`", ""]
    if repair.oracle:
        parts += [f"**{ORACLE_NOTE}**", ""]
    if forced_past_sanity(result):
        parts += [f"**{forced_note(result)}**", ""]
    parts += [f"{repair.description[:1].upper()}{repair.description[1:]}.", "", f"Settings: {settings}.", ""]
    if curve is not None:
        parts += [f"Pruned layer `{curve.layer}` (cut after `{curve.cut}`), {curve.num_channels} channels, in "
                  f"{curve.order_name} order of mean clean-validation activation; budget X in {curve.drop} "
                  f"percentage points of clean validation accuracy.", ""]
    else:
        parts += [f"Pruned: {pruned_summary(result)}. Took {result.seconds:.1f} s.", ""]
    if result.notice:
        parts += [f"**{result.notice}**", ""]
    parts += [f"**Warning: {one_line(line)}.**\n" for line in result.warnings]
    if result.harm is not None:
        line = result.harm.line(result.repair)
        parts += [f"**{line}**" if result.harm.fell_back else line[:1].upper() + line[1:] + ".", ""]
    if doc["inputs"]:
        parts += ["Inputs: " + ", ".join(f"{role} = `{path}`" for role, path in doc["inputs"].items()), ""]
    parts += ["## B / B' / G", ""]
    parts += [summary_table(result), "", SUMMARY_NOTE, ""] if result.data else ["No data given: models only.", ""]
    detection = detection_table(result)
    if detection is not None:
        parts += ["## Detection", "", detection, "", DETECTION_NOTE, ""]
    if curve is not None:
        parts += ["## Both stopping rules", "", rules_table(result), "",
                  "`crossing` is the lab's rule (first model whose drop is >= X); `within` is the model just "
                  "before it (drop still < X).", "",
                  "## Pruning curve", "", "![curve](curve.png)", "",
                  "One row per step in `curve.csv`; every number in `results.json`.", "",
                  "## Channel activations", "", "![activations](activations.png)", "",
                  f"{doc['dead_channels']} of {curve.num_channels} channels have mean activation 0 on clean "
                  "validation data; pruning them changes nothing.", ""]
    parts += scan_parts or []
    if samples:
        parts += ["## Samples", ""] + [f"![{name}]({name})" for name in samples] + [""]
    parts += ["## Models", "",
              "Saved under `models/`: `repaired_*` is B' (a plain model), `goodnet_*` is G (one file). "
              "Evaluate either with `goodnet eval CLEAN POISONED MODEL`.", ""]
    return "\n".join(parts)
