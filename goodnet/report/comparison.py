"""The comparison of repairs over the attack zoo: one table (Markdown, CSV), one plot, all in JSON.

Repairs are judged by the bar: test ASR <= 2 % with clean test accuracy at most 2 points below
B's. BadNets that missed their own bar (test ASR >= 90 %, clean accuracy within 2 points of a clean
model trained the same way) are listed but not scored.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import SettingsError  # noqa: E402
from ..inspection.detection_scores import DetectionScore  # noqa: E402
from ..io.output_dir import atomic_directory  # noqa: E402
from ..measure.measurement import Measurement  # noqa: E402
from ..repairs.base import Repair  # noqa: E402
from ..zoo.badnets import BadNetSettings  # noqa: E402
from ..zoo.catalog import part_of  # noqa: E402
from .html_page import write_page  # noqa: E402
from .tables import cell_text  # noqa: E402

ASR_LIMIT = 2.0
ACCURACY_GAP = 2.0
COLUMNS = [
    "badnet",
    "repair",
    "oracle",
    "b_clean_acc",
    "b_asr",
    "clean_acc",
    "asr",
    "clean_drop",
    "g_clean_acc",
    "g_asr",
    "detection",
    "false_alarm",
    "g_auroc",
    "g_tpr",
    "delivered",
    "seconds",
    "meets_bar",
]
HEADERS = [
    "BadNet (attack/arch/range/poison/seed)",
    "repair",
    "uses poisoned data",
    "B clean acc",
    "B ASR",
    "B' clean acc",
    "B' ASR",
    "clean drop",
    "G clean acc",
    "G ASR",
    "G detection",
    "G false alarms",
    "G AUROC",
    "G TPR at 5 % FPR",
    "delivered",
    "time (s)",
    "ASR <= 2 and drop <= 2",
]
EXTRA = [
    "attack",
    "arch",
    "dataset",
    "scale",
    "poison_rate",
    "seed",
    "part",
    "badnet_meets_bar",
    "requested_within_budget",
    "strip_auroc",
    "strip_tpr",
    "scan_b_anomaly",
    "scan_b_suspect",
    "scan_target",
    "scan_hit",
    "scan_after_anomaly",
    "scan_after_suspect",
    "relearn_asr",
    "relearn_reference_asr",
    "relearn_state",
    "notice",
]


PROTOCOL_NOTE = (
    "Each defense named after a paper runs at its paper's and reference code's settings (see the "
    "conformance page); goodnet's own repairs' settings were chosen on the development part of goodnet's "
    "built-in zoo (seed 0), on clean validation data, and frozen in code; scores on an evaluation part "
    "choose nothing. Per zoo part and repair: BadNets (among those "
    "that met their own bar) repaired to the bar, test ASR and clean test drop (median, worst), how "
    "often the do-no-harm guard fell back, and the total repair time."
)


DETECTION_TEXT = (
    "AUROC and TPR at 5 % FPR on the test sets, clean inputs negative and poisoned inputs positive. "
    "G's score is B''s doubt in B's answer (1 - P_B'(B's label)); STRIP's is minus the mean entropy "
    "of B's predictions on 20 blends with clean validation images (at most 2,000 inputs per set)."
)


def comparison_row(
    badnet: BadNetSettings,
    badnet_meets_bar: bool,
    result: Measurement,
    strip: DetectionScore | None = None,
    part: str | None = None,
) -> dict[str, Any]:
    """The table row of one repair on one zoo BadNet: its (first) B' on the test sets (and STRIP's
    detection on B, the same for every repair of that BadNet, when measured)."""
    kind = badnet.label()
    if not result.models:
        raise SettingsError(
            f"the {result.repair.name} repair handed over no B' on the {kind} BadNet; compare needs one"
        )
    metrics = result.models[0].metrics
    test, poisoned = metrics["clean_test"], metrics["poisoned_test"]
    drop = result.models[0].test_drop
    meets = poisoned["repaired"] <= ASR_LIMIT and drop <= ACCURACY_GAP
    harm = result.harm
    g_detection = result.models[0].detection
    return {
        "badnet": kind,
        "attack": badnet.kind,
        "arch": badnet.arch,
        "dataset": badnet.dataset,
        "scale": badnet.scale if badnet.bundled else None,
        "poison_rate": badnet.poison_rate,
        "seed": badnet.seed,
        "part": part or part_of(badnet),
        "badnet_meets_bar": bool(badnet_meets_bar),
        "repair": result.repair.name,
        "oracle": result.repair.oracle,
        "b_clean_acc": test["backdoored"],
        "b_asr": poisoned["backdoored"],
        "clean_acc": test["repaired"],
        "asr": poisoned["repaired"],
        "clean_drop": drop,
        "g_clean_acc": test["goodnet"],
        "g_asr": poisoned["goodnet"],
        "detection": poisoned["flagged"],
        "false_alarm": test["flagged"],
        "g_auroc": None if g_detection is None else g_detection.auroc,
        "g_tpr": None if g_detection is None else g_detection.tpr,
        "strip_auroc": None if strip is None else strip.auroc,
        "strip_tpr": None if strip is None else strip.tpr,
        "delivered": "–" if harm is None else harm.delivered,
        "requested_within_budget": None if harm is None else harm.requested_within_budget,
        "seconds": result.seconds,
        "meets_bar": bool(meets),
        "notice": result.notice,
        **_relearn_fields(result),
    }


def _relearn_fields(result: Measurement) -> dict[str, Any]:
    """The re-learning test's numbers for the row (nothing when it was not run): B''s ASR after
    tuning, the clean reference's, and the judgement."""
    test = result.relearning
    if test is None:
        return {}
    mine = test.models[0]
    return {
        "relearn_asr": mine.asr_after.value,
        "relearn_reference_asr": None if test.reference is None else test.reference.asr_after.value,
        "relearn_state": mine.state if test.reference_problem is None else "not judged",
    }


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per zoo part and repair, over the BadNets that met their own bar: how many it repairs to the
    bar, median and worst ASR and clean drop, how often the guard fell back, total seconds. Parts
    are never pooled: development scores chose settings, evaluation scores must stand alone."""
    out = []
    for part, repair in dict.fromkeys((r["part"], r["repair"]) for r in rows):
        mine = [r for r in rows if r["part"] == part and r["repair"] == repair and r["badnet_meets_bar"]]
        if not mine:
            continue
        asr, drop = [r["asr"] for r in mine], [r["clean_drop"] for r in mine]
        out.append(
            {
                "part": part,
                "repair": repair,
                "oracle": mine[0]["oracle"],
                "badnets": len(mine),
                "meets_bar": sum(r["meets_bar"] for r in mine),
                "median_asr": float(np.median(asr)),
                "worst_asr": max(asr),
                "median_drop": float(np.median(drop)),
                "worst_drop": max(drop),
                "fell_back": sum(r["delivered"] not in ("as asked", "–") for r in mine),
                "median_g_auroc": _median([r.get("g_auroc") for r in mine]),
                "seconds": sum(r["seconds"] for r in mine),
            }
        )
    return out


SUMMARY_COLUMNS = [
    "part",
    "repair",
    "oracle",
    "meets_bar",
    "median_asr",
    "worst_asr",
    "median_drop",
    "worst_drop",
    "median_g_auroc",
    "fell_back",
    "seconds",
]
SUMMARY_HEADERS = [
    "zoo part",
    "repair",
    "uses poisoned data",
    "BadNets repaired to the bar",
    "median ASR",
    "worst ASR",
    "median clean drop",
    "worst clean drop",
    "median G AUROC",
    "guard fell back",
    "total time (s)",
]


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.median(known)) if known else None


def strip_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per BadNet: STRIP's detection on B, beside the best and median G detection of the
    repairs on it (the input-level baseline against which G's score is read)."""
    out = []
    for badnet in dict.fromkeys(r["badnet"] for r in rows):
        mine = [r for r in rows if r["badnet"] == badnet]
        g = [r for r in mine if r.get("g_auroc") is not None]
        best = max(g, key=lambda r: r["g_auroc"], default=None)
        out.append(
            {
                "badnet": badnet,
                "part": mine[0]["part"],
                "badnet_meets_bar": mine[0]["badnet_meets_bar"],
                "strip_auroc": mine[0].get("strip_auroc"),
                "strip_tpr": mine[0].get("strip_tpr"),
                "best_g": None if best is None else best["repair"],
                "best_g_auroc": None if best is None else best["g_auroc"],
                "best_g_tpr": None if best is None else best["g_tpr"],
                "median_g_auroc": _median([r["g_auroc"] for r in g]),
            }
        )
    return out


