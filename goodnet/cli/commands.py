"""One function per `goodnet` command: it turns the parsed options into library arguments (through
`options`), makes one library call and prints what came back. Deciding, loading, checking and
writing are the library's.

Each command imports the library module it calls when it runs: those modules bring in plotting,
training and export code that `goodnet --help` and the other commands must not wait for.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import GoodnetWarning, SettingsError, one_line
from .options import (
    data_paths,
    given_settings,
    grid_arguments,
    model_source,
    relearn_arguments,
    repair_arguments,
)


def _print_run(run, out: str) -> None:
    """A defense's summary on stdout; its notice, warnings and any hand-back on stderr."""
    from ..report.scan_report import scan_table
    from ..report.tables import summary_lines, verdict_lines

    print("\n".join(summary_lines(run.result, verdicts=False)))
    if run.scans:
        print("trigger scan (no poisoned data; anomaly index > 2 flags a suspected target):")
        print(scan_table(run.scans))
    for line in verdict_lines(run.result):  # last, where a reader looks first
        print(line)
    if run.result.notice:
        print(f"goodnet: {run.result.notice}", file=sys.stderr)
    for line in run.result.warnings:
        print(f"goodnet: warning: {one_line(line)}", file=sys.stderr)
    harm = run.result.harm
    if harm is not None and harm.fell_back:
        print(f"goodnet: {harm.line(run.result.repair)}", file=sys.stderr)
    print(f"\nwrote {os.path.abspath(out)}/ (report.html, report.md, results.json, metrics.csv, plots, models/)")


def cmd_defend(args: argparse.Namespace) -> None:
    from ..defend import defend
    from ..inspection.strip import StripSettings
    from ..spec import DefenseSpec

    spec = DefenseSpec.build(
        model_source(args),
        data_paths(args),
        args.out,
        **repair_arguments(args, guard_note=" (its budgets are its own settings)"),
        input_scale=args.input_scale,
        onnx=args.onnx,
        progress=not args.quiet,
        force=args.force,
        strip=None if args.no_strip else StripSettings(),
        scan=args.scan,
        **relearn_arguments(args),
    )
    run = defend(spec)
    _print_run(run, args.out)


def cmd_batch(args: argparse.Namespace) -> None:
    from ..batch import run_batch
    from ..report.batch_report import batch_table

    run = run_batch(
        args.manifest,
        args.out,
        **repair_arguments(args),
        **grid_arguments(args),
        progress=not args.quiet,
        strip=not args.no_strip,
        scan=args.scan,
        force=args.force,
        trust_code=args.trust_model_code,
    )
    print(batch_table(run.rows))
    print(f"\nwrote {os.path.abspath(args.out)}/ (batch.md, batch.html, batch.csv, batch.json, models/)")
    if run.refused:
        raise SettingsError(run.refused)


def cmd_eval(args: argparse.Namespace) -> None:
    from ..evaluation import evaluate_files

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GoodnetWarning)
        clean, asr = evaluate_files(args.clean, args.poisoned, model_source(args), input_scale=args.input_scale)
    for warning in caught:
        if issubclass(warning.category, GoodnetWarning):
            print(f"goodnet: warning: {one_line(warning.message)}", file=sys.stderr)
    print("Clean Classification accuracy:", clean)
    print("Attack Success Rate:", asr)


def cmd_classify(args: argparse.Namespace) -> None:
    from ..evaluation import classify_files

    labels = classify_files(model_source(args), args.images, input_scale=args.input_scale, input_range=args.input_range)
    for label in labels:
        print(label)


def cmd_export(args: argparse.Namespace) -> None:
    from ..export import export_model_file

    export_model_file(model_source(args), args.to, args.out, like=args.like, input_shape=args.input_shape)
    print(f"wrote {os.path.abspath(args.out)}")


