"""A pruning curve: B'_k (the first k channels of one conv layer pruned, k = 0..C) on any data set.

The lab's defense profiles the layer on clean validation data (mean activation per channel at the
cut), fixes the pruning order, and sweeps it; the curve then measures further data sets with the
same cached sweep, so every step is known on every set at the price of about one forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..inference import DEFAULT_BATCH_SIZE
from ..lazy_torch import nn, torch
from .graph_split import CutSplit, split_at_conv
from .profiling import channel_means, pruning_order
from .selection import Selection
from .sweep import SweepPredictions, run_trunk, sweep


@dataclass
class PruningCurve:
    """`labels[name]` holds the predictions of every B'_k on the data set called `name`."""

    layer: str
    order_name: str  # "ascending" or "descending" mean activation
    split: CutSplit
    batch_size: int = DEFAULT_BATCH_SIZE
    mean_activation: np.ndarray = field(default_factory=lambda: np.zeros(0))  # set by profiling
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    labels: dict[str, SweepPredictions] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"trunk": 0.0, "sweep": 0.0})
    # the stopping rules' choices per budget X, when a repair selected from this curve
    selections: list[Selection] = field(default_factory=list)
    drop: str = "absolute"  # how `selections` measured the clean-accuracy drop

    @property
    def cut(self) -> str:
        return self.split.cut

    @property
    def num_channels(self) -> int:
        return self.split.num_channels

    def pruned_channels(self, steps: int) -> list[int]:
        return [int(c) for c in self.order[:steps]]

    def measure(self, name: str, x: np.ndarray, progress: bool = False) -> SweepPredictions:
        """Sweep data set `name` (once; later calls return the cached predictions)."""
        if name not in self.labels:
            self._sweep(name, self._trunk(name, x, progress), progress)
        return self.labels[name]

    def _trunk(self, name: str, x: np.ndarray, progress: bool) -> tuple[torch.Tensor, ...]:
        start = time.perf_counter()
        crossing = run_trunk(self.split, x, self.batch_size, desc=f"trunk {name}" if progress else None)
        self.timings["trunk"] += time.perf_counter() - start
        return crossing

    def _sweep(self, name: str, crossing: tuple[torch.Tensor, ...], progress: bool) -> None:
        start = time.perf_counter()
        self.labels[name] = sweep(
            self.split, crossing, self.order, self.batch_size, desc=f"sweep {name}" if progress else None
        )
        self.timings["sweep"] += time.perf_counter() - start


def profile_and_sweep(
    model: nn.Module,
    layer: str,
    name: str,
    x: np.ndarray,
    order: str = "ascending",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> PruningCurve:
    """Profile `layer` on `x` (mean activation per channel at the cut), order its channels, and
    sweep `x` itself as data set `name`."""
    curve = PruningCurve(layer=layer, order_name=order, split=split_at_conv(model, layer), batch_size=batch_size)
    crossing = curve._trunk(name, x, progress)
    curve.mean_activation = channel_means(crossing[0])
    curve.order = pruning_order(curve.mean_activation, order)
    curve._sweep(name, crossing, progress)
    return curve
