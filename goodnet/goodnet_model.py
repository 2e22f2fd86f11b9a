"""GoodNet G: one module that runs B and B' and flags disagreement.

B' differs from B only by pruned channels of one conv layer, so B and B' share everything before
the cut: G runs that trunk once and the tail twice (on the cut tensor as is, and with the pruned
channels zeroed). It holds one copy of B's weights plus a channel mask.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .architectures import ImageClassifier
from .graph_split import split_at_conv


class GoodNet(nn.Module):
    """Base class: forward(x) returns labels in [0, num_classes], num_classes meaning 'poisoned'."""

    outputs_labels = True

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)

    @property
    def extra_class(self) -> int:
        return self.num_classes

    def both_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, r = self.both_labels(x)
        return torch.where(b == r, b, torch.full_like(b, self.extra_class))


class PrunedGoodNet(GoodNet):
    """G for B' = B with channels `pruned` of conv `layer` zeroed."""

    def __init__(self, backdoored: ImageClassifier, layer: str, pruned: Sequence[int]):
        super().__init__(backdoored.num_classes)
        self.backdoored = backdoored.eval()
        self.layer = layer
        self.pruned = [int(c) for c in pruned]
        split = split_at_conv(backdoored, layer)
        # Kept out of the module tree: they share B's parameters, which are saved once via `backdoored`.
        object.__setattr__(self, "_split", split)
        keep = torch.ones(split.num_channels)
        keep[self.pruned] = 0
        self.register_buffer("keep", keep)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.backdoored.input_shape

    def both_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crossing = self._split.trunk(x)
        original = self._split.tail(*crossing).argmax(dim=1)
        repaired = self._split.masked_tail(crossing, self.keep).argmax(dim=1)
        return original, repaired
