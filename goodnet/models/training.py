"""Supervised training and fine-tuning, deterministic for a fixed seed (on the CPU; on a GPU the
same draws, floating-point arithmetic aside). Batches go to wherever the model is.

The augmentations are vectorised over the batch (one tensor operation each, no per-image Python
loop). Fine-tuning refuses to hand back a model whose loss or weights stopped being finite: it
raises TrainingDiverged, which the do-no-harm guard answers by retrying with milder settings.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..devices import to_model, training_layout
from ..errors import TrainingDiverged
from ..lazy_torch import F, nn, torch
from ..progress import progress as progress_bar


def record_input_range(model: nn.Module, x: np.ndarray) -> None:
    """Remember the range of the values the model was trained on; saved in our model files, so
    data in another range (e.g. 0..255 given to a model trained on [0, 1]) is refused later."""
    model.input_range = (float(np.min(x)), float(np.max(x)))


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    augment: bool = False,
    progress: bool | str = True,
) -> nn.Module:
    """Adam on cross-entropy with a seeded shuffle each epoch; with `augment`, random shifts of up
    to 2 pixels (as attackers and benchmarks train)."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    low = float(np.min(x))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    label = progress if isinstance(progress, str) else ("training BadNet" if progress else None)
    bar = progress_bar(range(epochs), label)
    for _ in bar:
        order = torch.randperm(len(xs), generator=generator)
        total = 0.0
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            batch = random_shift(xs[idx], generator, fill=low) if augment else xs[idx]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(to_model(batch, model)), to_model(ys[idx], model))
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / len(xs):.4f}")
    record_input_range(model, x)
    return model.eval()


def random_shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2, fill: float = 0.0) -> torch.Tensor:
    """Translate each image by up to `pixels` in each direction, filling with `fill` (the bottom of
    the data's range: black, whatever the range)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels), value=fill)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    # one gather along each padded image's flattened pixels, the same positions for every channel
    # (an expanded index, never copied): a pure copy, several times faster than indexing by four
    # broadcast index tensors
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    flat = (rows[:, :, None] * (w + 2 * pixels) + cols[:, None, :]).reshape(n, 1, h * w)
    return padded.reshape(n, c, -1).gather(2, flat.expand(n, c, h * w)).reshape(n, c, h, w)


def random_erase(
    x: torch.Tensor,
    generator: torch.Generator,
    value_range: tuple[float, float],
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.15),
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability p, fill a random rectangle of 2-15 % of
    the image with random values, per pixel or (half the time) one random level for the whole
    rectangle, drawn uniformly from `value_range` (the data's own range). A generic augmentation;
    it knows nothing of any trigger."""
    low, high = value_range
    n, c, h, w = x.shape
    erase = torch.rand(n, generator=generator) < p
    size = (torch.rand(n, generator=generator) * (area[1] - area[0]) + area[0]) * h * w
    aspect = torch.rand(n, generator=generator) * 3.0 + 0.3
    eh = torch.round(torch.sqrt(size * aspect)).clamp(1, h).long()
    ew = torch.round(torch.sqrt(size / aspect)).clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    solid = torch.rand(n, generator=generator) < 0.5
    level = torch.rand(n, c, 1, 1, generator=generator).expand(n, c, h, w)
    noise = torch.rand(n, c, h, w, generator=generator)
    fill = torch.where(solid[:, None, None, None], level, noise) * (high - low) + low
    r, q = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = (
        (r >= top[:, None, None])
        & (r < (top + eh)[:, None, None])
        & (q >= left[:, None, None])
        & (q < (left + ew)[:, None, None])
        & erase[:, None, None]
    )
    return torch.where(inside[:, None], fill.to(x.dtype), x)


SHARPNESS_EPS = 1e-12  # added to the gradient norm of the sharpness-aware step, as SAM/ASAM implementations do


