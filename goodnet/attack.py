"""Train one zoo BadNet into a folder: `goodnet attack` as one call.

The folder gets lab-format data (clean/poisoned valid/test .h5), the trained BadNet and
manifest.json, which records its scores beside those of a clean model trained the same way (kept
in the zoo cache) and whether it meets the zoo's bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SettingsError
from .io.output_dir import check_not_an_input, check_output_dir
from .zoo.badnets import (
    MANIFEST,
    BadNetSettings,
    build_badnet,
    clean_reference,
    default_cache_dir,
    meets_bar,
)


@dataclass(frozen=True)
class AttackRun:
    manifest: dict[str, Any]  # manifest.json of the folder written
    reference: dict[str, Any]  # the clean model's accuracies

    @property
    def meets_bar(self) -> bool:
        """ASR and clean accuracy good enough for the zoo (see zoo.badnets.meets_bar)."""
        return meets_bar(self.manifest["badnet"], self.reference)


def attack_files(
    settings: BadNetSettings,
    out_dir: str | os.PathLike,
    cache_dir: str | None = None,
    progress: bool = True,
    data: str | None = None,
) -> AttackRun:
    """Write the BadNet `settings` describes, with its data, into `out_dir`; the clean reference
    model is trained into (or reused from) `cache_dir` (default: the zoo cache). `data`: the user's
    dataset the settings were read from (never written into). Every setting and the output folder
    are checked before any training."""
    if settings.epochs < 1:
        raise SettingsError("--epochs must be at least 1")
    settings.attack.target_labels(np.zeros(1, dtype=np.int64), settings.num_classes)  # one line for a bad target
    if not 0 < settings.poison_rate < 1:
        raise SettingsError(f"--poison-rate must be in (0, 1), not {settings.poison_rate}")
    cache_dir = cache_dir or default_cache_dir("zoo")
    out_dir = os.fspath(out_dir)
    if data is not None:  # the zoo cache is written into: never inside the dataset
        check_not_an_input(cache_dir, [data], option="--cache-dir")
    check_output_dir(out_dir, marker=MANIFEST, claim=True, inputs=[cache_dir, data])  # before training, not after
    reference_file, reference = clean_reference(settings, cache_dir, progress)
    manifest = build_badnet(settings, out_dir, progress=progress, reference=reference, reference_model=reference_file)
    return AttackRun(manifest, reference)
