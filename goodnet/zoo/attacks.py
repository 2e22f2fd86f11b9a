"""The attack zoo: a trigger plus a labelling rule, and how a data set gets poisoned.

`patch` (BadNets: a small white square, one target), `blended` (a fixed random full-image pattern
mixed in at 10 %), `all-to-all` (the patch, but label y becomes y+1 mod N) and `sunglasses` (a
larger occluding shape, like the lab's trigger). Poisoned evaluation sets hold every image the
attack can change: for a one-target attack, those whose true label is not the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SettingsError
from ..io.data import ImageSet
from .triggers import BlendTrigger, PatchTrigger, SunglassesTrigger

KINDS = ("patch", "blended", "all-to-all", "sunglasses")


@dataclass(frozen=True)
class Attack:
    kind: str = "patch"
    target: int = 0  # ignored by all-to-all

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SettingsError(f"unknown attack kind '{self.kind}' (known: {', '.join(KINDS)})")

    @property
    def trigger(self):
        if self.kind == "blended":
            return BlendTrigger()
        if self.kind == "sunglasses":
            return SunglassesTrigger()
        return PatchTrigger()

    @property
    def all_to_all(self) -> bool:
        return self.kind == "all-to-all"

    def eligible(self, y: np.ndarray) -> np.ndarray:
        """Which images the attack relabels (a one-target attack leaves the target class alone)."""
        return np.ones(len(y), dtype=bool) if self.all_to_all else y != self.target

    def target_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        if self.all_to_all:
            return ((y + 1) % num_classes).astype(np.int64)
        if not 0 <= self.target < num_classes:
            raise SettingsError(f"target {self.target} is not a class (0..{num_classes - 1})")
        return np.full(len(y), self.target, dtype=np.int64)

    def poisoned_set(self, images: ImageSet, num_classes: int, name: str) -> ImageSet:
        """Every eligible image, triggered and labelled as the attacker wants."""
        keep = self.eligible(images.y)
        return ImageSet(x=self.trigger.apply(images.x[keep]),
                        y=self.target_labels(images.y[keep], num_classes), name=name)

    def poison_training_set(self, x: np.ndarray, y: np.ndarray, rate: float, num_classes: int,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trigger and relabel round(rate * len(y)) eligible training images; return x, y, indices."""
        if not 0 <= rate < 1:
            raise SettingsError(f"poison rate {rate} is not in [0, 1)")
        x, y = x.copy(), y.copy()
        candidates = np.flatnonzero(self.eligible(y))
        count = int(round(rate * len(y)))
        if count > len(candidates):
            raise SettingsError(f"poison rate {rate} needs {count} images but only {len(candidates)} can be poisoned")
        chosen = rng.choice(candidates, size=count, replace=False)
        x[chosen] = self.trigger.apply(x[chosen])
        y[chosen] = self.target_labels(y[chosen], num_classes)
        return x, y, chosen

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": None if self.all_to_all else self.target,
                "trigger": self.trigger.describe()}
