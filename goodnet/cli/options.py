"""The command line's options: the argparse value types, and every option shared by several
commands declared once, as a group function (`add_*`) that commands call, beside the function that
reads the group back into library arguments. A command that explains an option in its own words
passes its own `help`; the option itself (name, type, default) stays here.

Repair settings are not named here: `add_setting_options` makes one option per setting of the
repair registry, and `given_settings` reads them back. The grid and the model-file readers are
imported when an option of theirs is read, so `goodnet --help` does not wait for them.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import SettingsError
from ..repairs import REPAIRS, build_repair, repair_names
from ..repairs.base import MAX_SEED
from ..repairs.do_no_harm import DEFAULT_HOLDOUT, DEFAULT_MAX_DROP
from ..repairs.registry import all_settings, repair_class

MAX_INTEGER = 2**63 - 1  # the largest whole number an option takes: every library goodnet hands one to takes it
MAX_SIDE = 65536  # the largest channel count, height or width --input-shape takes
MAX_INPUT_VALUES = 2**27  # the most values (C*H*W) of one image --input-shape takes: 512 MiB as float32
SETTING_PREFIX = "setting_"  # the argparse dest of a repair setting's option
SCAN_SCHEDULES = ("reference", "goodnet")

MODEL_HELP = (
    "a goodnet .safetensors file, a Keras file (.h5 full model or weights only; Keras 3 .keras or "
    ".weights.h5), a PyTorch state dict (.safetensors/.pt, with --factory) or a TorchScript .pt file"
)
TRUST_HELP = (
    "load a TorchScript model file: it is a program, and loading and running it runs whatever its "
    "author wrote (files written, network used). Refused by default; give this only for a file from "
    "a source you trust. No other model format holds code"
)
DATA_HELP = {
    "clean_valid": "clean validation data (.h5 data/label, .npz x/y, an image folder, a CIFAR .bin batch or "
    "a .npy pair: docs/formats.md); the only data a repair decides on "
    "(required by every repair but channels)",
    "poisoned_valid": "poisoned validation data (labels = attacker's targets); only oracle repairs read it, "
    "every repair is measured on it",
    "clean_test": "clean test data (measured, never shown to a repair)",
    "poisoned_test": "poisoned test data (measured, never shown to a repair)",
}
INPUT_SCALE_HELP = "divide every pixel value by this before the model sees it (default: 1, raw)"
FORCE_HELP = (
    "repair even when B is not clearly better than chance on the clean validation data (the report "
    "then says so); by default that stops before any work"
)
MAX_DROP_HELP = (
    "do no harm: the most points of held-out clean accuracy a repair may cost; past it the repair "
    "is retried with milder settings, then B is handed back unchanged (default: 2; every repair but "
    "prune and channels)"
)
HOLDOUT_HELP = (
    "share of every class of --clean-valid held out to judge the repair on; the repair fits on the rest (default: 0.2)"
)
SCAN_HELP = (
    "scan B, and every B' handed over, for a backdoor with clean validation data only (as `goodnet "
    "scan`): the report shows whether the anomaly index fell after the repair"
)
STRIP_HELP = (
    "skip STRIP, the input-level detector measured beside G when both test sets are given (20 blends "
    "per input, at most 2,000 inputs per set)"
)


# value types: each refuses a bad value in one line naming it


def _given(text: str) -> str:
    """An option's value as a message shows it: quoted, escaped, and cut short when long."""
    shown = repr(text)
    return shown if len(shown) <= 42 else shown[:30] + "..." + shown[-9:]


def integer(low: int, high: int):
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


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_given(text)}") from None


