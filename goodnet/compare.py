"""Every registered repair on every zoo BadNet: the grid behind `goodnet compare`.

Each cell is exactly `goodnet defend --repair R` (at the settings the repair declares for
comparison, with the default do-no-harm budget) on the zoo BadNet's files, so any cell can be
re-run on its own and must give the same numbers (a test does). The roster is the registry: a
repair registered anywhere, a plugin's included, appears here without this file changing. A cell
counts the zoo files it reads by their content, so a zoo cache deleted and rebuilt (or edited)
since a cell finished makes that cell run again instead of reusing numbers of other models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .errors import SettingsError
from .grid import GridCell, GridRunner, check_ray_address, run_grid
from .inspection.detection_scores import DetectionScore
from .inspection.strip import StripSettings
from .inspection.trigger_reversal import reverse_triggers
from .io.data import as_path, load_sets
from .io.model_files import load_model
from .io.output_dir import check_output_dir, claim_state_dir
from .measure import run_repair
from .measure.relearning import RelearnSettings, RelearnTest
from .models.cost import multiply_adds
from .repairs import REPAIRS, Repair, build_repair, repair_names
from .report.comparison import comparison_row, write_comparison
from .zoo.badnets import DATA_FILES, MODEL_FILE, BadNetSettings, clean_reference_scores, default_cache_dir, zoo_badnet
from .zoo.catalog import part_of, select_badnets
from .zoo.config import ZooConfig, load_zoo_config, zoo_run_inputs


def comparison_roster(names: Sequence[str] | None = None) -> list[Repair]:
    """The repairs `compare` runs: `names`, or every registered repair it runs by default."""
    if names is None:
        names = [n for n in repair_names() if REPAIRS[n].in_comparison and REPAIRS[n].compared_by_default]
    return [build_repair(name, comparison=True) for name in names]


def single_target(poisoned_labels) -> int | None:
    """The attack's one target label, or None (all-to-all: every poisoned input has its own)."""
    targets = set(int(t) for t in poisoned_labels)
    return targets.pop() if len(targets) == 1 else None


def scan_fields(scan, target: int | None, prefix: str) -> dict[str, Any]:
    """A trigger scan's verdict as row fields: its largest anomaly index, top suspect, and (before
    a repair) whether that suspect is the attack's true target."""
    top = int(scan.suspects[0]) if scan.suspects else None
    fields = {f"{prefix}_anomaly": float(scan.max_anomaly), f"{prefix}_suspect": top}
    if prefix == "scan_b":
        fields["scan_target"] = target
        fields["scan_hit"] = None if target is None else top == target
    return fields


def zoo_directory(settings: BadNetSettings, cache_dir: str) -> str:
    """Where the zoo cache keeps this BadNet's files (cached_badnet's folder for `settings`)."""
    return os.path.join(cache_dir, f"seed{settings.seed}-{settings.fingerprint()}")


def zoo_inputs(directory: str) -> tuple[str, ...]:
    """The files of a cached zoo BadNet a cell reads: its model B and its data sets."""
    return (os.path.join(directory, MODEL_FILE), *(os.path.join(directory, name) for name in DATA_FILES.values()))


def _prepare_inputs(settings: BadNetSettings, cache_dir: str) -> tuple[str, ...]:
    """What a first-stage cell reads: B and its data, and the clean model its bar is measured
    against (missing before the cell trains them: the files it leaves count)."""
    clean = os.path.join(zoo_directory(settings.clean_reference(), cache_dir), MODEL_FILE)
    return zoo_inputs(zoo_directory(settings, cache_dir)) + (clean,)


def _zoo_files(directory: str):
    """A cached zoo BadNet's data sets (by role) and its model B."""
    return (
        load_sets({role: os.path.join(directory, name) for role, name in DATA_FILES.items()}),
        load_model(os.path.join(directory, MODEL_FILE)),
    )


def model_arithmetic(settings: BadNetSettings) -> int:
    """Multiply-adds per image of this BadNet's model (counted on an untrained one: the same layers),
    which grids weigh their cells' costs by, so that the longest cells start first."""
    return multiply_adds(settings.build_model(), tuple(settings.input_shape))


