"""Plain supervised training, deterministic for a fixed seed on CPU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .progress import progress as progress_bar


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
                     lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0,
                     progress: bool = True) -> nn.Module:
    """Adam on cross-entropy with a seeded shuffle each epoch."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    bar = progress_bar(range(epochs), "training BadNet" if progress else None)
    for _ in bar:
        order = torch.randperm(len(xs), generator=generator)
        total = 0.0
        for start in range(0, len(xs), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / len(xs):.4f}")
    return model.eval()
