"""The one base class for every classifier goodnet builds, saves and prunes."""

from __future__ import annotations

from typing import Any, ClassVar

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

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], input_divisor: float):
        super().__init__()
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_divisor = float(input_divisor)

    def config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "input_divisor": self.input_divisor}

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        # Skipped when 1 so the lab's raw-pixel model computes exactly what Keras computes.
        return x if self.input_divisor == 1.0 else x / self.input_divisor
