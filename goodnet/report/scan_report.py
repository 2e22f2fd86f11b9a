"""What `goodnet scan` leaves on disk, and the scan section of `goodnet defend --scan`'s report:
scan.json (every label's mask norm, attack success and anomaly index), report.md, the reversed
triggers as images and the mask norms as a bar chart."""

from __future__ import annotations

import json
import os
from typing import Any

from ..io.output_dir import atomic_directory
from ..measure.scanner_population import save_calibrations
from .html_page import write_page
from .plots import plot_mask_norms, plot_triggers
from .tables import cell_text

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


MARGIN_NOTE = (
    "MM-BD (Wang et al. 2024): for every label, the largest margin between its logit and the next "
    "largest that any input of the valid range can reach, found by gradient ascent from 30 random "
    "images. A backdoor target reaches an abnormally large margin; the p-value of the largest under a "
    "gamma distribution fitted to the other labels' flags a backdoor at 0.05 or below. It uses no data "
    "and assumes no trigger shape."
)
PROBABILITY_NOTE = (
    "Probability of a backdoor: each scanner's score (Neural Cleanse: the largest anomaly index; MM-BD: "
    "-log10 of its p-value) through a Platt sigmoid fitted on a population of models with known "
    "answers ({fitted_on}). It is calibrated for models like those; on others, read it as a rough guide."
)


def margin_table(scans: dict[str, Any]) -> str:
    lines = ["| model | largest margin (label) | p-value | verdict |", "|---|---|---|---|"]
    for name, scan in scans.items():
        top = float(max(scan.statistics))
        lines.append(f"| {name} | {top:.2f} ({scan.target}) | {scan.p_value:.3g} | {scan.verdict} |")
    return "\n".join(lines)


def probability_lines(probabilities: dict[str, float], fitted_on: str | None) -> list[str]:
    """One line per scanner: its calibrated probability that the model is backdoored, and on what
    population the calibration was fitted."""
    titles = {"nc": "Neural Cleanse", "mm-bd": "MM-BD"}
    lines = [f"probability of a backdoor ({titles.get(name, name)}): {p:.2f}" for name, p in probabilities.items()]
    return lines + ([f"(calibrated on {fitted_on})"] if fitted_on and lines else [])


