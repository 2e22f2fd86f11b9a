"""What `goodnet scan` leaves on disk, and the scan section of `goodnet defend --scan`'s report:
scan.json (every label's mask norm, attack success and anomaly index), report.md, the reversed
triggers as images and the mask norms as a bar chart."""

from __future__ import annotations

import json
import os
from typing import Any

from ..io.output_dir import atomic_directory
from .html_page import write_page
from .plots import plot_mask_norms, plot_triggers

SCAN_MARKER = "scan.json"
SCAN_NOTE = (
    "Neural Cleanse (Wang et al. 2019): for every label, the smallest mask (with a pattern) that sends "
    "clean images to that label. A backdoor target needs a much smaller mask than the other labels; the "
    "anomaly index is how many median absolute deviations (x 1.4826) a label's mask norm lies below the "
    "median, and labels above 2 are suspected targets. No poisoned data is used. An all-to-all backdoor, "
    'or a trigger as large as an image, has no single outlier: "no single target found" does not prove '
    "a model clean."
)


def scan_figures(stage: str, scan, value_range: tuple[float, float], stem: str, title: str) -> list[str]:
    """Write `{stem}_triggers.png` and `{stem}_norms.png` under `stage`; return their names."""
    names = [f"{stem}_triggers.png", f"{stem}_norms.png"]
    plot_triggers(scan, value_range, f"reversed triggers: {title}", os.path.join(stage, names[0]))
    plot_mask_norms(scan, f"mask norm per label: {title}", os.path.join(stage, names[1]))
    return names


def scan_table(scans: dict[str, Any]) -> str:
    """One row per scanned model: its verdict, largest anomaly index and suspected targets."""
    lines = [
        "| model | largest anomaly index | suspected targets | smallest mask (label, L1 norm) | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, scan in scans.items():
        smallest = int(min(range(len(scan.norms)), key=lambda i: scan.norms[i]))
        suspects = ", ".join(str(int(t)) for t in scan.suspects) or "none"
        lines.append(
            f"| {name} | {scan.max_anomaly:.2f} | {suspects} | {int(scan.labels[smallest])}, "
            f"{scan.norms[smallest]:.1f} | {scan.verdict} |"
        )
    return "\n".join(lines)


def scan_markdown(scans: dict[str, Any], figures: list[str], heading: str = "##") -> list[str]:
    parts = [f"{heading} Trigger scan (no poisoned data)", "", scan_table(scans), "", SCAN_NOTE, ""]
    return parts + [f"![{name}]({name})" for name in figures] + [""]


def write_scan(
    out_dir: str,
    scan,
    value_range: tuple[float, float],
    inputs: dict[str, Any],
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole `goodnet scan` output directory, written atomically; returns scan.json
    (`provenance`: what produced it, as results.json records it)."""
    with atomic_directory(out_dir, marker=SCAN_MARKER) as stage:
        # the scanned file may be B, a B' or anyone's model: it is named by its file, never "B"
        name = f"`{os.path.basename(str(inputs.get('model', 'model')))}`"
        figures = scan_figures(stage, scan, value_range, "model", name)
        doc = {"inputs": inputs, "value_range": list(value_range), "scan": scan.to_json(), "provenance": provenance}
        with open(os.path.join(stage, SCAN_MARKER), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        with open(os.path.join(stage, "report.md"), "w") as f:
            f.write(
                "\n".join(
                    [
                        "# goodnet: trigger scan",
                        "",
                        "Inputs: " + ", ".join(f"{k} = `{v}`" for k, v in inputs.items()),
                        "",
                    ]
                    + scan_markdown({name: scan}, figures)
                )
            )
        write_page(stage, "report.md", "report.html", "goodnet: trigger scan")
    return doc
