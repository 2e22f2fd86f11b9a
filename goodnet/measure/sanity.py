"""Is B worth repairing at all? B must beat guessing on its clean validation data before any
repair runs: a model far from its data (wrong pixel range, wrong labels, wrong file) would make
every later number meaningless."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.data import ImageSet
from ..metrics import accuracy, binomial_tail

# B must beat guessing on its clean validation data this clearly before any repair runs
CHANCE_P_VALUE = 1e-6


@dataclass(frozen=True)
class SanityCheck:
    """Is B clearly better than chance on clean validation data? Chance is the accuracy of always
    answering the most common label (at least 1 / number of classes); "clearly" means a one-sided
    binomial test at CHANCE_P_VALUE."""

    valid_accuracy: float
    chance: float  # %
    images: int
    p_value: float
    above_chance: bool
    forced: bool  # the user went on anyway (--force)

    @classmethod
    def of(cls, labels: np.ndarray, images: ImageSet, num_classes: int, forced: bool) -> SanityCheck:
        share = np.bincount(images.y).max() / len(images)
        chance = max(1.0 / num_classes, float(share))
        p_value = binomial_tail(int((labels == images.y).sum()), len(images), chance)
        return cls(accuracy(labels, images.y), chance * 100.0, len(images), p_value, p_value < CHANCE_P_VALUE, forced)

    @property
    def could_tell(self) -> bool:
        """Could these images show a model clearly better than chance at all? Not with one class
        (chance is then 100 %), nor with so few images that even a perfect score is no evidence."""
        return self.chance < 100.0 and binomial_tail(self.images, self.images, self.chance / 100.0) < CHANCE_P_VALUE

    @property
    def forced_past(self) -> bool:
        """The numbers that follow are of a model not clearly better than chance (--force)."""
        return not self.above_chance and self.forced

    def refusal(self, value_range: tuple[float, float]) -> str:
        return (
            f"B is not clearly better than chance on the clean validation data ({self.valid_accuracy:.2f} % "
            f"of {self.images} images, chance {self.chance:.2f} %): check the pixel range (the data hold "
            f"{value_range[0]:g}..{value_range[1]:g}; --input-scale divides them), the labels, and that this "
            f"is the right model; --force goes on anyway"
        )