def prepare_badnet(
    settings: BadNetSettings,
    cache_dir: str,
    scan: bool = False,
    progress: bool = False,
    scan_schedule: str = "reference",
    part: str | None = None,
) -> dict[str, Any]:
    """A grid cell of the first stage: the zoo BadNet (trained if not cached), STRIP's detection on
    B, and (`scan`) the trigger scan of B, all shared by every repair of that BadNet. `part`: which
    part of its zoo it belongs to (default: the built-in zoo's part of its seed)."""
    directory, manifest, reference = zoo_badnet(settings, cache_dir, progress)
    zoo = {
        "directory": directory,
        "badnet": manifest["badnet"],
        "clean_reference": reference,
        "meets_bar": manifest["meets_bar"],
        "attack": manifest["attack"],
        "part": part or part_of(settings),
        "settings": manifest["settings"],
    }
    sets, model = _zoo_files(directory)
    strip = StripSettings().detect(model, sets["clean_test"].x, sets["poisoned_test"].x, sets["clean_valid"].x)
    clean = sets["clean_valid"]
    target = single_target(sets["poisoned_test"].y)
    before = (
        scan_fields(reverse_triggers(model, clean, clean.value_range, schedule=scan_schedule), target, "scan_b")
        if scan
        else {}
    )
    return {
        "label": settings.label(),
        "zoo": zoo,
        "strip": asdict(strip),
        "target": target,
        "scan_before": before,
    }


