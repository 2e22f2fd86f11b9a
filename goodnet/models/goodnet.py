"""GoodNet G: one module that runs B and B' and flags disagreement, with its one labelling rule.

When B' differs from B only by pruned channels of one conv layer, B and B' share everything before
the cut: `PrunedGoodNet` runs that trunk once and the tail twice (on the cut tensor as is, and with
the pruned channels zeroed), holding one copy of B's weights plus a channel mask. Otherwise
(fine-tuned weights, several layers, TorchScript) `TwoModelGoodNet` runs B and B' in full.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..pruning.graph_split import split_at_conv


def goodnet_rule(backdoored: torch.Tensor, repaired: torch.Tensor, extra_class: int) -> torch.Tensor:
    """G's answer: the shared label where B and B' agree, `extra_class` ("poisoned") elsewhere.
    The only place the rule is written; TorchScript and ONNX exports compile this function."""
    return torch.where(backdoored == repaired, backdoored, torch.full_like(backdoored, extra_class))


def goodnet_labels(backdoored: np.ndarray, repaired: np.ndarray, extra_class: int) -> np.ndarray:
    """`goodnet_rule` on label arrays (B's and B''s predictions)."""
    return goodnet_rule(
        torch.from_numpy(np.asarray(backdoored, dtype=np.int64)),
        torch.from_numpy(np.asarray(repaired, dtype=np.int64)),
        extra_class,
    ).numpy()


class GoodNet(nn.Module):
    """Base class: forward(x) returns labels in [0, num_classes], num_classes meaning 'poisoned'."""

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
        return goodnet_rule(b, r, self.extra_class)


class TwoModelGoodNet(GoodNet):
    """G for a B' that is not B with one conv's channels zeroed (or cannot be split): runs both."""

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
        return goodnet_rule(self.backdoored(x).argmax(dim=1), self.repaired(x).argmax(dim=1), self.extra_class)


class ScriptedGoodNet(GoodNet):
    """A G read back from a TorchScript file: its compiled forward already returns labels."""

    def __init__(self, scripted: nn.Module):
        super().__init__(scripted.num_classes)
        self.scripted = scripted
        self.input_shape = scripted.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)


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

    def _apply(self, fn, *args, **kwargs):
        """After a move (`.to(device)`, `.double()`), split B again: torch.fx gives the trunk and tail
        their own references to B's top-level buffers, which a move of B replaces."""
        result = super()._apply(fn, *args, **kwargs)
        object.__setattr__(self, "_split", split_at_conv(self.backdoored, self.layer))
        return result

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.backdoored.input_shape

    def part_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B's and B''s scores (logits) on `x`, from one pass of the trunk."""
        crossing = self._split.trunk(x)
        return self._split.tail(*crossing), self._split.masked_tail(crossing, self.keep)

    def both_labels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        crossing = self._split.trunk(x)
        original = self._split.tail(*crossing).argmax(dim=1)
        repaired = self._split.masked_tail(crossing, self.keep).argmax(dim=1)
        return original, repaired


def build_goodnet(
    backdoored: nn.Module, repaired: nn.Module, single_layer: tuple[str, Sequence[int]] | None = None
) -> GoodNet:
    """The cheapest exact G: one trunk and two tails when B' is B with the channels of one conv
    zeroed (`single_layer` = (layer, channels)) and B can be traced; else B and B' in full."""
    for name, model in (("backdoored", backdoored), ("repaired", repaired)):
        if not isinstance(model, nn.Module) or isinstance(model, GoodNet):
            raise ModelError(f"build_goodnet: {name} must be a classifier (nn.Module), not {type(model).__name__}")
    if single_layer is not None and not isinstance(backdoored, torch.jit.ScriptModule):
        return PrunedGoodNet(backdoored, *single_layer)
    return TwoModelGoodNet(backdoored, repaired)
