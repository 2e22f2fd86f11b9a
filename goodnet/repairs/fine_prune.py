"""Fine-pruning (Liu et al. 2018): prune like the lab, then fine-tune on clean data.

Pruning alone leaves the backdoor in the remaining weights; a short, fairly aggressive fine-tune
(SGD with momentum at 0.05, cosine decay, with shift and random-erasing augmentation) moves the
weights far enough to forget it. Plain Adam at 1e-3 barely moves the ASR (measured while building
this). Only clean validation data is used: 80 % to fine-tune, 20 % held out to choose among the
candidate budgets (or fractions of channels) by clean accuracy alone. The pruned channels stay
zero throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import ImageSet
from ..errors import GoodnetError
from ..graph_split import following_batchnorm, split_at_conv
from ..profiling import channel_means, pruning_order
from ..metrics import accuracy
from ..pruning import pruned_copy, zero_channels
from ..sweep import predict, run_trunk
from ..training import fine_tune
from .base import Repair, RepairData, RepairOutcome
from .prune import lab_pruning_channels


def holdout_split(images: ImageSet, share: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(fit, held out): `share` of every class held out, in a seeded order."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(images.y), dtype=bool)
    for label in np.unique(images.y):
        members = rng.permutation(np.flatnonzero(images.y == label))
        held[members[:int(round(share * len(members)))]] = True
    return (ImageSet(images.x[~held], images.y[~held], images.name + " (fit)"),
            ImageSet(images.x[held], images.y[held], images.name + " (held out)"))


@dataclass
class FinePruning(Repair):
    name = "fine-prune"
    layer: str = "conv_3"
    budgets: tuple[float, ...] = (4.0, 10.0)  # candidate X; the held-out clean accuracy picks one
    fractions: tuple[float, ...] = ()  # further candidates: prune this share of the layer's channels
    epochs: int = 40
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    holdout: float = 0.2
    pixel_range: float = 255.0  # the largest pixel value in the data files, for random erasing
    seed: int = 0

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        fit, held = holdout_split(data.clean_valid, self.holdout, self.seed)
        bn = following_batchnorm(model, self.layer)
        plans = [(f"x={x:g}", lab_pruning_channels(model, RepairData(fit), self.layer, x, "crossing"))
                 for x in self.budgets]
        if self.fractions:
            order = activation_order(model, fit, self.layer)
            for f in self.fractions:
                if not 0 < f < 1:
                    raise GoodnetError(f"fine-prune fraction {f} is not in (0, 1)")
                plans.append((f"fraction={f:g}", order[:int(round(f * len(order)))]))
        if not plans:
            raise GoodnetError("fine-prune needs at least one budget or fraction")
        candidates = []
        for label, channels in plans:
            torch.manual_seed(self.seed)
            tuned = fine_tune(pruned_copy(model, self.layer, channels), fit.x, fit.y, self.epochs, self.seed,
                              lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                              pixel_range=self.pixel_range,
                              after_step=lambda m, c=channels: zero_channels(m, self.layer, c, bn),
                              progress=f"fine-tuning ({label})" if progress else None)
            candidates.append((accuracy(predict(tuned, held.x), held.y), -len(channels), label, channels, tuned))
        best = max(candidates, key=lambda c: c[:2])  # ties: fewer channels pruned
        return RepairOutcome(best[4], {
            "layer": self.layer, "pruned": {self.layer: best[3]}, "chosen": best[2],
            "held_out_accuracy": {c[2]: round(c[0], 4) for c in candidates}})


def activation_order(model: nn.Module, images: ImageSet, layer: str) -> list[int]:
    """`layer`'s channels in increasing mean activation on `images` (the lab's pruning order)."""
    return [int(c) for c in pruning_order(channel_means(run_trunk(split_at_conv(model, layer), images.x)[0]))]
