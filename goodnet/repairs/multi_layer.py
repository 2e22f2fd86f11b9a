"""Pruning channels spread over several conv layers, and accuracy on a whole data set."""

from __future__ import annotations

import copy
from typing import Iterable

from torch import nn

from ..data import ImageSet
from ..metrics import accuracy
from ..pruning import zero_channels
from ..sweep import predict


def prune_layers(model: nn.Module, channels: Iterable[tuple[str, int]]) -> nn.Module:
    """A copy of `model` with every (layer, channel) pruned."""
    pruned = copy.deepcopy(model)
    for layer, chosen in grouped(channels).items():
        zero_channels(pruned, layer, chosen)
    return pruned


def grouped(channels: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for layer, channel in channels:
        out.setdefault(layer, []).append(int(channel))
    return out


def score(model: nn.Module, images: ImageSet) -> float:
    return accuracy(predict(model, images.x), images.y)
