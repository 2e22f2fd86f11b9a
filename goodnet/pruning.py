"""Channel pruning as the lab defines it: zero a conv output channel's kernel and bias."""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from .errors import GoodnetError


def pruned_copy(model: nn.Module, layer: str, channels: Iterable[int]) -> nn.Module:
    """A copy of `model` whose conv `layer` outputs zero on every channel in `channels`."""
    pruned = copy.deepcopy(model)
    conv = dict(pruned.named_modules()).get(layer)
    if not isinstance(conv, nn.Conv2d):
        raise GoodnetError(f"no Conv2d layer named '{layer}'")
    index = torch.as_tensor(list(channels), dtype=torch.long)
    if index.numel() and (index.min() < 0 or index.max() >= conv.out_channels):
        raise GoodnetError(f"channel index out of range for '{layer}' ({conv.out_channels} channels)")
    with torch.no_grad():
        conv.weight[index] = 0
        if conv.bias is not None:
            conv.bias[index] = 0
    return pruned
