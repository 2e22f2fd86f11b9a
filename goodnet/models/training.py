"""Plain supervised training, deterministic for a fixed seed on CPU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..progress import progress as progress_bar


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


def random_shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Translate each image by up to `pixels` in each direction, filling with zeros."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def random_erase(x: torch.Tensor, generator: torch.Generator, value_range: tuple[float, float], p: float = 0.5,
                 area: tuple[float, float] = (0.02, 0.15)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability p, fill a random rectangle of 2-15 % of
    the image with random values, per pixel or (half the time) one random level for the whole
    rectangle, drawn uniformly from `value_range` (the data's own range). A generic augmentation;
    it knows nothing of any trigger."""
    low, high = value_range
    n, c, h, w = x.shape
    out = x.clone()
    for i in range(n):
        if torch.rand(1, generator=generator).item() >= p:
            continue
        size = torch.empty(1).uniform_(*area, generator=generator).item() * h * w
        aspect = torch.empty(1).uniform_(0.3, 3.3, generator=generator).item()
        eh = max(1, min(h, int(round((size * aspect) ** 0.5))))
        ew = max(1, min(w, int(round((size / aspect) ** 0.5))))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
        solid = torch.rand(1, generator=generator).item() < 0.5
        fill = torch.rand(c, 1, 1, generator=generator) if solid else torch.rand(c, eh, ew, generator=generator)
        out[i, :, top:top + eh, left:left + ew] = fill * (high - low) + low
    return out


def fine_tune(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, *,
              value_range: tuple[float, float], lr: float = 0.05, momentum: float = 0.9,
              weight_decay: float = 5e-4, batch_size: int = 64, augment: bool = True, after_step=None,
              max_grad_norm: float = 5.0, progress: str | None = None) -> nn.Module:
    """SGD with momentum and a cosine schedule, with shift + random-erasing augmentation (fill
    values drawn from `value_range`, the data's own range); `after_step(model)` runs after every
    update (e.g. to keep pruned channels at zero)."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = epochs * ((len(xs) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    model.train()
    for _ in progress_bar(range(epochs), progress):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch_size):
            idx = order[start:start + batch_size]
            batch = xs[idx]
            if augment:
                batch = random_erase(random_shift(batch, generator), generator, value_range=value_range)
            optimizer.zero_grad()
            F.cross_entropy(model(batch), ys[idx]).backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # a high rate must not diverge
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step(model)
    return model.eval()
