"""Fine-pruning (Liu et al. 2018): prune like the lab, then fine-tune on clean data.

Pruning alone leaves the backdoor in the remaining weights; a short, fairly aggressive fine-tune
(SGD with momentum at 0.05, cosine decay, with shift and random-erasing augmentation) moves the
weights far enough to forget it. Plain Adam at 1e-3 barely moves the ASR (measured while building
this). Only clean validation data is used: 80 % to fine-tune, 20 % held out to choose among the
candidate budgets by clean accuracy alone. The pruned channels stay zero throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data import ImageSet
from ..graph_split import following_batchnorm
from ..metrics import accuracy
from ..pruning import pruned_copy, zero_channels
from ..sweep import predict
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
    epochs: int = 40
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    holdout: float = 0.2
    pixel_range: float = 255.0  # the largest pixel value in the data files, for random erasing
    seed: int = 0

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        fit, held = holdout_split(data.clean_valid, self.holdout, self.seed)
        candidates = []
        for x in self.budgets:
            channels = lab_pruning_channels(model, RepairData(fit), self.layer, x, "crossing")
            bn = following_batchnorm(model, self.layer)
            torch.manual_seed(self.seed)
            tuned = fine_tune(pruned_copy(model, self.layer, channels), fit.x, fit.y, self.epochs, self.seed,
                              lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                              pixel_range=self.pixel_range,
                              after_step=lambda m, c=channels: zero_channels(m, self.layer, c, bn),
                              progress=f"fine-tuning (X={x:g})" if progress else None)
            candidates.append((accuracy(predict(tuned, held.x), held.y), x, channels, tuned))
        best = max(candidates, key=lambda c: (c[0], -c[1]))  # ties: the smaller budget
        return RepairOutcome(best[3], {
            "layer": self.layer, "pruned": {self.layer: best[2]}, "chosen_x": best[1],
            "held_out_accuracy": {f"{c[1]:g}": round(c[0], 4) for c in candidates}})
