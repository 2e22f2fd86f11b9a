"""The fine-tuning schedule that fine-prune, fine-tune, fst and unlearn-uap share: its settings are
declared once, so the rows of `compare` differ only by what each repair adds to it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from ..models.training import fine_tune
from .base import Repair, setting


@dataclass(frozen=True)
class TuningSchedule(Repair):
    """A repair whose weights are fine-tuned with SGD (momentum, cosine decay) and fine_tune's
    augmentation; subclasses add their own settings and register themselves."""

    epochs: int = setting(40, "fine-tuning epochs", low=1)
    lr: float = setting(0.05, "fine-tuning learning rate (SGD, cosine decay)", low=0.0, low_open=True)
    momentum: float = setting(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = setting(5e-4, "SGD weight decay", low=0.0)
    seed: int = setting(0, "seed of the repair's random choices and training")

    RATE_STEPS = ((2, 1), (4, 2), (10, 4))  # milder: (rate divided by, epochs divided by)

    def slower(self, rate_divisor: float, epochs_divisor: int) -> "TuningSchedule":
        return replace(self, lr=self.lr / rate_divisor, epochs=max(1, self.epochs // epochs_divisor))

    def milder(self) -> list[Repair]:
        """A lower rate, then also fewer epochs."""
        return [self.slower(k, e) for k, e in self.RATE_STEPS]

    def tune(self, model: nn.Module, x: np.ndarray, y: np.ndarray, value_range: tuple[float, float],
             progress: str | None = None, **hooks) -> nn.Module:
        """fine_tune `model` in place with this schedule (`hooks`: after_step, penalty)."""
        return fine_tune(model, x, y, self.epochs, self.seed, lr=self.lr, momentum=self.momentum,
                         weight_decay=self.weight_decay, value_range=value_range, progress=progress, **hooks)
