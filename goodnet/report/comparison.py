"""The comparison of repairs over the attack zoo: one table (Markdown, CSV), one plot, all in JSON.

Clean-data repairs are judged by the bar: test ASR <= 1 % with clean test accuracy at most 2
points below B's.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import SettingsError  # noqa: E402
from ..io.output_dir import atomic_directory  # noqa: E402
from ..repairs.base import Repair  # noqa: E402
from ..repairs.runner import RepairResult  # noqa: E402

ASR_LIMIT = 1.0
ACCURACY_GAP = 2.0
COLUMNS = ["attack", "repair", "oracle", "b_clean_acc", "b_asr", "clean_acc", "asr", "g_clean_acc", "g_asr",
           "detection", "false_alarm", "seconds", "meets_bar"]
HEADERS = ["attack", "repair", "uses poisoned data", "B clean acc", "B ASR", "B' clean acc", "B' ASR",
           "G clean acc", "G ASR", "G detection", "G false alarms", "time (s)", "ASR <= 1 and acc within 2"]


def comparison_row(kind: str, result: RepairResult) -> dict[str, Any]:
    """The table row of one repair on one zoo BadNet: its (first) B' on the test sets."""
    if not result.models:
        raise SettingsError(f"the {result.repair.name} repair handed over no B' on the {kind} BadNet; "
                            f"compare needs one")
    metrics = result.metrics(result.models[0].labels)
    test, poisoned = metrics["clean_test"], metrics["poisoned_test"]
    meets = poisoned["repaired"] <= ASR_LIMIT and test["repaired"] >= test["backdoored"] - ACCURACY_GAP
    return {"attack": kind, "repair": result.repair.name, "oracle": result.repair.oracle,
            "b_clean_acc": test["backdoored"], "b_asr": poisoned["backdoored"],
            "clean_acc": test["repaired"], "asr": poisoned["repaired"],
            "g_clean_acc": test["goodnet"], "g_asr": poisoned["goodnet"],
            "detection": poisoned["flagged"], "false_alarm": test["flagged"],
            "seconds": result.seconds, "meets_bar": bool(meets)}


def _cell(value: Any, column: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column == "seconds":
        return f"{value:.1f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = [_cell(row[c], c) for c in COLUMNS]
        if row["oracle"]:
            cells[1] += " (oracle)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(rows: list[dict[str, Any]], path: str) -> None:
    kinds = list(dict.fromkeys(r["attack"] for r in rows))
    repairs = list(dict.fromkeys(r["repair"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(len(repairs), 1)
    for i, repair in enumerate(repairs):
        for ax, key in zip(axes, ("asr", "clean_acc")):
            values = [next((r[key] for r in rows if r["attack"] == k and r["repair"] == repair), 0.0) for k in kinds]
            ax.bar([j + i * width for j in range(len(kinds))], values, width, label=repair)
    for ax, title in zip(axes, ("B' test ASR (%) - lower is better", "B' clean test accuracy (%)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))], kinds)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(ASR_LIMIT, color="k", linestyle=":", linewidth=1)
    low = min([r["clean_acc"] for r in rows] + [100.0])
    axes[1].set_ylim(max(0.0, low - 5), 100)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(repairs), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(out_dir: str, rows: list[dict[str, Any]], zoo: dict[str, Any],
                     repairs: Sequence[Repair]) -> None:
    with atomic_directory(out_dir, marker="comparison.json") as stage:
        with open(os.path.join(stage, "comparison.md"), "w") as f:
            f.write("# goodnet: repairs on the attack zoo\n\n" + markdown_table(rows) + "\n\n"
                    "ASR and accuracy are on test data; G flags inputs where B and B' disagree "
                    "(detection: share of poisoned test inputs flagged; false alarms: share of clean "
                    "test inputs flagged). Oracle repairs use poisoned validation data.\n\n"
                    "![comparison](comparison.png)\n")
        with open(os.path.join(stage, "comparison.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        plot_comparison(rows, os.path.join(stage, "comparison.png"))
        with open(os.path.join(stage, "comparison.json"), "w") as f:
            json.dump({"rows": rows, "zoo": zoo, "kinds": list(zoo),
                       "repairs": [{"name": r.name, "settings": r.settings()} for r in repairs],
                       "bar": {"asr_at_most": ASR_LIMIT, "accuracy_within": ACCURACY_GAP}}, f, indent=2)
            f.write("\n")