def positive_number(text: str) -> float:
    value = number(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {_given(text)}")
    return value


seed = integer(0, MAX_SEED)  # every --seed


def cores(text: str) -> int:
    """--workers and --threads: from 1 to the grid's MAX_THREADS."""
    from ..grid import MAX_THREADS

    return integer(1, MAX_THREADS)(text)


def budget(text: str) -> float:
    """--max-drop: points of accuracy, from 0 to 100."""
    value = number(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100 points, not {_given(text)}")
    return value


def share(text: str) -> float:
    """A share strictly between 0 and 1 (--holdout, --poison-rate)."""
    value = number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1 (both excluded), not {_given(text)}")
    return value


def input_shape(text: str) -> tuple[int, int, int]:
    """--input-shape C,H,W: three whole numbers from 1 to MAX_SIDE, at most MAX_INPUT_VALUES in all."""
    parts = text.split(",")
    try:
        shape = [int(v) for v in parts]
    except ValueError:
        shape = []
    if len(shape) != 3 or not all(1 <= v <= MAX_SIDE for v in shape):
        raise argparse.ArgumentTypeError(f"must be C,H,W: three integers from 1 to {MAX_SIDE}, not {_given(text)}")
    if shape[0] * shape[1] * shape[2] > MAX_INPUT_VALUES:
        raise argparse.ArgumentTypeError(
            f"{'x'.join(map(str, shape))} is {shape[0] * shape[1] * shape[2]} values "
            f"per image, more than the {MAX_INPUT_VALUES} goodnet takes"
        )
    return shape[0], shape[1], shape[2]


def value_range(text: str) -> tuple[float, float]:
    """--input-range LOW,HIGH: two finite numbers, LOW below HIGH."""
    parts = text.split(",")
    try:
        low, high = (float(v) for v in parts)
    except ValueError:
        low = high = float("nan")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH: two finite numbers, LOW below HIGH, not {_given(text)}")
    return low, high


def split_counts(text: str) -> tuple[int, int, int]:
    """--per-class TRAIN,VALID,TEST: three whole numbers of at least 1."""
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        counts = []
    if len(counts) != 3 or not all(1 <= v <= MAX_INTEGER for v in counts):
        raise argparse.ArgumentTypeError(f"must be TRAIN,VALID,TEST: three whole numbers >= 1, not {_given(text)}")
    return counts[0], counts[1], counts[2]


# option groups, and what reads them back


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        metavar="cpu|cuda|auto",
        help="where models run: cpu, cuda (or cuda:N; refused when PyTorch sees no GPU) or auto "
        "(default: the GPU when PyTorch sees one, else the CPU); zoo and attack BadNets are "
        "always trained on the CPU, so a cache is the same on every machine",
    )


def add_model_argument(p: argparse.ArgumentParser, option: bool = False, models: str = "") -> None:
    """The model file: `--model` (required) when `option`, else the positional MODEL; `models` says
    which models it may be (e.g. "B")."""
    text = f"{models}: {MODEL_HELP}" if models else MODEL_HELP
    if option:
        p.add_argument("--model", required=True, help=text)
    else:
        p.add_argument("model", metavar="MODEL", help=text)


def add_trust_option(p: argparse.ArgumentParser, help: str = TRUST_HELP) -> None:
    p.add_argument("--trust-model-code", action="store_true", help=help)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """What a model file cannot say itself: its architecture, the user's class, trust in its code."""
    p.add_argument(
        "--arch",
        default=None,
        help="architecture of a Keras weights-only file: a built-in name (deepid, small_cnn, "
        "resnet8; default deepid) or a Keras full-model .h5 / .keras / model.to_json() .json file",
    )
    p.add_argument(
        "--factory",
        default=None,
        metavar="PACKAGE.MODULE:FUNCTION",
        help="your PyTorch class: a function (or class) returning the nn.Module that the weights file belongs to",
    )
    add_trust_option(p)


def model_source(args: argparse.Namespace):
    from ..io.model_files import ModelSource

    return ModelSource(args.model, arch=args.arch, factory=args.factory, trust_code=args.trust_model_code)


def add_data_option(p: argparse.ArgumentParser, role: str, help: str | None = None, required: bool = False) -> None:
    p.add_argument("--" + role.replace("_", "-"), required=required, help=help or DATA_HELP[role])


def add_data_options(p: argparse.ArgumentParser) -> None:
    """One option per data role: --clean-valid, --poisoned-valid, --clean-test, --poisoned-test."""
    for role in DATA_HELP:
        add_data_option(p, role)


def data_paths(args: argparse.Namespace) -> dict[str, str | None]:
    return {role: getattr(args, role) for role in DATA_HELP}


def add_input_scale_option(p: argparse.ArgumentParser, help: str = INPUT_SCALE_HELP) -> None:
    p.add_argument("--input-scale", type=positive_number, default=1.0, help=help)


def add_input_range_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-range",
        type=value_range,
        metavar="LOW,HIGH",
        help="the pixel values the model was trained on, after --input-scale (e.g. 0,1 or 0,255): needed "
        "when its file records none (a state dict, TorchScript or Keras file goodnet did not write)",
    )


def add_output_option(p: argparse.ArgumentParser, default: str | None = None, what: str = "directory") -> None:
    """--out: required when there is no `default`."""
    if default is None:
        p.add_argument("--out", required=True, help=f"output {what}")
    else:
        p.add_argument("--out", default=default, help=f"output {what} (default: {default})")


