"""The report of one repair, rendered from its Measurement: results.json (the public schema, see
results.py), metrics.csv, report.md (and the same as one self-contained report.html), timings.json,
sample images, and, when the repair selected from a pruning curve, curve.csv, curve.png,
activations.png and the rules table. It writes into a staging folder it is given and never builds
or saves a model (goodnet.outputs does both, atomically)."""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from ..errors import one_line
from ..measure.measurement import CURVE_COLUMNS, Measurement
from ..measure.scores import ROLE_METRICS
from ..models.goodnet import goodnet_labels
from .html_page import write_page
from .plots import plot_activations, plot_curve, plot_samples
from .results import results_document
from .scan_report import scan_figures, scan_markdown
from .tables import (
    DETECTION_NOTE,
    ORACLE_NOTE,
    RELEARN_NOTE,
    SUMMARY_NOTE,
    VERDICT_NOTE,
    detection_table,
    forced_note,
    forced_past_sanity,
    pruned_summary,
    relearning_table,
    rules_table,
    summary_table,
)


def _json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def _csv(path: str, columns: list[str], rows: list[dict[str, Any]], digits: int) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if v is None else (round(v, digits) if isinstance(v, float) else v)) for k, v in row.items()}
            )


def write_report(
    stage: str, result: Measurement, files: dict[str, dict[str, str]], scans: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Render `result` into the folder `stage` (`files[model name]`: the model files written for
    that B'; `scans`: trigger scans by model name, B first); return the results.json document."""
    doc = results_document(result, files)
    if scans:
        doc["scan"] = {name: scan.to_json() for name, scan in scans.items()}
    _json(os.path.join(stage, "results.json"), doc)
    metric_rows = [
        {"model": m["name"], "data": role, **values} for m in doc["models"] for role, values in m["metrics"].items()
    ]
    _csv(os.path.join(stage, "metrics.csv"), ["model", "data", *ROLE_METRICS], metric_rows, 4)
    if result.curve is not None:
        rows = list(result.curve_rows)
        _csv(os.path.join(stage, "curve.csv"), CURVE_COLUMNS, rows, 6)
        plot_curve(result.curve, rows, os.path.join(stage, "curve.png"))
        plot_activations(result.curve, os.path.join(stage, "activations.png"))
    figures = _write_samples(stage, result)
    scan_parts = []
    if scans:
        value_range = result.data["clean_valid"].value_range
        scan_files = [
            name
            for i, (title, scan) in enumerate(scans.items())
            for name in scan_figures(stage, scan, value_range, "b" if i == 0 else f"b_prime_{i}", title)
        ]
        scan_parts = scan_markdown(scans, scan_files)
    with open(os.path.join(stage, "report.md"), "w") as f:
        f.write(report_markdown(result, doc, figures, scan_parts))
    write_page(stage, "report.md", "report.html", f"goodnet: repair {result.repair.name}")
    _json(os.path.join(stage, "timings.json"), {k: round(v, 4) for k, v in result.timings.items()})
    return doc


def _write_samples(stage: str, result: Measurement) -> list[str]:
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
        plot_samples(
            result.data[role],
            result.backdoored[role],
            g,
            result.extra_class,
            f"{role.replace('_', ' ')} (G of B' {first.name})",
            os.path.join(stage, name),
            poisoned=kind == "poisoned",
        )
        names.append(name)
    return names


def report_markdown(
    result: Measurement, doc: dict[str, Any], samples: list[str], scan_parts: list[str] | None = None
) -> str:
    repair, curve = result.repair, result.curve
    settings = ", ".join(f"`{k}={v}`" for k, v in doc["settings"].items())
    parts = [f"# goodnet: repair `{repair.name}`", ""]
    if repair.oracle:
        parts += [f"**{ORACLE_NOTE}**", ""]
    if forced_past_sanity(result):
        parts += [f"**{forced_note(result)}**", ""]
    if result.verdicts:
        parts += ["## Verdict", ""] + [f"- {v.line()}" for v in result.verdicts] + [""]
        if result.next_step is not None:
            parts += [f"**Next step:** {result.next_step.reason}.", ""]
        parts += [VERDICT_NOTE, ""]
    if result.relearning is not None:
        parts += ["## Does the repair hold? (re-learning)", "", relearning_table(result.relearning), ""]
        parts += [RELEARN_NOTE, ""]
    parts += [f"{repair.description[:1].upper()}{repair.description[1:]}.", "", f"Settings: {settings}.", ""]
    if curve is not None:
        parts += [
            f"Pruned layer `{curve.layer}` (cut after `{curve.cut}`), {curve.num_channels} channels, in "
            f"{curve.order_name} order of mean clean-validation activation; budget X in {curve.drop} "
            f"percentage points of clean validation accuracy.",
            "",
        ]
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
        parts += [
            "## Both stopping rules",
            "",
            rules_table(result),
            "",
            "`crossing` is the lab's rule (first model whose drop is >= X); `within` is the model just "
            "before it (drop still < X).",
            "",
            "## Pruning curve",
            "",
            "![curve](curve.png)",
            "",
            "One row per step in `curve.csv`; every number in `results.json`.",
            "",
            "## Channel activations",
            "",
            "![activations](activations.png)",
            "",
            f"{doc['dead_channels']} of {curve.num_channels} channels have mean activation 0 on clean "
            "validation data; pruning them changes nothing.",
            "",
        ]
    parts += scan_parts or []
    if samples:
        parts += ["## Samples", ""] + [f"![{name}]({name})" for name in samples] + [""]
    parts += [
        "## Models",
        "",
        "Saved under `models/`: `repaired_*` is B' (a plain model), `goodnet_*` is G (one file). "
        "Evaluate either with `goodnet eval CLEAN POISONED MODEL`.",
        "",
    ]
    return "\n".join(parts)
