"""Running a model over a data set in batches: the one prediction loop every layer uses."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .devices import to_model, to_numpy

DEFAULT_BATCH_SIZE = 512


def batches(n: int, batch_size: int = DEFAULT_BATCH_SIZE):
    """Consecutive slices covering range(n)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def predict(model: nn.Module, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Argmax labels of a plain classifier (or labels of a GoodNet, which returns them directly)."""
    out = np.empty(len(x), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for s in batches(len(x), batch_size):
            y = model(to_model(x[s], model))
            out[s] = to_numpy(y if y.dim() == 1 else y.argmax(dim=1))
    return out
