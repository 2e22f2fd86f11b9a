"""Every registered repair on every zoo BadNet: the grid behind `goodnet compare`.

Each cell is exactly `goodnet defend --repair R` (at the settings the repair declares for
comparison) on the zoo BadNet's files, so any cell can be re-run on its own and must give the
same numbers (a test does). The roster is the registry: a repair registered anywhere, a plugin's
included, appears here without this file changing.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from .io.data import load_sets
from .io.model_files import load_model
from .progress import progress as progress_bar
from .repairs import REPAIRS, Repair, build_repair, repair_names, run_repair
from .report.comparison import comparison_row
from .zoo.attacks import KINDS
from .zoo.badnets import DATA_FILES, MODEL_FILE, BadNetSettings, zoo_badnet


def comparison_roster(names: Sequence[str] | None = None) -> list[Repair]:
    """The repairs `compare` runs: `names`, or every registered repair that can run on the zoo."""
    names = [n for n in repair_names() if REPAIRS[n].in_comparison] if names is None else list(names)
    return [build_repair(name, comparison=True) for name in names]


def compare(kinds: Sequence[str], repairs: Sequence[Repair], cache_dir: str, progress: bool = True
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every repair on every zoo BadNet; (rows, zoo description)."""
    rows, zoo = [], {}
    for kind in kinds:
        directory, manifest, reference = zoo_badnet(BadNetSettings(kind=kind), cache_dir, progress)
        zoo[kind] = {"directory": directory, "badnet": manifest["badnet"], "clean_reference": reference,
                     "meets_bar": manifest["meets_bar"], "attack": manifest["attack"]}
        sets = load_sets({role: os.path.join(directory, name) for role, name in DATA_FILES.items()})
        model = load_model(os.path.join(directory, MODEL_FILE))
        for repair in progress_bar(list(repairs), f"repairs on {kind}" if progress else None):
            rows.append(comparison_row(kind, run_repair(model, repair, sets)))
    return rows, zoo


__all__ = ["KINDS", "compare", "comparison_roster"]
