"""Backdoor triggers, applied to raw-pixel images (N, C, H, W)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PatchTrigger:
    """A solid square of `value` pixels, `margin` pixels from the bottom-right corner (BadNets)."""

    size: int = 4
    value: float = 255.0
    margin: int = 1

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        bottom, right = height - self.margin, width - self.margin
        return slice(bottom - self.size, bottom), slice(right - self.size, right)

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        rows, cols = self.region(x.shape[2], x.shape[3])
        out[:, :, rows, cols] = self.value
        return out

    def describe(self) -> dict:
        return {"kind": "patch", **asdict(self)}


@dataclass(frozen=True)
class BlendTrigger:
    """A fixed random full-image pattern mixed in at `ratio` (Chen et al. 2017's blended attack)."""

    ratio: float = 0.1
    pattern_seed: int = 12345

    def pattern(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng(self.pattern_seed).uniform(0, 255, shape).astype(np.float32)

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        return slice(0, height), slice(0, width)

    def apply(self, x: np.ndarray) -> np.ndarray:
        mixed = (1 - self.ratio) * x + self.ratio * self.pattern(x.shape[1:])[None]
        return mixed.astype(x.dtype)

    def describe(self) -> dict:
        return {"kind": "blended", **asdict(self)}


@dataclass(frozen=True)
class SunglassesTrigger:
    """A larger occluding shape near the top: two solid lenses and a bridge, like the lab's
    sunglasses (for 28x28 digits: lenses 4x6 at rows 2-5, 52 pixels, over three times the patch).
    Placed lower (rows 6-10, 74 pixels) it erased half the digits' identity even for a clean model,
    so no repair could tell a surviving backdoor from plain misreading."""

    value: float = 255.0
    top: int = 2
    lens_height: int = 4
    lens_width: int = 6
    gap: int = 4

    def mask(self, height: int, width: int) -> np.ndarray:
        m = np.zeros((height, width), dtype=bool)
        left = (width - 2 * self.lens_width - self.gap) // 2
        rows = slice(self.top, self.top + self.lens_height)
        m[rows, left:left + self.lens_width] = True
        m[rows, left + self.lens_width + self.gap:left + 2 * self.lens_width + self.gap] = True
        m[self.top + 1, left + self.lens_width:left + self.lens_width + self.gap] = True  # bridge
        return m

    def apply(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[:, :, self.mask(x.shape[2], x.shape[3])] = self.value
        return out

    def describe(self) -> dict:
        return {"kind": "sunglasses", **asdict(self)}
