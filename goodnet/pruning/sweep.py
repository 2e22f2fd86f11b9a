"""The pruning sweep: predictions of every pruned model B'_k (k = 0..C channels pruned).

Cached and exact: the trunk runs once per dataset; at step k only the inputs that have a non-zero
activation in the channel just pruned go through the tail again. For every other input the masked
tensor is bit-for-bit the one of step k-1, so its prediction cannot change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..devices import to_model, to_numpy
from ..inference import DEFAULT_BATCH_SIZE, batches, check_finite_scores, predict
from ..lazy_torch import nn, torch
from ..progress import progress
from .graph_split import CutSplit
from .zeroing import pruned_copy


def run_trunk(
    split: CutSplit, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE, desc: str | None = None
) -> tuple[torch.Tensor, ...]:
    """The tensors crossing the cut, for all of `x` (computed once, cached by the caller)."""
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        for s in progress(list(batches(len(x), batch_size)), desc):
            parts.append(tuple(t.clone() for t in split.trunk(to_model(x[s], split.trunk))))
    return tuple(torch.cat(ts) for ts in zip(*parts))


def tail_predictions(
    split: CutSplit,
    crossing: Sequence[torch.Tensor],
    keep: torch.Tensor,
    index: torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Argmax labels of the masked tail, for the inputs in `index` (all when None)."""
    n = crossing[0].shape[0] if index is None else index.numel()
    out = torch.empty(n, dtype=torch.long)
    with torch.inference_mode():
        for s in batches(n, batch_size):
            rows = [t[s] if index is None else t[index[s]] for t in crossing]
            scores = split.masked_tail(tuple(rows), keep)
            check_finite_scores(scores, s.start, n)  # a pruned model whose outputs overflow has no labels
            out[s] = scores.argmax(dim=1).cpu()
    return out


@dataclass
class SweepPredictions:
    """labels[k] = predictions with the first k channels of `order` pruned; recomputed[k-1] = how
    many inputs went through the tail again at step k."""

    labels: np.ndarray
    recomputed: np.ndarray


def sweep(
    split: CutSplit,
    crossing: Sequence[torch.Tensor],
    order: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str | None = None,
) -> SweepPredictions:
    h = crossing[0]
    n, channels = h.shape[0], h.shape[1]
    # alive[i, c]: input i has a non-zero activation in channel c at the cut.
    alive = (h != 0).reshape(n, channels, -1).any(dim=2)
    keep = torch.ones(channels, dtype=h.dtype, device=h.device)  # the cache stays on the model's device
    labels = np.empty((len(order) + 1, n), dtype=np.int64)
    recomputed = np.zeros(len(order), dtype=np.int64)
    labels[0] = tail_predictions(split, crossing, keep, batch_size=batch_size).numpy()
    for k, channel in enumerate(progress(order, desc), start=1):
        keep[int(channel)] = 0
        labels[k] = labels[k - 1]
        index = alive[:, int(channel)].nonzero().squeeze(1)
        recomputed[k - 1] = index.numel()
        if index.numel():
            labels[k, to_numpy(index)] = tail_predictions(split, crossing, keep, index, batch_size).numpy()
    return SweepPredictions(labels=labels, recomputed=recomputed)


def naive_sweep(
    model: nn.Module,
    layer: str,
    x: np.ndarray,
    order: Sequence[int],
    steps: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[int, np.ndarray]:
    """What public solutions do: rebuild the pruned model and run all of it, per step.

    The reference the cached sweep is tested and benchmarked against."""
    steps = range(len(order) + 1) if steps is None else steps
    return {k: predict(pruned_copy(model, layer, order[:k]), x, batch_size) for k in steps}
