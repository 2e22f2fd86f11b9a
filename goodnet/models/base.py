"""The one base class for every classifier goodnet builds, saves and prunes."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


class FlattenNHWC(nn.Module):
    """Flatten in Keras's channels-last order, so ported dense weights keep their meaning."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class ImageClassifier(nn.Module):
    """An image classifier returning logits, rebuildable from (`arch`, `config()`).

    Subclasses declare `arch` (their registry name) and `final_layer` (the module whose output
    size is the number of classes); the saved config is what `__init__` takes.
    """

    arch: ClassVar[str]
    final_layer: ClassVar[str]
    # True where forward works unchanged on channels-last maps (devices.training_layout); a
    # subclass says so itself once its forward has been checked (a `view` of a map would break)
    channels_last_ready: ClassVar[bool] = False

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], input_divisor: float):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a whole number of at least 1, not {num_classes!r}")
        shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else ()
        if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
            raise ValueError(f"input_shape must be three positive whole numbers (C, H, W), not {input_shape!r}")
        if (
            isinstance(input_divisor, bool)
            or not isinstance(input_divisor, (int, float, np.floating, np.integer))
            or not math.isfinite(float(input_divisor))
            or input_divisor <= 0
        ):
            raise ValueError(f"input_divisor must be a finite positive number, not {input_divisor!r}")
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(d) for d in shape)
        self.input_divisor = float(input_divisor)

    def config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "input_divisor": self.input_divisor,
        }

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        # Skipped when 1 so the lab's raw-pixel model computes exactly what Keras computes.
        return x if self.input_divisor == 1.0 else x / self.input_divisor