STRIP_COLUMNS = ["badnet", "strip_auroc", "strip_tpr", "best_g", "best_g_auroc", "best_g_tpr", "median_g_auroc"]
STRIP_HEADERS = [
    "BadNet",
    "STRIP AUROC",
    "STRIP TPR at 5 % FPR",
    "best G (repair)",
    "its AUROC",
    "its TPR at 5 % FPR",
    "median G AUROC over repairs",
]


def strip_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(STRIP_HEADERS) + " |", "|" + "---|" * len(STRIP_HEADERS)]
    for row in strip_rows(rows):
        cells = [_cell(row[c], c) for c in STRIP_COLUMNS]
        if not row["badnet_meets_bar"]:
            cells[0] += " (missed the BadNet bar)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(SUMMARY_HEADERS) + " |", "|" + "---|" * len(SUMMARY_HEADERS)]
    for row in summary_rows(rows):
        cells = [_cell(row[c], c) for c in SUMMARY_COLUMNS]
        cells[3] = f"{row['meets_bar']} of {row['badnets']}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "–"
    if column == "seconds":
        return f"{value:.1f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def notice_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cell whose repair said it could not act on the BadNet (B' is B, or nearly)."""
    return [f"- {r['badnet']}: {r['notice']}" for r in rows if r.get("notice")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = [_cell(row[c], c) for c in COLUMNS]
        if row["oracle"]:
            cells[1] += " (oracle)"
        if not row["badnet_meets_bar"]:
            cells[0] += " (missed the BadNet bar: not scored)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(rows: list[dict[str, Any]], path: str) -> None:
    kinds = list(dict.fromkeys(r["badnet"] for r in rows))
    repairs = list(dict.fromkeys(r["repair"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(12, 1.1 * len(kinds)), 5.5))
    width = 0.8 / max(len(repairs), 1)
    for i, repair in enumerate(repairs):
        for ax, key in zip(axes, ("asr", "clean_acc")):
            values = [next((r[key] for r in rows if r["badnet"] == k and r["repair"] == repair), 0.0) for k in kinds]
            ax.bar([j + i * width for j in range(len(kinds))], values, width, label=repair)
    for ax, title in zip(axes, ("B' test ASR (%) - lower is better", "B' clean test accuracy (%)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))], kinds, rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(ASR_LIMIT, color="k", linestyle=":", linewidth=1)
    low = min([r["clean_acc"] for r in rows] + [100.0])
    axes[1].set_ylim(max(0.0, low - 5), 100)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(repairs), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scan_table(rows: list[dict[str, Any]]) -> str | None:
    """Per BadNet (when compare ran with --scan): the true target, the scan's top suspect on B and its
    anomaly index, and the anomaly index after every repair, marked where the repair met the bar."""
    scanned = [r for r in rows if r.get("scan_b_anomaly") is not None]
    if not scanned:
        return None
    lines = [
        "| BadNet | true target | B: top suspect | B: anomaly index | scan named the target | "
        "anomaly index after each repair (* met the bar) |",
        "|---|---|---|---|---|---|",
    ]
    for badnet in dict.fromkeys(r["badnet"] for r in scanned):
        mine = [r for r in scanned if r["badnet"] == badnet]
        first = mine[0]
        after = ", ".join(f"{r['repair']} {r['scan_after_anomaly']:.2f}{'*' if r['meets_bar'] else ''}" for r in mine)
        hit = "– (all-to-all)" if first["scan_target"] is None else _cell(first["scan_hit"], "")
        lines.append(
            f"| {badnet}{'' if first['badnet_meets_bar'] else ' (missed the BadNet bar)'} | "
            f"{_cell(first['scan_target'], '')} | {_cell(first['scan_b_suspect'], '')} | "
            f"{first['scan_b_anomaly']:.2f} | {hit} | {after} |"
        )
    single = [
        r
        for r in dict((r["badnet"], r) for r in scanned if r["badnet_meets_bar"]).values()
        if r["scan_target"] is not None
    ]
    cleaned = [r for r in scanned if r["meets_bar"] and r["badnet_meets_bar"]]
    lines += [
        "",
        f"Scan hit rate on the single-target BadNets that met their bar: "
        f"{sum(bool(r['scan_hit']) for r in single)} of {len(single)}. After a repair that met the bar, the "
        f"anomaly index was below 2 in {sum(r['scan_after_anomaly'] < 2 for r in cleaned)} of {len(cleaned)} "
        f"cells.",
    ]
    return "\n".join(lines)


RELEARN_TEXT = (
    "Each B' and its BadNet's clean reference model (the same architecture and training, nothing "
    "poisoned) are tuned on the clean validation images with a few replaced by poisoned ones, as the "
    "Retuning Attack of Min et al. (NeurIPS 2024) tunes a purified model; the ASR is on the poisoned "
    "test images after tuning. A B' more than the margin past the clean reference after tuning, whose "
    "ASR the tuning raised, holds a dormant backdoor; `holds` means it re-learns no faster than a "
    "clean model."
)


def relearn_table(rows: list[dict[str, Any]]) -> str | None:
    """Per repair and BadNet (when compare ran with --relearn): B''s ASR after the repair and after
    re-learning, the clean reference's after re-learning, and the judgement; then per repair, on
    how many BadNets that met their bar it holds."""
    tested = [r for r in rows if "relearn_asr" in r]
    if not tested:
        return None
    lines = [
        "| BadNet | repair | ASR after repair | ASR after re-learning | clean reference after re-learning | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in tested:
        name = r["badnet"] + ("" if r["badnet_meets_bar"] else " (missed the BadNet bar)")
        lines.append(
            f"| {name} | {r['repair']} | {r['asr']:.2f} | {r['relearn_asr']:.2f} | "
            f"{_cell(r['relearn_reference_asr'], 'relearn_reference_asr')} | {r['relearn_state'] or '–'} |"
        )
    states = ("holds", "dormant backdoor", "not removed", "not judged")
    lines += [
        "",
        "| repair | holds on | dormant backdoor on | not removed on | not judged on |",
        "|---|---|---|---|---|",
    ]
    for repair in dict.fromkeys(r["repair"] for r in tested):
        mine = [r for r in tested if r["repair"] == repair and r["badnet_meets_bar"]]
        counts = [sum((r["relearn_state"] or "not judged") == state for r in mine) for state in states]
        lines.append(f"| {repair} | " + " | ".join(f"{c} of {len(mine)}" for c in counts) + " |")
    return "\n".join(lines)


def _relearn_section(rows: list[dict[str, Any]]) -> str:
    table = relearn_table(rows)
    return (
        "" if table is None else ("## Does the repair hold? (re-learning)\n\n" + table + "\n\n" + RELEARN_TEXT + "\n\n")
    )


def _scan_section(rows: list[dict[str, Any]]) -> str:
    table = scan_table(rows)
    return "" if table is None else ("## Trigger scan (Neural Cleanse, clean data only)\n\n" + table + "\n\n")


def config_text(config: dict[str, Any]) -> str:
    """Where a configured zoo came from: its file, parts' seeds and datasets as read."""
    seeds = ", ".join(f"{part} {', '.join(map(str, s))}" for part, s in config["seeds"].items())
    lines = [f"Zoo configuration `{cell_text(os.path.basename(config['path']))}`: seeds {seeds}."]
    for name, d in config["datasets"].items():
        lines.append(
            f"Dataset {cell_text(name)}: {d['images']} images of {d['classes']} classes, "
            f"{' x '.join(map(str, d['image_shape']))} (C x H x W), range {d['range'][0]:g}..{d['range'][1]:g} "
            f"({d['range_from']}), per class {'/'.join(map(str, d['per_class']))} train/valid/test "
            f"({d['per_class_from']}), read as {d['format']}, sha256 {d['sha256'][:12]}."
        )
    return "\n".join(lines) + "\n\n"


def write_comparison(
    out_dir: str,
    rows: list[dict[str, Any]],
    zoo: dict[str, Any],
    repairs: Sequence[Repair],
    runner: dict[str, Any] | None = None,
    relearn: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """comparison.md, .html, .csv, .png and .json in `out_dir`, atomically; `relearn`: the
    re-learning test's settings when it ran; `config`: the zoo configuration file's description
    when the BadNets came from one."""
    with atomic_directory(out_dir, marker="comparison.json") as stage:
        with open(os.path.join(stage, "comparison.md"), "w") as f:
            ran = (
                ""
                if not runner
                else (
                    f"Ran {runner['runner']}, {runner['threads_per_cell']} PyTorch thread(s) per cell, "
                    f"on {runner.get('device', 'cpu')}.\n\n"
                )
            )
            f.write(
                f"# goodnet: repairs on {'the attack zoo' if config is None else cell_text(config['name'])}\n\n"
                + PROTOCOL_NOTE
                + "\n\n"
                + ("" if config is None else config_text(config))
                + ran
                + "## Per repair\n\n"
                + summary_table(rows)
                + "\n\n## Detection: G against STRIP\n\n"
                + strip_table(rows)
                + "\n\n"
                + DETECTION_TEXT
                + "\n\n"
                + _scan_section(rows)
                + _relearn_section(rows)
                + "## Every BadNet\n\n"
                + markdown_table(rows)
                + "\n\n"
                "ASR and accuracy are on test data; G flags inputs where B and B' disagree "
                "(detection: share of poisoned test inputs flagged; false alarms: share of clean "
                "test inputs flagged). Oracle repairs use poisoned validation data.\n\n"
                + (
                    "Repairs that could not act:\n\n" + "\n".join(notice_lines(rows)) + "\n\n"
                    if notice_lines(rows)
                    else ""
                )
                + "![comparison](comparison.png)\n"
            )
        with open(os.path.join(stage, "comparison.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS + EXTRA)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        plot_comparison(rows, os.path.join(stage, "comparison.png"))
        write_page(stage, "comparison.md", "comparison.html", "goodnet: repairs on the attack zoo")
        with open(os.path.join(stage, "comparison.json"), "w") as f:
            json.dump(
                {
                    "rows": rows,
                    "summary": summary_rows(rows),
                    "detection": strip_rows(rows),
                    "zoo": zoo,
                    "badnets": list(zoo),
                    "repairs": [{"name": r.name, "settings": r.settings()} for r in repairs],
                    "bar": {"asr_at_most": ASR_LIMIT, "clean_drop_at_most": ACCURACY_GAP},
                    "runner": runner,
                    "relearn": relearn,
                    "config": config,
                },
                f,
                indent=2,
            )
            f.write("\n")
