"""GoodNet G: one module that runs B and B' and flags disagreement.

B' differs from B only by pruned channels of one conv layer, so B and B' share everything before
the cut: G runs that trunk once and the tail twice (on the cut tensor as is, and with the pruned
channels zeroed). It holds one copy of B's weights plus a channel mask.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .graph_split import split_at_conv
from .pruning import pruned_copy


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


class TwoModelGoodNet(GoodNet):
    """G for models that cannot be split (TorchScript): runs B and B' in full."""

    def __init__(self, backdoored: nn.Module, repaired: nn.Module):
        super().__init__(backdoored.num_classes)
        self.backdoored = backdoored.eval()
        self.repaired = repaired.eval()
        self.input_shape = tuple(backdoored.input_shape)

    def both_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backdoored(x).argmax(dim=1), self.repaired(x).argmax(dim=1)


class ScriptableGoodNet(nn.Module):
    """TwoModelGoodNet in a form torch.jit.script accepts, for saving G as one TorchScript file."""

    def __init__(self, backdoored: nn.Module, repaired: nn.Module, extra_class: int):
        super().__init__()
        self.backdoored = backdoored
        self.repaired = repaired
        self.extra_class = extra_class

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backdoored(x).argmax(dim=1)
        r = self.repaired(x).argmax(dim=1)
        return torch.where(b == r, b, torch.full_like(b, self.extra_class))


def build_goodnet(backdoored: nn.Module, layer: str, pruned: Sequence[int]) -> GoodNet:
    """The cheapest exact G for this model: one trunk and two tails when it can be traced."""
    if isinstance(backdoored, torch.jit.ScriptModule):
        return TwoModelGoodNet(backdoored, pruned_copy(backdoored, layer, pruned))
    return PrunedGoodNet(backdoored, layer, pruned)


class PrunedGoodNet(GoodNet):
    """G for B' = B with channels `pruned` of conv `layer` zeroed."""

    def __init__(self, backdoored: nn.Module, layer: str, pruned: Sequence[int]):
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
