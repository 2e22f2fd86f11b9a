"""Which channels does clean data use? Mean activation per channel at the pruning cut."""

from __future__ import annotations

import numpy as np
import torch


def channel_means(cut_tensor: torch.Tensor) -> np.ndarray:
    """Mean of each channel over inputs and positions, accumulated in float64 so the ranking does
    not depend on batch order."""
    dims = [0] + list(range(2, cut_tensor.dim()))
    return cut_tensor.double().mean(dim=dims).numpy()


def pruning_order(means: np.ndarray, order: str = "ascending") -> np.ndarray:
    """Channel indices to prune first-to-last; ties (e.g. the many dead channels) by index."""
    if order == "ascending":
        return np.argsort(means, kind="stable")
    if order == "descending":
        return np.argsort(-means, kind="stable")
    raise ValueError(f"unknown order '{order}' (ascending or descending)")