def add_seed_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--seed", type=seed, default=0, help=help)


def add_cache_dir_option(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--cache-dir", default=None, help=help)


def add_zoo_config_option(p: argparse.ArgumentParser, use: str) -> None:
    """--config: a zoo configuration file; `use`: what the command does with its zoo."""
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a zoo configuration file (TOML: datasets, BadNets, seeds of each part; docs/your-own-data.md) "
        f"{use} instead of the built-in zoo's (itself such a file: goodnet/zoo/builtin_zoo.toml)",
    )


def add_quiet_option(p: argparse.ArgumentParser, shown: str = "bars") -> None:
    """--quiet; `shown`: what it silences, progress "bars" or "lines"."""
    p.add_argument("--quiet", action="store_true", help=f"no progress {shown}")


def add_force_option(p: argparse.ArgumentParser, help: str = FORCE_HELP) -> None:
    p.add_argument("--force", action="store_true", help=help)


def add_guard_options(
    p: argparse.ArgumentParser, max_drop_help: str = MAX_DROP_HELP, holdout_help: str = HOLDOUT_HELP
) -> None:
    """The do-no-harm guard's budget: --max-drop and --holdout (read back by `repair_arguments`)."""
    p.add_argument("--max-drop", type=budget, default=None, help=max_drop_help)
    p.add_argument("--holdout", type=share, default=None, help=holdout_help)


def add_scan_option(p: argparse.ArgumentParser, help: str = SCAN_HELP) -> None:
    p.add_argument("--scan", action="store_true", help=help)


def whole_number(text: str) -> int:
    """A whole number of at least 1 (--relearn-poisoned, --relearn-epochs), at most MAX_INTEGER."""
    digits = text.strip().lstrip("+")
    if not digits.isdigit() or len(digits.lstrip("0")) > len(str(MAX_INTEGER)) or not 1 <= int(digits) <= MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {_given(text)}")
    return int(digits)


def add_relearn_options(p: argparse.ArgumentParser, zoo: bool = False) -> None:
    """The re-learning test (read back by `relearn_arguments`); `zoo`: the clean reference is the
    zoo's own, so there is no --relearn-reference."""
    needs = (
        "each zoo BadNet's clean reference model is the judge"
        if zoo
        else "needs --clean-valid, --poisoned-valid, --poisoned-test"
    )
    p.add_argument(
        "--relearn",
        action="store_true",
        help="also test whether each repair holds: tune every B' (and the clean reference) on the clean "
        "validation data with a few poisoned images, as the Retuning Attack of Min et al. (NeurIPS 2024) "
        f"does, and report the ASR it re-learns ({needs})",
    )
    if zoo:
        p.set_defaults(relearn_reference=None)
    else:
        _add_relearn_reference(p)
    _add_relearn_settings(p)


def _add_relearn_reference(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--relearn-reference",
        metavar="MODEL",
        help="a clean model of B's kind (same architecture, trained without poisoned data; read as B is, "
        "with B's --arch, --factory and --trust-model-code): a B' that re-learns the backdoor far past it "
        "is flagged as a dormant backdoor",
    )


def _add_relearn_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--relearn-images",
        type=whole_number,
        metavar="N",
        help="the tuning set's size: at most N clean validation images (default 1000, the authors')",
    )
    p.add_argument(
        "--relearn-poisoned",
        type=whole_number,
        metavar="N",
        help="poisoned validation images that replace clean ones in the tuning set (default 5, the authors')",
    )
    p.add_argument(
        "--relearn-epochs", type=whole_number, metavar="N", help="epochs of tuning (default 5, the authors')"
    )
    p.add_argument(
        "--relearn-margin",
        type=budget,
        metavar="POINTS",
        help="ASR points past the clean reference's that flag a dormant backdoor (default 20)",
    )


RELEARN_OPTIONS = {  # option -> RelearnSettings field
    "relearn_images": "images",
    "relearn_poisoned": "poisoned",
    "relearn_epochs": "epochs",
    "relearn_margin": "margin",
}


def relearn_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """--relearn*'s values as DefenseSpec.build takes them."""
    from ..measure.relearning import RelearnSettings

    given = [o for o in ("relearn_reference", *RELEARN_OPTIONS) if getattr(args, o) is not None]
    if not args.relearn and given:
        raise SettingsError(f"--{given[0].replace('_', '-')} sets the re-learning test: add --relearn")
    if not args.relearn:
        return {"relearn": None, "relearn_reference": None}
    settings = RelearnSettings(
        **{
            field: getattr(args, option)
            for option, field in RELEARN_OPTIONS.items()
            if getattr(args, option) is not None
        }
    )
    return {"relearn": settings, "relearn_reference": args.relearn_reference}