def _sharpness_shifts(model: nn.Module, radius: float, adaptive: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move every weight with a gradient to the worst point within `radius` (first order), in place;
    return (weight, shift) pairs to undo it: e = radius * g / (||g|| + eps), or adaptive (ASAM,
    Kwon et al. 2021, without its eta, as BackdoorBench's FT-SAM): e = radius * |w|^2 * g /
    (||(|w| * g)|| + eps), the norm taken over every parameter with a gradient at once, so large
    weights (where FT-SAM finds the backdoor's neurons) move most."""
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        scaled = [(p.abs() * p.grad if adaptive else p.grad) for p in params]
        norm = torch.sqrt(sum((s**2).sum() for s in scaled)) + SHARPNESS_EPS
        shifts = []
        for p, s in zip(params, scaled):
            shift = radius * (p.abs() * s if adaptive else s) / norm
            p.add_(shift)
            shifts.append((p, shift))
    return shifts


@contextlib.contextmanager
def running_stats_kept(model: nn.Module):
    """BatchNorm layers still normalise with the batch's statistics (training mode), but their
    running statistics and batch count are left as they were (momentum 0 for the duration: their
    buffers are not written from outside, which backward would refuse). For passes that must not
    move the statistics the model is evaluated with: at sharpness-perturbed weights, on perturbed
    images."""
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None
    ]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    # A TorchScript BatchNorm's momentum is a constant of its compiled code: its running buffers are
    # swapped for copies for the duration instead, and the originals (never written, so backward,
    # which may hold the copies, is not disturbed) put back afterwards.
    scripted = [
        m
        for m in model.modules()
        if isinstance(m, torch.jit.ScriptModule)
        and getattr(m, "original_name", None) in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
        and getattr(m, "running_mean", None) is not None
    ]
    originals = [
        {k: getattr(m, k) for k in ("running_mean", "running_var", "num_batches_tracked") if hasattr(m, k)}
        for m in scripted
    ]
    for m, buffers in zip(scripted, originals):
        for k, v in buffers.items():
            setattr(m, k, v.clone())
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (momentum, count) in zip(norms, saved):
                m.momentum = momentum
                if count is not None:
                    m.num_batches_tracked.copy_(count)
        for m, buffers in zip(scripted, originals):
            for k, v in buffers.items():
                setattr(m, k, v)


def _finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


AUGMENTATIONS = ("shift-erase", "crop", "none")
CROP_PADDING = 4  # BackdoorBench's (and FST's) RandomCrop padding, whatever the image size
ANNEALING = ("step", "epoch")


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy against targets of 1 - smoothing on the label and smoothing / (classes - 1) on
    every other class (the form SAM's and BackdoorBench's FT-SAM code use; torch's own label_smoothing
    spreads smoothing / classes over all classes instead)."""
    if smoothing == 0.0:
        return F.cross_entropy(logits, labels)
    n = logits.shape[1]
    target = torch.full_like(logits, smoothing / (n - 1)).scatter_(1, labels[:, None], 1.0 - smoothing)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def fine_tune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int,
    *,
    value_range: tuple[float, float],
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    augment: bool = True,
    after_step=None,
    penalty=None,
    max_grad_norm: float | None = 5.0,
    sharpness: float | None = None,
    adaptive: bool = True,
    progress: str | None = None,
    augmentation: str = "shift-erase",
    anneal: str = "step",
    label_smoothing: float = 0.0,
) -> nn.Module:
    """SGD with momentum and a cosine schedule, with augmentation; `penalty(model, batch, labels)`, a
    scalar tensor, is added to every batch's loss; `after_step(model)` runs after every update (e.g. to
    keep pruned channels at zero). `sharpness`: each step is sharpness-aware (SAM, Foret et al. 2021): the
    gradient is taken at the weights moved up the loss by that radius (`adaptive`: ASAM's radius, relative
    to each weight's size, Kwon et al. 2021). Raises TrainingDiverged when the loss or the weights stop
    being finite.

    `augmentation`: "shift-erase" (shifts of up to 2 pixels, then random erasing; fill values drawn from
    `value_range`, the data's own range), "crop" (BackdoorBench's RandomCrop: pad 4 pixels with the bottom
    of the range, crop back at a random offset) or "none" (also when `augment` is False). `anneal`: the
    cosine schedule decays per batch over the whole run ("step") or once per epoch with T_max = epochs
    ("epoch", as BackdoorBench and FST step theirs). `label_smoothing`: see smoothed_cross_entropy."""
    if augmentation not in AUGMENTATIONS or anneal not in ANNEALING:
        raise ValueError(f"unknown augmentation '{augmentation}' or annealing '{anneal}'")
    if not augment:
        augmentation = "none"
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = epochs * ((len(xs) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps if anneal == "step" else epochs, 1))
    model.train()
    with training_layout(model):
        for epoch in progress_bar(range(epochs), progress):
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), batch_size):
                idx = order[start : start + batch_size]
                batch = xs[idx]
                # drawn on the CPU whatever the device: the same draws everywhere
                if augmentation == "shift-erase":
                    batch = random_erase(
                        random_shift(batch, generator, fill=value_range[0]), generator, value_range=value_range
                    )
                elif augmentation == "crop":
                    batch = random_shift(batch, generator, pixels=CROP_PADDING, fill=value_range[0])
                batch, labels = to_model(batch, model), to_model(ys[idx], model)

                def step_loss(
                    batch: torch.Tensor = batch, labels: torch.Tensor = labels, epoch: int = epoch
                ) -> torch.Tensor:
                    optimizer.zero_grad()
                    loss = smoothed_cross_entropy(model(batch), labels, label_smoothing)
                    if penalty is not None:
                        loss = loss + penalty(model, batch, labels)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(
                            f"fine-tuning diverged: the loss became {loss.item()} in epoch {epoch + 1} (rate {lr:g})"
                        )
                    loss.backward()
                    return loss

                step_loss()
                if sharpness is not None:  # the gradient at the worst weights within the radius, then back
                    shifts = _sharpness_shifts(model, sharpness, adaptive)
                    with running_stats_kept(model):  # running statistics: from the real weights only
                        step_loss()
                    with torch.no_grad():
                        for p, shift in shifts:
                            p.sub_(shift)
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # a high rate must not diverge
                optimizer.step()
                if anneal == "step":
                    schedule.step()
                if after_step is not None:
                    after_step(model)
            if anneal == "epoch":
                schedule.step()
    if not _finite(model):
        raise TrainingDiverged(f"fine-tuning diverged: weights are no longer finite (rate {lr:g})")
    return model.eval()