def cmd_attack(args: argparse.Namespace) -> None:
    from ..attack import attack_files
    from ..zoo.badnets import BadNetSettings
    from ..zoo.config import dataset_settings

    common = dict(
        kind=args.kind,
        target=args.target,
        poison_rate=args.poison_rate,
        seed=args.seed,
        epochs=args.epochs,
        arch=args.arch,
        augment=args.augment,
    )
    if args.data is None:
        if args.data_range is not None or args.per_class is not None:
            raise SettingsError("--data-range and --per-class describe --data; give --data with them")
        settings = BadNetSettings(**common, scale=255.0 if args.scale is None else args.scale)
    else:
        if args.scale is not None:
            raise SettingsError("--scale is the bundled digits' range; --data has its own (--data-range)")
        settings = dataset_settings(args.data, common, args.data_range, args.per_class)
    run = attack_files(settings, args.out, args.cache_dir, progress=not args.quiet, data=args.data)
    b, sizes = run.manifest["badnet"], run.manifest["sizes"]
    print(
        f"{args.kind} BadNet: clean test accuracy {b['clean_test_accuracy']:.2f} % (clean model "
        f"{run.reference['clean_test_accuracy']:.2f} %), test ASR {b['poisoned_test_asr']:.2f} %, "
        f"{sizes['poisoned_in_train']} of {sizes['attacker_train']} training images poisoned"
    )
    print(
        f"bar (ASR >= 90, clean accuracy within 2 points of the clean model): {'met' if run.meets_bar else 'NOT met'}"
    )
    print(
        f"wrote {os.path.abspath(args.out)}/ (clean/poisoned valid/test .h5, badnet.safetensors, "
        "clean_reference.safetensors, manifest.json)"
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from ..compare import run_comparison
    from ..report.comparison import markdown_table, relearn_table, summary_table

    rows = run_comparison(
        args.out,
        args.repairs,
        args.part,
        args.only,
        args.cache_dir,
        **grid_arguments(args),
        progress=not args.quiet,
        scan=args.scan,
        scan_schedule=args.scan_schedule,
        relearn=relearn_arguments(args)["relearn"],
        config=args.config,
    )
    print(markdown_table(rows))
    print()
    print(summary_table(rows))
    relearned = relearn_table(rows)
    if relearned is not None:
        print("\nre-learning (does the repair hold?):")
        print(relearned)
    print(
        f"\nwrote {os.path.abspath(args.out)}/ (comparison.html, comparison.md, comparison.csv, comparison.png, comparison.json)"
    )


def cmd_scan(args: argparse.Namespace) -> None:
    from ..errors import SettingsError
    from ..report.scan_report import margin_table, population_table, probability_lines, scan_table
    from ..scan import scan_files, scan_manifest, scan_zoo

    scanners = ("nc", "mm-bd") if args.scanner == "both" else (args.scanner,)
    one_model = (
        ("--model", args.model is not None),
        ("--clean-valid", args.clean_valid is not None),
        ("--arch", args.arch is not None),
        ("--factory", args.factory is not None),
        ("--input-scale", args.input_scale != 1.0),
    )

    def refuse_given(more, why: str) -> None:
        given = [option for option, used in one_model + more if used]
        if given:
            raise SettingsError(f"{why}: drop {', '.join(given)}")

    if args.zoo is not None and args.population is not None:
        raise SettingsError("give --zoo or --population, not both")
    # what a population scan takes alike over the zoo and over a manifest
    population_options = {
        "scanners": scanners,
        "calibration": args.calibration,
        "seed": args.seed,
        "progress": not args.quiet,
    }
    if args.population is not None:
        refuse_given(
            (
                ("--only", args.only is not None),
                ("--cache-dir", args.cache_dir is not None),
                ("--config", args.config is not None),
            ),
            "--population names each model and its data in the manifest",
        )
        doc = scan_manifest(
            args.population,
            args.out,
            **population_options,
            force=args.force,
            trust_code=args.trust_model_code,
            **({"schedule": args.scan_schedule} if "nc" in scanners else {}),
        )
    elif args.zoo is not None:
        refuse_given(
            (("--trust-model-code", args.trust_model_code), ("--force", args.force)), "--zoo scans the zoo's own models"
        )
        doc = scan_zoo(
            args.zoo,
            args.out,
            **population_options,
            cache_dir=args.cache_dir,
            only=args.only,
            schedule=args.scan_schedule,
            config=args.config,
        )
    if args.zoo is not None or args.population is not None:
        print(population_table(doc["measures"]))
        files = "report.html, report.md, population.json" + (
            ", calibration.json" if doc["calibration_fitted_here"] else ""
        )
        print(f"\nwrote {os.path.abspath(args.out)}/ ({files})")
        return
    missing = [o for o, v in (("--model", args.model), ("--clean-valid", args.clean_valid)) if v is None]
    if missing:
        raise SettingsError(f"scan needs {' and '.join(missing)} (or --zoo PART to scan the zoo, or --population FILE)")
    if args.only is not None or args.cache_dir is not None or args.config is not None:
        raise SettingsError("--only, --cache-dir and --config go with --zoo")
    run = scan_files(
        model_source(args),
        args.clean_valid,
        args.out,
        input_scale=args.input_scale,
        progress=not args.quiet,
        force=args.force,
        seed=args.seed,
        scanners=scanners,
        calibration=args.calibration,
        **({"schedule": args.scan_schedule} if "nc" in scanners else {}),
    )
    name = os.path.basename(str(run.document["inputs"].get("model", "model")))
    if run.scan is not None:
        print(scan_table({name: run.scan}))
    if run.margin is not None:
        print(margin_table({name: run.margin}))
    fitted_on = [c["fitted_on"] for c in run.document["calibration"].values()]
    for line in probability_lines(run.probabilities or {}, fitted_on[0] if fitted_on else None):
        print(line)
    figures = ", model_triggers.png, model_norms.png" if run.scan is not None else ""
    print(f"\nwrote {os.path.abspath(args.out)}/ (report.html, report.md, scan.json{figures})")


def _announce_demo(out: str):
    """What the demo says once its BadNet is ready, before the defense runs."""

    def announce(badnet) -> None:
        b = badnet.manifest["badnet"]
        if badnet.shipped:
            print(
                f"built from the BadNet weights shipped with goodnet (--retrain trains it instead): {badnet.directory}"
            )
        else:
            print(f"{'reused cached' if badnet.reused else 'trained'} BadNet in {badnet.directory}")
        trigger = badnet.settings.attack.trigger.size
        print(
            f"  B: clean test accuracy {b['clean_test_accuracy']:.2f} %, test ASR {b['poisoned_test_asr']:.2f} % "
            f"(trigger: {trigger}x{trigger} white patch, target {badnet.settings.target})"
        )
        print(
            "  same as: goodnet defend --model "
            + badnet.model_path
            + " "
            + " ".join(f"--{role.replace('_', '-')} {path}" for role, path in badnet.data_paths.items())
            + f" --out {out}"
        )

    return announce


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    run = run_demo(
        args.out,
        seed=args.seed,
        cache_dir=args.cache_dir,
        retrain=args.retrain,
        repair_settings=given_settings(args),
        progress=not args.quiet,
        ready=_announce_demo(args.out),
    )
    _print_run(run, args.out)


COMMANDS = {
    "defend": cmd_defend,
    "eval": cmd_eval,
    "classify": cmd_classify,
    "export": cmd_export,
    "attack": cmd_attack,
    "compare": cmd_compare,
    "scan": cmd_scan,
    "demo": cmd_demo,
    "batch": cmd_batch,
}
