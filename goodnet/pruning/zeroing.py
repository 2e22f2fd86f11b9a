"""Channel pruning as the lab defines it: zero a conv output channel's kernel and bias.

When a BatchNorm follows the conv (directly or after a ReLU or pooling), its scale and shift for
that channel are zeroed too: otherwise it would turn the zero channel into a constant (its shift
minus the normalised mean) and the channel would not be gone."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import SettingsError
from ..lazy_torch import nn, torch
from ..model_copies import DESCRIPTION_ATTRIBUTES, copy_model
from .graph_split import conv_layers, following_batchnorm

__all__ = ["DESCRIPTION_ATTRIBUTES", "grouped", "prune_layers", "pruned_copy", "zero_channels"]


def pruned_copy(model: nn.Module, layer: str, channels: Iterable[int]) -> nn.Module:
    """A copy of `model` whose conv `layer` outputs zero on every channel in `channels`."""
    pruned = copy_model(model)  # a TorchScript copy keeps num_classes, input_shape, ...
    modules = dict(pruned.named_modules())
    conv = modules.get(layer)
    if conv is None or layer not in conv_layers(pruned):
        raise SettingsError(f"no Conv2d layer named '{layer}'")
    zero_channels(pruned, layer, channels)
    return pruned


def zero_channels(model: nn.Module, layer: str, channels: Iterable[int], batchnorm: str | None = "find") -> None:
    """Zero, in place, conv `layer`'s channels and those of the BatchNorm after it (see module doc).
    Training loops call it after every step to keep pruned channels pruned; they pass `batchnorm`
    (found once with `following_batchnorm`) to skip the search."""
    modules = dict(model.named_modules())
    conv = modules[layer]
    bn_name = following_batchnorm(model, layer) if batchnorm == "find" else batchnorm
    index = torch.as_tensor(list(channels), dtype=torch.long)
    if index.numel() and (index.min() < 0 or index.max() >= conv.out_channels):
        raise SettingsError(f"channel index out of range for '{layer}' ({conv.out_channels} channels)")
    with torch.no_grad():
        conv.weight[index] = 0
        if conv.bias is not None:
            conv.bias[index] = 0
        if bn_name is not None:
            modules[bn_name].weight[index] = 0
            modules[bn_name].bias[index] = 0


def prune_layers(model: nn.Module, channels: Iterable[tuple[str, int]]) -> nn.Module:
    """A copy of `model` with every (layer, channel) pruned, over several conv layers."""
    pruned = copy_model(model)  # a TorchScript copy keeps num_classes, input_shape, ...
    for layer, chosen in grouped(channels).items():
        zero_channels(pruned, layer, chosen)
    return pruned


def grouped(channels: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    """(layer, channel) pairs as {layer: [channels]}, in order of first appearance."""
    out: dict[str, list[int]] = {}
    for layer, channel in channels:
        out.setdefault(layer, []).append(int(channel))
    return out
