"""Every registered repair on every zoo BadNet: the grid behind `goodnet compare`.

Each cell is exactly `goodnet defend --repair R` (at the settings the repair declares for
comparison, with the default do-no-harm budget) on the zoo BadNet's files, so any cell can be
re-run on its own and must give the same numbers (a test does). The roster is the registry: a
repair registered anywhere, a plugin's included, appears here without this file changing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

from .inspection.strip import StripSettings
from .inspection.trigger_reversal import reverse_triggers
from .io.data import load_sets
from .io.model_files import load_model
from .progress import progress as progress_bar
from .repairs import REPAIRS, Repair, build_repair, repair_names, run_repair
from .report.comparison import comparison_row
from .zoo.badnets import DATA_FILES, MODEL_FILE, BadNetSettings, zoo_badnet
from .zoo.catalog import part_of


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


def compare(badnets: Sequence[BadNetSettings], repairs: Sequence[Repair], cache_dir: str, progress: bool = True,
            scan: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every repair on every zoo BadNet (trained first if not cached); (rows, zoo description).
    `scan`: also reverse triggers (Neural Cleanse, clean validation data only) of every B and every
    B', recording whether the scan names the true target and whether its anomaly index fell."""
    rows, zoo = [], {}
    cells, done, start = len(badnets) * len(repairs), 0, time.perf_counter()
    for settings in badnets:
        label = settings.label()
        directory, manifest, reference = zoo_badnet(settings, cache_dir, progress)
        zoo[label] = {"directory": directory, "badnet": manifest["badnet"], "clean_reference": reference,
                      "meets_bar": manifest["meets_bar"], "attack": manifest["attack"], "part": part_of(settings),
                      "settings": manifest["settings"]}
        sets = load_sets({role: os.path.join(directory, name) for role, name in DATA_FILES.items()})
        model = load_model(os.path.join(directory, MODEL_FILE))
        strip = StripSettings().detect(model, sets["clean_test"].x, sets["poisoned_test"].x, sets["clean_valid"].x)
        clean = sets["clean_valid"]
        target = single_target(sets["poisoned_test"].y)
        before = scan_fields(reverse_triggers(model, clean, clean.value_range), target, "scan_b") if scan else {}
        for repair in progress_bar(list(repairs), f"repairs on {label}" if progress else None):
            result = run_repair(model, repair, sets)
            rows.append(comparison_row(settings, manifest["meets_bar"], result, strip))
            if scan:
                after = reverse_triggers(result.models[0].repaired.model, clean, clean.value_range)
                rows[-1].update(before, **scan_fields(after, target, "scan_after"))
            done += 1
            if progress:  # one line per cell, for logs where no progress bar shows
                row = rows[-1]
                print(f"[{done}/{cells} cells, {time.perf_counter() - start:.0f} s] {label} {repair.name}: "
                      f"ASR {row['asr']:.2f}, clean drop {row['clean_drop']:.2f}, {row['seconds']:.1f} s",
                      file=sys.stderr, flush=True)
    return rows, zoo


__all__ = ["compare", "comparison_roster"]
