"""The demo: a BadNet built from bundled MNIST digits (cached), then exactly `goodnet defend` with
the prune repair on its files. `goodnet demo` is one call of `run_demo`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .defend import DefenseRun, defend
from .io.output_dir import check_not_an_input, check_output_dir
from .repairs import build_repair
from .spec import DefenseSpec
from .zoo.badnets import (
    DATA_FILES,
    MODEL_FILE,
    DemoSettings,
    cached_badnet,
    default_cache_dir,
)

SHIPPED = "shipped with goodnet"  # a manifest's "weights" when built from the weights in the package


@dataclass(frozen=True)
class DemoBadNet:
    """The demo's BadNet, ready in the cache: its settings, folder, manifest and whether it was reused."""

    settings: DemoSettings
    directory: str
    manifest: dict[str, Any]
    reused: bool  # found in the cache (else built now)

    @property
    def shipped(self) -> bool:
        """Built now from the weights shipped with goodnet (not trained here)."""
        return not self.reused and self.manifest.get("weights") == SHIPPED

    @property
    def data_paths(self) -> dict[str, str]:
        return {role: os.path.join(self.directory, name) for role, name in DATA_FILES.items()}

    @property
    def model_path(self) -> str:
        return os.path.join(self.directory, MODEL_FILE)


def run_demo(
    out_dir: str,
    seed: int = 0,
    cache_dir: str | None = None,
    retrain: bool = False,
    repair_settings: dict[str, Any] | None = None,
    progress: bool = True,
    ready: Callable[[DemoBadNet], None] | None = None,
) -> DefenseRun:
    """Build (or reuse from `cache_dir`, default the demo cache) the demo's BadNet for `seed`, then
    defend it with the prune repair at `repair_settings` into `out_dir`. `retrain`: train it here
    instead of reusing the cache or the shipped weights. `ready` is called with the BadNet before the
    defense starts (the CLI says what it is about to run)."""
    repair = build_repair("prune", repair_settings)
    settings = DemoSettings(seed=seed)
    cache_dir = cache_dir or default_cache_dir()
    check_not_an_input(out_dir, [cache_dir])  # before building anything into the cache
    check_output_dir(out_dir)  # and before saying anything
    directory, manifest, reused = cached_badnet(settings, cache_dir, retrain=retrain, progress=progress)
    badnet = DemoBadNet(settings, directory, manifest, reused)
    if ready is not None:
        ready(badnet)
    return defend(DefenseSpec.build(badnet.model_path, badnet.data_paths, out_dir, repair, progress=progress))
