"""Everything a defense run leaves on disk: numbers (JSON, CSV), plots, a Markdown report, models.

All of it is written into one directory atomically (see outputs.py).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from torch import nn  # noqa: E402

from .data import ImageSet  # noqa: E402
from .defense import DefenseData, DefenseResult, RepairRun  # noqa: E402
from .goodnet_model import TwoModelGoodNet, build_goodnet  # noqa: E402
from .keras_io.export import export_like  # noqa: E402
from .metrics import goodnet_labels  # noqa: E402
from .model_io import model_suffix, save_model  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402
from .outputs import atomic_directory  # noqa: E402
from .pruning import pruned_copy  # noqa: E402

CURVE_COLUMNS = ["channels_pruned", "fraction_pruned", "channel", "mean_activation", "recomputed_inputs",
                 "valid_accuracy", "valid_asr", "test_accuracy", "test_asr",
                 "goodnet_valid_accuracy", "goodnet_valid_asr", "goodnet_test_accuracy", "goodnet_test_asr",
                 "flagged_poisoned", "flagged_clean"]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _rounded(d: dict[str, float | None]) -> dict[str, float | None]:
    return {k: _round(v) for k, v in d.items()}



@dataclass(frozen=True)
class ModelExports:
    """Extra formats written next to our own files: B' as Keras HDF5 in the layout of `keras_like`
    (the Keras file B came from), G (and B') as ONNX."""

    keras_like: str | None = None
    onnx: bool = False

    def filenames(self, stem: str, model: nn.Module) -> dict[str, str]:
        names = {"repaired": f"models/repaired_{stem}{model_suffix(model)}",
                 "goodnet": f"models/goodnet_{stem}{model_suffix(model)}"}
        if self.keras_like:
            names["repaired_keras"] = f"models/repaired_{stem}.h5"
        if self.onnx:
            names["goodnet_onnx"] = f"models/goodnet_{stem}.onnx"
            names["repaired_onnx"] = f"models/repaired_{stem}.onnx"
        return names

    def save(self, stage: str, stem: str, model: nn.Module, layer: str, channels: list[int]) -> dict[str, str]:
        """Save B' and G (pruning `channels` of `layer` in B = `model`) under `stage`."""
        return self._write(stage, stem, model, pruned_copy(model, layer, channels),
                           build_goodnet(model, layer, channels))

    def save_outcome(self, stage: str, stem: str, model: nn.Module, outcome) -> dict[str, str]:
        """Save a repair's B' and its G: one trunk and two tails when B' only zeroes channels of
        one conv, else B and B' run in full."""
        if outcome.single_layer is not None:
            return self._write(stage, stem, model, outcome.model, build_goodnet(model, *outcome.single_layer))
        return self._write(stage, stem, model, outcome.model, TwoModelGoodNet(model, outcome.model))

    def _write(self, stage: str, stem: str, model: nn.Module, repaired: nn.Module, goodnet: nn.Module) -> dict[str, str]:
        names = self.filenames(stem, model)
        save_model(repaired, os.path.join(stage, names["repaired"]))
        save_model(goodnet, os.path.join(stage, names["goodnet"]))
        if self.keras_like:
            export_like(repaired, self.keras_like, os.path.join(stage, names["repaired_keras"]))
        if self.onnx:
            export_onnx(goodnet, os.path.join(stage, names["goodnet_onnx"]))
            export_onnx(repaired, os.path.join(stage, names["repaired_onnx"]))
        return names


def curve_rows(result: DefenseResult) -> list[dict[str, Any]]:
    rows = []
    for k in range(result.num_channels + 1):
        channel = int(result.order[k - 1]) if k else None
        g_valid = result.goodnet_metrics(k, "valid")
        g_test = result.goodnet_metrics(k, "test")
        recomputed = int(sum(s.recomputed[k - 1] for s in result.sweeps.values())) if k else None
        rows.append({"channels_pruned": k, "fraction_pruned": k / result.num_channels, "channel": channel,
                     "mean_activation": None if channel is None else float(result.mean_activation[channel]),
                     "recomputed_inputs": recomputed, **result.model_metrics(k),
                     "goodnet_valid_accuracy": g_valid["valid_accuracy"], "goodnet_valid_asr": g_valid["valid_asr"],
                     "goodnet_test_accuracy": g_test["test_accuracy"], "goodnet_test_asr": g_test["test_asr"],
                     "flagged_poisoned": g_test["flagged_poisoned"], "flagged_clean": g_test["flagged_clean"]})
    return rows


def results_document(result: DefenseResult, inputs: dict[str, str], model: nn.Module,
                     exports: ModelExports = ModelExports()) -> dict[str, Any]:
    """The machine-readable summary (results.json); deterministic for a fixed model and data."""
    s = result.settings
    saved_rules = set(s.rules)
    thresholds = []
    for sel in result.selections:
        entry: dict[str, Any] = {"x": sel.x, "rule": sel.rule, "reached": sel.reached,
                                 "channels_pruned": sel.channels_pruned}
        if sel.channels_pruned is None:
            entry.update(pruned=None, valid_drop=None, repaired=None, goodnet=None, files=None)
        else:
            k = sel.channels_pruned
            entry.update(pruned=result.pruned_channels(k), valid_drop=_round(result.valid_drop(k)),
                         repaired=_rounded(result.model_metrics(k)),
                         goodnet=_rounded(result.goodnet_metrics(k, "test")),
                         files=(exports.filenames(f"x{sel.x:g}_{sel.rule}", model)
                                if sel.rule in saved_rules else None))
        thresholds.append(entry)
    means = result.mean_activation
    return {
        "layer": s.layer, "cut": result.cut, "order": s.order, "drop": s.drop,
        "num_channels": result.num_channels, "num_classes": result.num_classes,
        "extra_class": result.extra_class, "saved_rules": list(s.rules),
        "inputs": inputs,
        "sizes": {role: int(len(y)) for role, y in result.truth.items()},
        "baseline": _rounded(result.model_metrics(0)),
        "dead_channels": int((means == 0).sum()),
        "mean_activation": [float(v) for v in means],
        "pruning_order": [int(c) for c in result.order],
        "thresholds": thresholds,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def summary_table(result: DefenseResult) -> str:
    """The lab's B / B' / G table, in Markdown."""
    base = result.model_metrics(0)
    lines = ["| model | X (pp) | rule | channels pruned | valid acc | test acc | test ASR | "
             "flagged poisoned | flagged clean |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| B (backdoored) | – | – | 0 | {_pct(base['valid_accuracy'])} | {_pct(base['test_accuracy'])} | "
             f"{_pct(base['test_asr'])} | – | – |"]
    for sel in result.selections:
        if sel.rule not in result.settings.rules:
            continue
        if sel.channels_pruned is None:
            lines.append(f"| B' | {sel.x:g} | {sel.rule} | never reached | – | – | – | – | – |")
            continue
        k = sel.channels_pruned
        m = result.model_metrics(k)
        g = result.goodnet_metrics(k, "test")
        lines.append(f"| B' | {sel.x:g} | {sel.rule} | {k} | {_pct(m['valid_accuracy'])} | "
                     f"{_pct(m['test_accuracy'])} | {_pct(m['test_asr'])} | – | – |")
        lines.append(f"| G | {sel.x:g} | {sel.rule} | {k} | – | {_pct(g['test_accuracy'])} | "
                     f"{_pct(g['test_asr'])} | {_pct(g['flagged_poisoned'])} | {_pct(g['flagged_clean'])} |")
    return "\n".join(lines)


def both_rules_table(result: DefenseResult) -> str:
    lines = ["| X (pp) | crossing: channels | crossing: valid drop | within: channels | within: valid drop |",
             "|---|---|---|---|---|"]
    by_x: dict[float, dict[str, Any]] = {}
    for sel in result.selections:
        by_x.setdefault(sel.x, {})[sel.rule] = sel
    for x, rules in by_x.items():
        cells = []
        for rule in ("crossing", "within"):
            k = rules[rule].channels_pruned
            cells += ["never" if k is None else str(k), "–" if k is None else f"{result.valid_drop(k):.2f}"]
        lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curve(result: DefenseResult, rows: list[dict[str, Any]], path: str) -> None:
    frac = [row["fraction_pruned"] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    series = [("valid_accuracy", "B' clean valid accuracy", "tab:blue", "-"),
              ("test_accuracy", "B' clean test accuracy", "tab:blue", "--"),
              ("valid_asr", "B' valid ASR", "tab:red", "-"),
              ("test_asr", "B' test ASR", "tab:red", "--"),
              ("goodnet_test_asr", "G test ASR", "tab:purple", ":")]
    for column, label, color, style in series:
        if rows[0][column] is not None:
            ax.plot(frac, [row[column] for row in rows], style, color=color, label=label)
    for sel in result.selections:
        if sel.rule == "crossing" and sel.channels_pruned is not None:
            x = sel.channels_pruned / result.num_channels
            ax.axvline(x, color="grey", lw=0.8, alpha=0.7)
            ax.text(x, 101, f"X={sel.x:g}", rotation=90, va="bottom", ha="center", fontsize=7)
    ax.set_xlabel(f"fraction of {result.settings.layer} channels pruned ({result.settings.order} mean activation)")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 104)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_activations(result: DefenseResult, path: str) -> None:
    means = result.mean_activation[result.order]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    steps = np.arange(len(means))
    ax.bar(steps, means, color="tab:blue")
    dead_steps = steps[means == 0]
    ax.plot(dead_steps, np.zeros(len(dead_steps)), "x", color="tab:red", label="dead (mean 0)")
    dead = len(dead_steps)
    ax.set_title(f"mean activation at {result.cut} on clean validation data, in pruning order "
                 f"({dead} of {len(means)} channels dead, red x)", fontsize=9)
    ax.set_xlabel("pruning step")
    ax.set_ylabel("mean activation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _as_picture(image: np.ndarray) -> np.ndarray:
    picture = image.transpose(1, 2, 0)
    top = float(picture.max()) if picture.size else 1.0
    picture = picture / (255.0 if top > 1.0 else max(top, 1e-12))
    picture = np.clip(picture, 0, 1)
    return picture[..., 0] if picture.shape[2] == 1 else picture[..., :3]


def plot_samples(images: ImageSet, labels_b: np.ndarray, labels_g: np.ndarray, extra_class: int,
                 title: str, path: str, poisoned: bool, count: int = 8) -> None:
    count = min(count, len(images))
    fig, axes = plt.subplots(1, count, figsize=(1.6 * count, 2.2))
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(_as_picture(images.x[i]), cmap="gray")
        g = "flag" if labels_g[i] == extra_class else str(labels_g[i])
        truth = "target" if poisoned else "label"
        ax.set_title(f"{truth} {images.y[i]}\nB={labels_b[i]} G={g}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_markdown(result: DefenseResult, doc: dict[str, Any], samples: list[str]) -> str:
    s = result.settings
    parts = [
        "# goodnet defense report", "",
        f"Pruned layer `{s.layer}` (cut after `{result.cut}`), {result.num_channels} channels, in "
        f"{s.order} order of mean clean-validation activation; budget X in {s.drop} percentage points "
        f"of clean validation accuracy. G answers class {result.extra_class} when B and B' disagree.", "",
        "Inputs: " + ", ".join(f"{role} = `{path}`" for role, path in doc["inputs"].items()), "",
        "## B / B' / G", "",
        summary_table(result), "",
        "Accuracies and ASR in %. *flagged poisoned* is G's detection rate on poisoned test inputs; "
        "*flagged clean* is its false-alarm rate on clean test inputs. `crossing` is the lab's rule (first "
        "model whose drop is >= X); `within` is the model just before it (drop still < X).", "",
        "## Both stopping rules", "", both_rules_table(result), "",
        "## Pruning curve", "", "![curve](curve.png)", "",
        "One row per step in `curve.csv`; every number in `results.json`.", "",
        "## Channel activations", "", "![activations](activations.png)", "",
        f"{doc['dead_channels']} of {result.num_channels} channels have mean activation 0 on clean "
        "validation data; pruning them changes nothing.", "",
    ]
    if samples:
        parts += ["## Samples", ""] + [f"![{name}]({name})" for name in samples] + [""]
    parts += ["## Models", "",
              "Saved under `models/`: `repaired_*` is B' (a plain model), `goodnet_*` is G (one file). "
              "Evaluate either with `goodnet eval CLEAN POISONED MODEL`.", ""]
    return "\n".join(parts)


def write_defense_outputs(out_dir: str, result: DefenseResult, model: nn.Module, data: DefenseData,
                          inputs: dict[str, str], exports: ModelExports = ModelExports()) -> dict[str, Any]:
    """Write the whole result directory atomically; return the results document."""
    doc = results_document(result, inputs, model, exports)
    rows = curve_rows(result)
    with atomic_directory(out_dir) as stage:
        os.makedirs(os.path.join(stage, "models"))
        for sel in result.selections:
            if sel.rule in result.settings.rules and sel.channels_pruned is not None:
                exports.save(stage, f"x{sel.x:g}_{sel.rule}", model, result.settings.layer,
                             result.pruned_channels(sel.channels_pruned))
        with open(os.path.join(stage, "results.json"), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        with open(os.path.join(stage, "curve.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else (round(v, 6) if isinstance(v, float) else v))
                                 for k, v in row.items()})
        plot_curve(result, rows, os.path.join(stage, "curve.png"))
        plot_activations(result, os.path.join(stage, "activations.png"))
        samples = _write_samples(stage, result, data)
        with open(os.path.join(stage, "report.md"), "w") as f:
            f.write(report_markdown(result, doc, samples))
        with open(os.path.join(stage, "timings.json"), "w") as f:
            json.dump({k: round(v, 4) for k, v in result.timings.items()}, f, indent=2)
    return doc


def _write_samples(stage: str, result: DefenseResult, data: DefenseData) -> list[str]:
    chosen = next((sel for sel in result.selections
                   if sel.rule in result.settings.rules and sel.channels_pruned is not None), None)
    k = chosen.channels_pruned if chosen else 0
    names = []
    for role in ("clean_test", "poisoned_test", "clean_valid", "poisoned_valid"):
        images = getattr(data, role)
        kind = role.split("_")[0]
        if images is None or any(n.startswith(kind) for n in names):
            continue
        labels = result.sweeps[role].labels
        g = goodnet_labels(labels[0], labels[k], result.extra_class)
        name = f"{kind}_samples.png"
        what = f"G at X={chosen.x:g}" if chosen else "G (no pruning)"
        plot_samples(images, labels[0], g, result.extra_class, f"{role.replace('_', ' ')} ({what})",
                     os.path.join(stage, name), poisoned=kind == "poisoned")
        names.append(name)
    return names


def repair_document(run: RepairRun, inputs: dict[str, str], files: dict[str, str]) -> dict[str, Any]:
    return {"mode": "repair", "repair": run.repair, "oracle": run.oracle,
            "settings": run.settings,
            "details": run.details, "num_classes": run.num_classes, "extra_class": run.num_classes,
            "inputs": inputs, "metrics": {role: _rounded(m) for role, m in run.metrics.items()}, "files": files}


def repair_table(run: RepairRun) -> str:
    lines = ["| data | B | B' | G | flagged by G |", "|---|---|---|---|---|"]
    for role, m in run.metrics.items():
        what = "ASR" if role.startswith("poisoned") else "accuracy"
        lines.append(f"| {role.replace('_', ' ')} ({what}) | {m['backdoored']:.2f} | {m['repaired']:.2f} | "
                     f"{m['goodnet']:.2f} | {m['flagged']:.2f} |")
    return "\n".join(lines)


ORACLE_NOTE = ("ORACLE: this repair used poisoned validation data, which the lab's rules forbid for "
               "design; it shows what knowing the trigger buys, not a deployable defense.")


def write_repair_outputs(out_dir: str, run: RepairRun, outcome, model: nn.Module, inputs: dict[str, str],
                         exports: ModelExports = ModelExports()) -> dict[str, Any]:
    """results.json, report.md and the models (B' and G) of one repair, written atomically."""
    with atomic_directory(out_dir) as stage:
        os.makedirs(os.path.join(stage, "models"))
        files = exports.save_outcome(stage, run.repair, model, outcome)
        doc = repair_document(run, inputs, files)
        with open(os.path.join(stage, "results.json"), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        pruned = run.details.get("pruned", {})
        summary = ", ".join(f"{layer}: {len(channels)} channels" for layer, channels in pruned.items())
        with open(os.path.join(stage, "report.md"), "w") as f:
            f.write("\n".join([
                f"# goodnet: repair `{run.repair}`", "",
                *([f"**{ORACLE_NOTE}**", ""] if run.oracle else []),
                f"Pruned: {summary or 'nothing'}. Took {run.seconds:.1f} s.", "",
                repair_table(run) if run.metrics else "No data given: models only.", "",
                "G answers B's label when B and B' agree and class "
                f"{run.num_classes} (poisoned) when they do not.", "",
                "Models: " + ", ".join(f"`{name}`" for name in files.values()), ""]))
    return doc