def write_scan(
    out_dir: str,
    scans: dict[str, Any],
    value_range: tuple[float, float],
    inputs: dict[str, Any],
    provenance: dict[str, Any] | None = None,
    probabilities: dict[str, float] | None = None,
    calibrations: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole `goodnet scan` output directory, written atomically; returns scan.json. `scans`:
    by scanner, 'nc' (a TriggerScan) and/or 'mm-bd' (a MarginScan); `probabilities`: each scanner's
    calibrated probability of a backdoor, from `calibrations`; `provenance`: what produced it."""
    probabilities = probabilities or {}
    calibrations = calibrations or {}
    with atomic_directory(out_dir, marker=SCAN_MARKER) as stage:
        # the scanned file may be B, a B' or anyone's model: it is named by its file, never "B"
        name = f"`{os.path.basename(str(inputs.get('model', 'model')))}`"
        doc: dict[str, Any] = {"inputs": inputs, "value_range": list(value_range)}
        doc["probability"] = {k: round(float(v), 4) for k, v in probabilities.items()}
        doc["calibration"] = {k: c.to_json() for k, c in calibrations.items()}
        parts = ["# goodnet: backdoor scan", "", "Inputs: " + ", ".join(f"{k} = `{v}`" for k, v in inputs.items()), ""]
        if probabilities:
            parts += ["## Probability of a backdoor", ""]
            parts += [f"- {line}" for line in probability_lines(probabilities, None)]
            fitted_on = next(iter(calibrations.values())).fitted_on if calibrations else "none"
            parts += ["", PROBABILITY_NOTE.format(fitted_on=fitted_on), ""]
        if "nc" in scans:
            figures = scan_figures(stage, scans["nc"], value_range, "model", name)
            doc["scan"] = scans["nc"].to_json()
            parts += scan_markdown({name: scans["nc"]}, figures)
        if "mm-bd" in scans:
            doc["mm_bd"] = scans["mm-bd"].to_json()
            parts += ["## Maximum-margin scan (MM-BD, no data)", "", margin_table({name: scans["mm-bd"]}), ""]
            parts += [MARGIN_NOTE, ""]
        doc["provenance"] = provenance
        with open(os.path.join(stage, SCAN_MARKER), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        with open(os.path.join(stage, "report.md"), "w") as f:
            f.write("\n".join(parts))
        write_page(stage, "report.md", "report.html", "goodnet: backdoor scan")
    return doc


POPULATION_MARKER = "population.json"
POPULATION_NOTE = (
    "Each scanner gives every model a score (Neural Cleanse: the largest anomaly index; MM-BD: -log10 of "
    "its p-value). ROC-AUC: the chance that a random backdoored model scores above a random clean one "
    "(1 separates them perfectly, 0.5 is chance). Cross-entropy: of the calibrated probability against "
    "the truth (natural log; lower is better; 0.693 is a constant 0.5). Flagged: at the scanner's own "
    "operating point (anomaly index above 2; p-value at or below 0.05); 'probability >= 0.5': at the "
    "calibrated operating point instead. Target named: backdoored models with one known target, "
    "flagged with that target as the first suspect."
)
ZOO_NOTE = (
    " All-to-all BadNets have no single target and are left out of 'target named'. Every model trained on poisoned data counts as backdoored, also one whose ASR stayed under the "
    "zoo's 90 % bar (its ASR is listed); the clean models are trained alike with nothing poisoned."
)
MANIFEST_NOTE = (
    " Which models are backdoored, and their targets, are the manifest's answers; a backdoored model "
    "given no `target` is left out of 'target named'."
)


def shown_name(manifest: dict[str, Any] | None) -> str:
    """A manifest's file name for a title, from its file record."""
    path = (manifest or {}).get("path") or "a population manifest"
    return f"`{os.path.basename(str(path))}`"


def population_table(measures: dict[str, dict[str, Any]]) -> str:
    """One row per scanner: its population measures, each with its 95 % interval in brackets."""

    def share(m, count: str, total: str, rate: str) -> str:
        if m[rate] is None:
            return "n/a"
        text = f"{m[count]} of {m[total]} ({m[rate] * 100:.0f} %"
        interval = m.get(rate + "_interval")
        return text + (f"; {interval[0] * 100:.0f}-{interval[1] * 100:.0f} %)" if interval else ")")

    def auc(m) -> str:
        if m["roc_auc"] is None:
            return "n/a"
        interval = m.get("roc_auc_interval")
        return f"{m['roc_auc']:.3f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")

    lines = [
        "| scanner | models (backdoored / clean) | ROC-AUC (95 % interval) | cross-entropy | clean models flagged | "
        "backdoored models flagged | target named | clean, probability >= 0.5 | backdoored, probability >= 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    titles = {"nc": "Neural Cleanse", "mm-bd": "MM-BD"}
    for name, m in measures.items():
        ce = "n/a" if m["cross_entropy"] is None else f"{m['cross_entropy']:.3f}"
        lines.append(
            f"| {titles.get(name, name)} | {m['models']} ({m['backdoored']} / {m['clean']}) | {auc(m)} | {ce} | "
            f"{share(m, 'clean_flagged', 'clean', 'clean_fpr')} | "
            f"{share(m, 'backdoored_flagged', 'backdoored', 'tpr')} | "
            f"{share(m, 'target_named', 'single_target_models', 'target_accuracy')} | "
            f"{share(m, 'calibrated_clean_flagged', 'clean', 'calibrated_clean_fpr')} | "
            f"{share(m, 'calibrated_backdoored_flagged', 'backdoored', 'calibrated_tpr')} |"
        )
    return "\n".join(lines)


def population_rows(
    members, summaries: dict[str, list[Any]], calibrations: dict[str, Any], no_target: str = "all-to-all"
) -> str:
    """One row per model: the truth and each scanner's score, probability and suspects. `no_target`
    says what a backdoored model without a single target is (the zoo's: all-to-all)."""
    names = list(summaries)
    header = "| model | truth | " + " | ".join(f"{n} score | {n} probability | {n} flagged (suspects)" for n in names)
    lines = [header + " |", "|" + "---|" * (2 + 3 * len(names))]
    for i, member in enumerate(members):
        truth = (
            "clean"
            if not member.backdoored
            else (f"backdoored (target {member.target})" if member.target is not None else f"backdoored ({no_target})")
        )
        if member.asr is not None:
            truth += f", ASR {member.asr:.1f} %" + ("" if member.meets_bar in (True, None) else ", under the zoo's bar")
        cells = [f"`{cell_text(member.name)}`" if "`" not in member.name else cell_text(member.name), truth]
        for n in names:
            s = summaries[n][i]
            p = f"{calibrations[n].probability(s.score):.2f}" if n in calibrations else "n/a"
            flagged = ("yes (" + ", ".join(map(str, s.suspects)) + ")") if s.flagged else "no"
            cells += [f"{s.score:.2f}", p, flagged]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_population(
    out_dir: str,
    part: str | None,
    members,
    summaries: dict[str, list[Any]],
    measures: dict[str, dict[str, Any]],
    calibrations: dict[str, Any],
    provenance: dict[str, Any],
    fitted: bool,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`goodnet scan --zoo PART`'s output directory (or `scan --population FILE`'s: `part` None and
    `manifest` the file's record), written atomically: population.json, report.md, report.html,
    and calibration.json when the calibration was fitted on this part."""
    zoo = provenance.get("zoo", {}).get("name")  # a configured zoo's; the built-in one has none
    if part is None:
        subject = shown_name(manifest)
    else:
        subject = f"the zoo's {part} part" if zoo is None else f"the {part} part of the zoo '{zoo}'"
    doc = {
        "zoo_part": part,
        **({"manifest": manifest} if manifest is not None else {}),
        "measures": measures,
        "calibration": {k: c.to_json() for k, c in calibrations.items()},
        "calibration_fitted_here": fitted,
        "models": [
            {
                "name": m.name,
                "backdoored": m.backdoored,
                "target": m.target,
                "asr": m.asr,
                "meets_bar": m.meets_bar,
                **{
                    n: {
                        **summaries[n][i].to_json(),
                        "probability": (
                            round(calibrations[n].probability(summaries[n][i].score), 4) if n in calibrations else None
                        ),
                    }
                    for n in summaries
                },
            }
            for i, m in enumerate(members)
        ],
        "provenance": provenance,
    }
    where = (
        "fitted on these models (in-sample: read the evaluation part for an honest measure)"
        if fitted
        else f"fitted on {next(iter(calibrations.values())).fitted_on}"
        if calibrations
        else "none"
    )
    parts = [
        f"# goodnet: scanners measured on {subject}",
        "",
        population_table(measures),
        "",
        f"Calibration: {where}.",
        "",
        POPULATION_NOTE + (ZOO_NOTE if part is not None else MANIFEST_NOTE),
        "",
        "## Every model",
        "",
        population_rows(
            members, summaries, calibrations, "all-to-all" if part is not None else "no single target given"
        ),
        "",
    ]
    with atomic_directory(out_dir, marker=POPULATION_MARKER) as stage:
        with open(os.path.join(stage, POPULATION_MARKER), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        if fitted:
            save_calibrations(os.path.join(stage, "calibration.json"), calibrations, provenance)
        with open(os.path.join(stage, "report.md"), "w") as f:
            f.write("\n".join(parts))
        write_page(stage, "report.md", "report.html", f"goodnet: scanners on {subject}")
    return doc
