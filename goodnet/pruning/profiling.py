"""Which channels does clean data use? Mean activation per channel at the pruning cut."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .graph_split import split_at_conv
from .sweep import run_trunk


def channel_means(cut_tensor: torch.Tensor) -> np.ndarray:
    """Mean of each channel over inputs and positions, accumulated in float64 so the ranking does
    not depend on batch order."""
    dims = [0] + list(range(2, cut_tensor.dim()))
    return cut_tensor.double().mean(dim=dims).cpu().numpy()


def pruning_order(means: np.ndarray, order: str = "ascending") -> np.ndarray:
    """Channel indices to prune first-to-last; ties (e.g. the many dead channels) by index."""
    if order == "ascending":
        return np.argsort(means, kind="stable")
    if order == "descending":
        return np.argsort(-means, kind="stable")
    raise ValueError(f"unknown order '{order}' (ascending or descending)")


def activation_order(model: nn.Module, x: np.ndarray, layer: str, order: str = "ascending") -> list[int]:
    """`layer`'s channels in `order` of mean activation at its cut on images `x` (the lab's order)."""
    return [int(c) for c in pruning_order(channel_means(run_trunk(split_at_conv(model, layer), x)[0]), order)]
