"""STRIP (Gao et al., ACSAC 2019), the classic input-level detector, as the baseline for G's score.

Why it works: a clean image blended with other clean images loses its identity, so B's
predictions on the blends spread over many classes (high entropy); a trigger survives blending and
keeps pulling every blend to the target (low entropy). The score of an input is minus the mean
entropy of B's predictions on `overlays` blends with clean validation images drawn at random, so
that higher is more suspicious, as for every other score. Blending is an equal-weight average of
the two images, which stays inside the data's own range whatever it is (the paper adds 8-bit images
with saturation, which presumes 0..255). Scoring is capped at `max_images` inputs per set (a
seeded sample, recorded) so a large test set costs seconds, not minutes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..devices import placed, to_model, to_numpy
from ..errors import SettingsError
from ..inference import DEFAULT_BATCH_SIZE, batches
from .detection_scores import DEFAULT_FPR, DetectionScore, as_probabilities

DEFAULT_OVERLAYS = 20
DEFAULT_MAX_IMAGES = 2000


def strip_scores(
    model: nn.Module,
    x: np.ndarray,
    background: np.ndarray,
    overlays: int = DEFAULT_OVERLAYS,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """Minus the mean prediction entropy (nats) of `model` over `overlays` blends of each image of
    `x` with random images of `background` (clean validation images)."""
    if len(background) == 0:
        raise ValueError("STRIP needs clean images to blend with")
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(background), size=(len(x), overlays))
    scores = np.empty(len(x), dtype=np.float64)
    model.eval()
    per_batch = max(1, batch_size // overlays)
    with torch.inference_mode():
        for s in batches(len(x), per_batch):
            images = to_model(x[s], model).unsqueeze(1)  # (b, 1, C, H, W)
            blends = (images + to_model(background[picks[s]], model)) / 2  # (b, overlays, C, H, W)
            probs = as_probabilities(model(blends.flatten(0, 1)).float()).double()
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).view(-1, overlays)
            scores[s] = to_numpy(-entropy.mean(dim=1))
    return scores


def sample(n: int, max_images: int, seed: int) -> np.ndarray:
    """Indices of at most `max_images` of n inputs (all of them, in order, when n fits)."""
    if n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))


@dataclass(frozen=True)
class StripSettings:
    overlays: int = DEFAULT_OVERLAYS
    max_images: int = DEFAULT_MAX_IMAGES  # per set (clean, poisoned)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("overlays", "max_images", "seed"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or value < (0 if name == "seed" else 1)
            ):
                raise SettingsError(
                    f"STRIP: {name} must be an integer of at least {0 if name == 'seed' else 1}, not {value!r}"
                )

    def detect(
        self,
        model: nn.Module,
        clean: np.ndarray,
        poisoned: np.ndarray,
        background: np.ndarray,
        fpr: float = DEFAULT_FPR,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> DetectionScore:
        """STRIP's AUROC and TPR on (a sample of) clean vs poisoned inputs."""
        with placed(model):
            scored = [
                strip_scores(
                    model,
                    images[sample(len(images), self.max_images, self.seed + k)],
                    background,
                    self.overlays,
                    self.seed + k,
                    batch_size,
                )
                for k, images in enumerate((clean, poisoned))
            ]
        return DetectionScore.of(scored[0], scored[1], fpr)

    def to_json(self) -> dict[str, int]:
        return {"overlays": self.overlays, "max_images": self.max_images, "seed": self.seed}
