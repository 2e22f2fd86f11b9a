"""The table of a `goodnet batch` run: one row per model defended (or refused), written as
batch.md, batch.csv, batch.json and the self-contained batch.html, with each model's own defend
output under models/<name>/."""

from __future__ import annotations

import csv
import json
import os
import shutil
from typing import Any

from ..io.output_dir import atomic_directory
from .html_page import write_page
from .tables import cell_text

BATCH_MARKER = "batch.json"
COLUMNS = [
    "name",
    "status",
    "repair",
    "delivered",
    "backdoor",
    "budget",
    "measured_on",
    "b_clean_acc",
    "b_asr",
    "clean_acc",
    "asr",
    "clean_drop",
    "g_clean_acc",
    "g_asr",
    "g_auroc",
    "strip_auroc",
    "scan_b_anomaly",
    "scan_after_anomaly",
    "seconds",
    "model",
    "error",
]
HEADERS = [
    "model",
    "status",
    "repair",
    "delivered",
    "backdoor",
    "clean cost vs budget",
    "measured on",
    "B clean acc",
    "B ASR",
    "B' clean acc",
    "B' ASR",
    "clean drop",
    "G clean acc",
    "G ASR",
    "G AUROC",
    "STRIP AUROC",
    "B anomaly index",
    "B' anomaly index",
    "time (s)",
]


def batch_row(name: str, model: str, document: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One model's row, from its results.json: test data when given, else validation data."""
    first = document["models"][0] if document.get("models") else None
    metrics = first["metrics"] if first else {}
    clean_role = "clean_test" if "clean_test" in metrics else ("clean_valid" if "clean_valid" in metrics else None)
    poisoned_role = next((r for r in ("poisoned_test", "poisoned_valid") if r in metrics), None)

    def value(role, key):
        return None if role is None else metrics[role][key]

    b_clean, clean = value(clean_role, "backdoored"), value(clean_role, "repaired")
    harm = document.get("do_no_harm") or {}
    scans = document.get("scan") or {}
    scan_names = list(scans)
    detection = (first or {}).get("detection") or {}
    verdict = (first or {}).get("verdict") or {}
    return {
        "name": name,
        "model": model,
        "status": "B unchanged" if harm.get("delivered") == "B unchanged" else "repaired",
        "repair": document["repair"],
        "delivered": harm.get("delivered", first["name"] if first else None),
        "backdoor": verdict.get("backdoor"),
        "budget": verdict.get("budget_status"),
        "measured_on": None if clean_role is None else clean_role.split("_")[1],
        "b_clean_acc": b_clean,
        "b_asr": value(poisoned_role, "backdoored"),
        "clean_acc": clean,
        "asr": value(poisoned_role, "repaired"),
        "clean_drop": None if clean is None else b_clean - clean,
        "g_clean_acc": value(clean_role, "goodnet"),
        "g_asr": value(poisoned_role, "goodnet"),
        "g_auroc": detection.get("auroc"),
        "strip_auroc": (document.get("strip") or {}).get("auroc"),
        "scan_b_anomaly": scans[scan_names[0]]["max_anomaly_index"] if scan_names else None,
        "scan_after_anomaly": scans[scan_names[1]]["max_anomaly_index"] if len(scan_names) > 1 else None,
        "seconds": round(seconds, 3),
        "error": None,
    }


def error_row(name: str, model: str, message: str) -> dict[str, Any]:
    return {**{c: None for c in COLUMNS}, "name": name, "model": model, "status": "refused", "error": message}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return cell_text(value)


def batch_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS[: len(HEADERS)]) + " |")
    return "\n".join(lines)


def batch_markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    failed = [r for r in rows if r["error"]]
    described = ", ".join(f"`{k}={v}`" for k, v in settings.get("repair_settings", {}).items())
    parts = [
        "# goodnet: batch defense",
        "",
        f"{len(rows)} models, repair `{settings['repair']}` ({described or 'its defaults'}); "
        f"{len(rows) - len(failed)} defended, {len(failed)} refused.",
        "",
        batch_table(rows),
        "",
        "Accuracy and ASR in %, on the test data where a model's row gave them, else on its validation "
        "data (`measured on`). Clean drop = B's clean accuracy minus B''s. Each model's full report is in "
        "`models/<name>/report.html` (and report.md, results.json, the models).",
        "",
    ]
    if failed:
        parts += ["## Refused", ""] + [f"- `{r['name']}` ({r['model']}): {r['error']}" for r in failed] + [""]
    return "\n".join(parts)


def write_batch(out_dir: str, rows: list[dict[str, Any]], outputs: dict[str, str], settings: dict[str, Any]) -> None:
    """The batch directory, atomically: the table in four forms and every model's defend output
    (copied from `outputs`, name -> the folder its cell wrote, which stay until the caller removes
    them: a write that fails half-way loses nothing, and the next run resumes)."""
    with atomic_directory(out_dir, marker=BATCH_MARKER) as stage:
        os.makedirs(os.path.join(stage, "models"))
        for name, folder in outputs.items():
            if os.path.isdir(folder):
                shutil.copytree(folder, os.path.join(stage, "models", name))
        with open(os.path.join(stage, "batch.md"), "w") as f:
            f.write(batch_markdown(rows, settings))
        with open(os.path.join(stage, "batch.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v))
                        for k, v in row.items()
                        if k in COLUMNS
                    }
                )
        with open(os.path.join(stage, BATCH_MARKER), "w") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=2)
            f.write("\n")
        write_page(stage, "batch.md", "batch.html", "goodnet: batch defense")


__all__ = ["BATCH_MARKER", "batch_markdown", "batch_row", "batch_table", "error_row", "write_batch"]