def add_strip_option(p: argparse.ArgumentParser, help: str = STRIP_HELP) -> None:
    p.add_argument("--no-strip", action="store_true", help=help)


def add_scan_schedule(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scan-schedule",
        choices=SCAN_SCHEDULES,
        default="reference",
        help="the trigger scan's cost schedule and flagging: reference (Neural Cleanse's authors' "
        "code, the default) or goodnet (a faster schedule that stops earlier; see docs/conformance.md)",
    )


def add_grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=cores,
        default=1,
        metavar="N",
        help="cells run at once on this machine: 1 (default) runs them in order in this process, more "
        "runs a process pool",
    )
    p.add_argument(
        "--threads",
        type=cores,
        default=None,
        metavar="T",
        help="PyTorch threads per cell (default: this machine's cores / --workers; 1 under --ray). The "
        "numbers depend on T (PyTorch adds up in a thread-dependent order), never on the runner",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run the cells as Ray tasks: on the cluster at ADDRESS, or (no address) on a local Ray; "
        "needs pip install 'goodnet[ray]'. Finished cells are kept beside --out, so an "
        "interrupted grid resumes where it stopped, whatever the runner",
    )


def grid_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {"workers": args.workers, "threads": args.threads, "ray": args.ray}


def add_repair_option(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--repair", choices=repair_names(), default=default, help=help)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_setting_options(p: argparse.ArgumentParser, repairs: list[str]) -> None:
    """One option per setting name of `repairs` (from the registry), absent unless given."""
    seen: dict[str, Any] = {}
    for name in repairs:
        for spec in REPAIRS[name].setting_specs():
            seen.setdefault(spec.name, (spec, {}))[1][name] = spec.default
    group = p.add_argument_group("repair settings (each applies to the repairs named in brackets)")
    for setting, (spec, defaults) in seen.items():
        shown = {_shown(d) for d in defaults.values()}
        default = (
            f"default {shown.pop()}"
            if len(shown) == 1
            else "defaults: " + ", ".join(f"{r} {_shown(d)}" for r, d in defaults.items())
        )
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


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, converted to their types (one-line errors)."""
    specs = all_settings()
    given = {}
    for key, raw in vars(args).items():
        if not key.startswith(SETTING_PREFIX):
            continue
        name = key[len(SETTING_PREFIX) :]
        kind, option = specs[name][0].kind, "--" + name.replace("_", "-")
        if kind in ("ints", "floats"):
            tokens = [t for part in raw for t in part.split(",") if t.strip()]
            given[name] = tuple(_setting_number(t, kind[:-1], option) for t in tokens)
        elif kind in ("int", "float"):
            given[name] = _setting_number(raw, kind, option)
        else:
            given[name] = raw
    return given


def _setting_number(text: str, kind: str, option: str) -> int | float:
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


def repair_arguments(args: argparse.Namespace, guard_note: str = "") -> dict[str, Any]:
    """defend and batch: the library arguments `repair`, `max_drop`, `holdout` and `scan_schedule`
    from --repair (default prune, or channels when --channels is given), the repair settings, the
    guard options and --scan. --max-drop and --holdout are refused for a repair without the guard
    (`guard_note`: said after the repair's name). `--scan-schedule` is nc's setting and also the
    schedule of `--scan`'s scans: with `--scan` it is taken for those, and left to the repair only
    when it takes it."""
    given = given_settings(args)
    name = args.repair or ("channels" if "channels" in given else "prune")
    scan_schedule = given.get("scan_schedule", "reference")
    if args.scan and "scan_schedule" not in {s.name for s in repair_class(name).setting_specs()}:
        given.pop("scan_schedule", None)
    repair = build_repair(name, given)
    unused = [
        option for option, value in (("--max-drop", args.max_drop), ("--holdout", args.holdout)) if value is not None
    ]
    if unused and not repair.guarded:
        raise SettingsError(
            f"{' and '.join(unused)} set the do-no-harm guard, which the {name} repair does not "
            f"use{guard_note}; drop {' and '.join(unused)}"
        )
    return {
        "repair": repair,
        "scan_schedule": scan_schedule,
        "max_drop": DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop,
        "holdout": DEFAULT_HOLDOUT if args.holdout is None else args.holdout,
    }