def repair_badnet(
    settings: BadNetSettings,
    repair: Repair,
    prepared: dict[str, Any],
    scan: bool = False,
    scan_schedule: str = "reference",
    relearn: RelearnSettings | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """A grid cell of the second stage: `goodnet defend --repair R` on one zoo BadNet; its table row.
    `relearn`: also the re-learning test, judged by the BadNet's clean reference model (in
    `cache_dir`), as `defend --relearn --relearn-reference` would."""
    sets, model = _zoo_files(prepared["zoo"]["directory"])
    test = None
    if relearn is not None:
        reference = os.path.join(
            zoo_directory(settings.clean_reference(), cache_dir or default_cache_dir("zoo")), MODEL_FILE
        )
        test = RelearnTest(relearn, load_model(reference), os.path.abspath(reference))
    result = run_repair(model, repair, sets, relearn=test)
    row = comparison_row(
        settings, prepared["zoo"]["meets_bar"], result, DetectionScore(**prepared["strip"]), prepared["zoo"]["part"]
    )
    if scan:
        clean = sets["clean_valid"]
        after = reverse_triggers(result.models[0].repaired.model, clean, clean.value_range, schedule=scan_schedule)
        row.update(prepared["scan_before"], **scan_fields(after, prepared["target"], "scan_after"))
    return row


def _row_summary(row: dict[str, Any]) -> str:
    return f"ASR {row['asr']:.2f}, clean drop {row['clean_drop']:.2f}, {row['seconds']:.1f} s"


def compare(
    badnets: Sequence[BadNetSettings],
    repairs: Sequence[Repair],
    cache_dir: str,
    progress: bool = True,
    scan: bool = False,
    runner: GridRunner = GridRunner(),
    state_dir: str | None = None,
    scan_schedule: str = "reference",
    relearn: RelearnSettings | None = None,
    config: ZooConfig | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every repair on every zoo BadNet (trained first if not cached); (rows, zoo description).
    A grid of two stages (each BadNet, then each BadNet x repair), run by `runner`; every finished
    cell is kept in `state_dir` (a temporary folder when None), so a rerun with the same folder
    resumes. `scan`: also reverse triggers (Neural Cleanse, clean validation data only) of every B
    and every B', recording whether the scan names the true target and whether its index fell.
    `relearn`: also the re-learning test of every B', each BadNet's clean reference model judging.
    `config`: the zoo the BadNets come from (default: the built-in one), which says their parts."""
    sequential = runner.ray is None and runner.workers == 1
    if not sequential:  # BadNets of one architecture share a clean reference: train each once, here
        for settings in badnets:
            clean_reference_scores(settings, cache_dir, progress)
    arithmetic = {s.label(): model_arithmetic(s) for s in badnets}  # cell costs: longest cells first
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="goodnet-compare-"))
        prepared = run_grid(
            [
                GridCell(
                    f"badnet {s.label()}",
                    prepare_badnet,
                    {
                        "settings": s,
                        "cache_dir": cache_dir,
                        "scan": scan,
                        "scan_schedule": scan_schedule,
                        **({"part": config.part_of(s)} if config is not None else {}),
                    },
                    {"progress": progress and sequential},
                    inputs=_prepare_inputs(s, cache_dir),
                    cost=float(arithmetic[s.label()] * s.epochs),
                )
                for s in badnets
            ],
            os.path.join(state_dir, "badnets"),
            runner,
            "BadNets" if progress else None,
            lambda p: "meets its bar" if p["zoo"]["meets_bar"] else "missed its bar",
        )
        cells = [
            GridCell(
                f"{s.label()} {r.name}",
                repair_badnet,
                {
                    "settings": s,
                    "repair": r,
                    "prepared": p,
                    "scan": scan,
                    "scan_schedule": scan_schedule,
                    **({"relearn": relearn, "cache_dir": cache_dir} if relearn is not None else {}),
                },
                inputs=zoo_inputs(p["zoo"]["directory"])
                + ((os.path.join(zoo_directory(s.clean_reference(), cache_dir), MODEL_FILE),) if relearn else ()),
                cost=r.relative_cost * arithmetic[s.label()],
            )
            for s, p in zip(badnets, prepared)
            for r in repairs
        ]
        rows = run_grid(
            cells, os.path.join(state_dir, "repairs"), runner, "repairs" if progress else None, _row_summary
        )
    return rows, {p["label"]: p["zoo"] for p in prepared}


def run_comparison(
    out_dir: str,
    repairs: Sequence[str] | None = None,
    part: str = "eval",
    only: Sequence[str] | None = None,
    cache_dir: str | None = None,
    workers: int = 1,
    threads: int | None = None,
    ray: str | None = None,
    progress: bool = True,
    scan: bool = False,
    scan_schedule: str = "reference",
    relearn: RelearnSettings | None = None,
    config: str | os.PathLike | ZooConfig | None = None,
) -> list[dict[str, Any]]:
    """Every repair of `repairs` (default: the comparison's roster) on every zoo BadNet of `part`
    (or those whose label holds one of `only`), the BadNets kept in `cache_dir` (default: the zoo
    cache), on a grid runner of `workers` processes, `threads` each, or on Ray at `ray`; write
    comparison.* into `out_dir` and return the rows. `relearn`: also the re-learning test of every
    B' against its BadNet's clean reference model. `config`: a zoo configuration file (or one
    loaded) whose BadNets to compare instead of the built-in zoo's. Everything is checked before
    any training."""
    roster = comparison_roster(repairs)
    if config is not None and not isinstance(config, ZooConfig):
        config = load_zoo_config(as_path(config, "config", SettingsError, "a zoo configuration file path"))
    badnets = select_badnets(part, only, config)
    if relearn is not None and not isinstance(relearn, RelearnSettings):
        raise SettingsError(f"relearn must be a RelearnSettings or None, not {type(relearn).__name__}")
    check_ray_address(ray)  # before any training: an unreachable cluster is refused at once
    runner = GridRunner(workers=workers, threads=threads, ray=ray)
    cache_dir = cache_dir or default_cache_dir("zoo")
    inputs = zoo_run_inputs(cache_dir, config)
    check_output_dir(out_dir, marker="comparison.json", claim=True, inputs=inputs)
    state = claim_state_dir(out_dir, inputs)
    rows, zoo = compare(
        badnets,
        roster,
        cache_dir,
        progress=progress,
        scan=scan,
        runner=runner,
        state_dir=state,
        scan_schedule=scan_schedule,
        relearn=relearn,
        config=config,
    )
    write_comparison(
        out_dir,
        rows,
        zoo,
        roster,
        runner.describe(),
        None if relearn is None else relearn.to_json(),
        None if config is None else config.describe(),
    )
    shutil.rmtree(state, ignore_errors=True)  # every cell is in the output now
    return rows


__all__ = [
    "compare",
    "comparison_roster",
    "prepare_badnet",
    "repair_badnet",
    "zoo_directory",
    "zoo_inputs",
    "run_comparison",
]
