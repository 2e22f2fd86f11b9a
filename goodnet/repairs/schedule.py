"""The fine-tuning schedule that fine-prune, fine-tune, fst, ft-sam, nad, nc and unlearn-uap share:
its settings are declared once, so the rows of `compare` differ only by what each repair adds to it.

`TuningSchedule`'s defaults are goodnet's own schedule (SGD at 0.05 with momentum, cosine decay per
batch over 40 epochs, batches of 64, shifts and random erasing, gradient clipping at norm 5).
`BackdoorBenchSchedule` is the schedule of BackdoorBench's fine-tuning defenses (defense/ft.py, fp.py,
ft-sam.py and their config/defense/*/config.yaml): SGD at 0.01, momentum 0.9, weight decay 5e-4,
batches of 256, 100 epochs, cosine decay stepped once per epoch, random crops (4-pixel padding), no
clipping. BackdoorBench fine-tunes on 5 % of CIFAR-10 (2,500 images); a clean validation set of a
thousand or so images is the same order, so the epochs are kept as they are. Its `variant` setting
gives back goodnet's schedule (pass --lr 0.05 --epochs 40 with it to get goodnet's rate and length).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from ..lazy_torch import nn
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
    seed: int = setting(0, "seed of the repair's random choices and training", low=0, high=2**63 - 1)

    RATE_STEPS = ((2, 1), (4, 2), (10, 4))  # milder: (rate divided by, epochs divided by)

    def slower(self, rate_divisor: float, epochs_divisor: int) -> TuningSchedule:
        return replace(self, lr=self.lr / rate_divisor, epochs=max(1, self.epochs // epochs_divisor))

    def milder(self) -> list[Repair]:
        """A lower rate, then also fewer epochs."""
        return [self.slower(k, e) for k, e in self.RATE_STEPS]

    def tuning_options(self) -> dict[str, Any]:
        """fine_tune's keywords beyond the settings (batch size, augmentation, annealing, clipping,
        label smoothing); empty: goodnet's schedule."""
        return {}

    def tune(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        value_range: tuple[float, float],
        progress: str | None = None,
        **hooks,
    ) -> nn.Module:
        """fine_tune `model` in place with this schedule (`hooks`: after_step, penalty, sharpness, ...)."""
        return fine_tune(
            model,
            x,
            y,
            self.epochs,
            self.seed,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            value_range=value_range,
            progress=progress,
            **{**self.tuning_options(), **hooks},
        )


BACKDOORBENCH_TUNING: dict[str, Any] = {
    "batch_size": 256,
    "augmentation": "crop",
    "anneal": "epoch",
    "max_grad_norm": None,
}
GOODNET_TUNING: dict[str, Any] = {}  # fine_tune's defaults: batches of 64, shift-erase, per-batch cosine, clip 5


@dataclass(frozen=True)
class BackdoorBenchSchedule(TuningSchedule):
    """BackdoorBench's fine-tuning schedule (see the module docstring) as the defaults."""

    epochs: int = setting(100, "fine-tuning epochs", low=1)
    lr: float = setting(0.01, "fine-tuning learning rate (SGD, cosine decay)", low=0.0, low_open=True)
    variant: Literal["reference", "goodnet"] = setting(
        "reference",
        "reference: the paper's algorithm as its reference code runs it; goodnet: goodnet's own "
        "variant (see the repair's documentation)",
    )

    def tuning_options(self) -> dict[str, Any]:
        return dict(BACKDOORBENCH_TUNING if self.variant == "reference" else GOODNET_TUNING)
