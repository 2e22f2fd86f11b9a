"""The attack zoo: a trigger plus a labelling rule, and how a data set gets poisoned.

`patch` (BadNets: a small white square, one target), `blended` (a fixed random full-image pattern
mixed in at 10 %), `all-to-all` (the patch, but label y becomes y+1 mod N), `sunglasses` (a
larger occluding shape, like the lab's trigger), `wanet` (a fixed smooth warp of the whole image,
Nguyen & Tran 2021), `sig` (a faint horizontal sinusoid, Barni et al. 2019, here poison-label:
see below) and `moving-patch` (a 4x4 checkerboard patch at a random place in every image; see
triggers.MovingPatchTrigger for why it is not solid). Poisoned evaluation sets hold every image the
attack can change: for a one-target attack, those whose true label is not the target.

Triggers work in any pixel range: `value_range` (default raw 0..255) is passed through to them,
and on any number of channels. Their sizes in pixels are set for 28 x 28 images; given the images'
size (`image_size`), an attack scales them by the shorter side and refuses a trigger that does not
fit. The built-in zoo keeps the sizes as set (its DeepID BadNet carries them on digits resized to
55 x 47).

Why the zoo's `sig` relabels its poisoned images: the paper's SIG is clean-label: only
target-class training images get the sinusoid and every label is kept. On the zoo's digits that
plants no backdoor, even with every target-class training image carrying the signal: the digits'
shapes explain the target class completely, so the faint signal is never needed. The zoo therefore
uses the poison-label variant (10 % of the non-target images get the signal and the target label,
like the other attacks); the paper's clean-label form is available as Attack("sig", clean_label=True).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ..errors import SettingsError
from ..io.data import ImageSet
from .triggers import (
    RAW_RANGE,
    BlendTrigger,
    MovingPatchTrigger,
    PatchTrigger,
    SinusoidTrigger,
    SunglassesTrigger,
    ValueRange,
    WarpTrigger,
    scaled_pixels,
)

KINDS = ("patch", "blended", "all-to-all", "sunglasses", "wanet", "sig", "moving-patch")


SHARES = ("level", "ratio")  # trigger settings that are shares of the value range, 0..1
AT_LEAST_ONE = ("size", "lens_height", "lens_width", "grid_size")  # pixel counts that cannot be 0


def _check_trigger_value(kind: str, name: str, value, default) -> None:
    """A trigger setting given in a configuration: of its default's type and in its range."""
    where = f"the {kind} trigger's `{name}`"
    if isinstance(default, bool) or isinstance(default, str):
        if type(value) is not type(default):
            raise SettingsError(f"{where} must be {'text' if isinstance(default, str) else 'true or false'}")
        return
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise SettingsError(f"{where} must be a whole number >= 0, not {value!r}")
        if name == "grid_size" and value < 2:
            raise SettingsError(f"{where} must be at least 2, not {value!r}")
        if name in AT_LEAST_ONE and value < 1:
            raise SettingsError(f"{where} must be at least 1, not {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SettingsError(f"{where} must be a number, not {value!r}")
    if name in SHARES and not 0 <= value <= 1:
        raise SettingsError(f"{where} is a share of the value range, from 0 to 1, not {value!r}")
    if name != "delta" and value <= 0 and name not in SHARES:
        raise SettingsError(f"{where} must be above 0, not {value!r}")


@dataclass(frozen=True)
class Attack:
    kind: str = "patch"
    target: int = 0  # ignored by all-to-all
    clean_label: bool = False  # poison only target-class training images and keep every label
    # the trigger's own settings changed from its defaults, as (name, value) pairs (e.g. (("size", 3),))
    params: tuple[tuple[str, Any], ...] = ()
    # (height, width) of the images: the trigger's pixel sizes are scaled to them from 28 x 28 and it
    # must fit them; None: the sizes as set (the built-in zoo's)
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SettingsError(f"unknown attack kind '{self.kind}' (known: {', '.join(KINDS)})")
        if self.clean_label and self.all_to_all:
            raise SettingsError("an all-to-all attack cannot be clean-label (it has no target class)")
        self.trigger  # noqa: B018  (unknown trigger settings and a trigger too large are refused now)

    def _base_trigger(self):
        if self.kind == "blended":
            return BlendTrigger()
        if self.kind == "sunglasses":
            return SunglassesTrigger()
        if self.kind == "wanet":
            return WarpTrigger()
        if self.kind == "sig":
            return SinusoidTrigger()
        if self.kind == "moving-patch":
            return MovingPatchTrigger(pattern="checker")  # a solid one is not learnt: see the trigger
        return PatchTrigger()

    @property
    def trigger(self):
        trigger = self._base_trigger()
        if self.image_size is not None:
            trigger = scaled_pixels(trigger, *self.image_size)
        if self.params:
            known = [f.name for f in fields(trigger)]
            unknown = [name for name, _ in self.params if name not in known]
            if unknown:
                raise SettingsError(
                    f"the {self.kind} trigger has no setting '{unknown[0]}' (known: {', '.join(known)})"
                )
            for name, value in self.params:
                _check_trigger_value(self.kind, name, value, getattr(trigger, name))
            try:
                trigger = replace(trigger, **dict(self.params))
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"the {self.kind} trigger: {exc}") from None
        if self.image_size is not None:
            too_large = getattr(trigger, "fits", lambda h, w: None)(*self.image_size)
            if too_large:
                height, width = self.image_size
                raise SettingsError(f"the {self.kind} trigger ({too_large}) does not fit {height} x {width} images")
        return trigger

    @property
    def all_to_all(self) -> bool:
        return self.kind == "all-to-all"

    def eligible(self, y: np.ndarray) -> np.ndarray:
        """Which images the attack turns to its target (a one-target attack leaves the target class
        alone): the poisoned evaluation set, and the poisoned training images of a poison-label attack."""
        return np.ones(len(y), dtype=bool) if self.all_to_all else y != self.target

    def poison_candidates(self, y: np.ndarray) -> np.ndarray:
        """Which training images may be poisoned: target-class ones for a clean-label attack (the
        model is to learn the trigger as a feature of the target class, not from relabelling; the
        poison rate is still a share of the whole training set)."""
        if self.clean_label:
            return y == self.target
        return self.eligible(y)

    def target_labels(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        if self.all_to_all:
            return ((y + 1) % num_classes).astype(np.int64)
        if not 0 <= self.target < num_classes:
            raise SettingsError(f"target {self.target} is not a class (0..{num_classes - 1})")
        return np.full(len(y), self.target, dtype=np.int64)

    def poisoned_set(
        self,
        images: ImageSet,
        num_classes: int,
        name: str,
        value_range: ValueRange = RAW_RANGE,
        rng: np.random.Generator | None = None,
    ) -> ImageSet:
        """Every eligible image, triggered and labelled as the attacker wants. `rng`: for triggers
        that draw per image (the moving patch); without one they use their own seeded generator."""
        keep = self.eligible(images.y)
        return ImageSet(
            x=self.trigger.apply(images.x[keep], value_range, rng),
            y=self.target_labels(images.y[keep], num_classes),
            name=name,
        )

    def poison_training_set(
        self,
        x: np.ndarray,
        y: np.ndarray,
        rate: float,
        num_classes: int,
        rng: np.random.Generator,
        value_range: ValueRange = RAW_RANGE,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trigger round(rate * len(y)) training images and relabel them (a clean-label attack
        triggers target-class images and keeps their labels); return x, y, indices. `rng` picks
        the images and then draws whatever the trigger draws per image."""
        if not 0 <= rate < 1:
            raise SettingsError(f"poison rate {rate} is not in [0, 1)")
        x, y = x.copy(), y.copy()
        candidates = np.flatnonzero(self.poison_candidates(y))
        count = int(round(rate * len(y)))
        if count > len(candidates):
            which = f"target-class (label {self.target}) " if self.clean_label else ""
            raise SettingsError(
                f"poison rate {rate} needs {count} images but only {len(candidates)} {which}can be poisoned"
            )
        if self.clean_label and not 0 <= self.target < num_classes:
            raise SettingsError(f"target {self.target} is not a class (0..{num_classes - 1})")
        chosen = rng.choice(candidates, size=count, replace=False)
        x[chosen] = self.trigger.apply(x[chosen], value_range, rng)
        if not self.clean_label:
            y[chosen] = self.target_labels(y[chosen], num_classes)
        return x, y, chosen

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": None if self.all_to_all else self.target,
            "clean_label": self.clean_label,
            "trigger": self.trigger.describe(),
        }
