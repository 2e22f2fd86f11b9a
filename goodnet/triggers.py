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
