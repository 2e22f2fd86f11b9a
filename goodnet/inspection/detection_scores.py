"""Detection measured as the field measures it: a continuous score per input, then the area under
the ROC curve and the true-positive rate at a fixed false-positive rate, clean inputs negative and
poisoned inputs positive.

G itself answers yes/no (B and B' disagree, or not). Its continuous score here is B''s doubt in B's
answer: 1 - P_B'(B's label | x). It is 0 when B' fully agrees with B and above 0.5 whenever G flags
the input (B' then prefers another label), so thresholds on it trace G's ROC curve. ROC areas come
from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from ..devices import to_model, to_numpy
from ..inference import DEFAULT_BATCH_SIZE, batches

DEFAULT_FPR = 5.0  # %: the false-positive rate at which the true-positive rate is reported


def as_probabilities(out: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a model's output: goodnet's models return logits, but a user's
    PyTorch model may end in a softmax; rows already on the simplex are taken as they are."""
    if (
        out.min() >= 0
        and out.max() <= 1
        and torch.allclose(out.sum(dim=1), torch.ones(len(out), device=out.device), atol=1e-4)
    ):
        return out
    return torch.softmax(out, dim=1)


def probability_of(
    model: nn.Module, x: np.ndarray, labels: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """P_model(labels[i] | x[i]) for every image, in batches (no class-count-sized matrix kept)."""
    out = np.empty(len(x), dtype=np.float64)
    model.eval()
    with torch.inference_mode():
        for s in batches(len(x), batch_size):
            probs = as_probabilities(model(to_model(x[s], model)).float())
            out[s] = to_numpy(probs.gather(1, to_model(labels[s], model).long().view(-1, 1)).squeeze(1).double())
    return out


def disagreement_scores(
    repaired: nn.Module, x: np.ndarray, backdoored_labels: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """G's continuous score: 1 - P_B'(B's label | x), in [0, 1]; higher is more suspicious."""
    return 1.0 - probability_of(repaired, x, backdoored_labels, batch_size)


@dataclass(frozen=True)
class DetectionScore:
    """How well a score separates poisoned (positive) from clean (negative) inputs."""

    auroc: float  # %, 50 is chance
    tpr: float  # %: poisoned inputs caught at the threshold that flags at most `fpr` % of clean ones
    fpr: float  # % (the requested rate; the threshold never exceeds it on these clean inputs)
    clean: int
    poisoned: int

    @classmethod
    def of(cls, clean_scores: np.ndarray, poisoned_scores: np.ndarray, fpr: float = DEFAULT_FPR) -> DetectionScore:
        clean_scores, poisoned_scores = np.asarray(clean_scores, float), np.asarray(poisoned_scores, float)
        if len(clean_scores) == 0 or len(poisoned_scores) == 0:
            raise ValueError("detection scores need clean and poisoned inputs")
        if not (np.isfinite(clean_scores).all() and np.isfinite(poisoned_scores).all()):
            raise ValueError("detection scores must be finite")
        truth = np.r_[np.zeros(len(clean_scores)), np.ones(len(poisoned_scores))]
        scores = np.r_[clean_scores, poisoned_scores]
        false_rates, true_rates, _ = roc_curve(truth, scores, drop_intermediate=False)
        allowed = false_rates <= fpr / 100.0 + 1e-12
        return cls(
            auroc=float(roc_auc_score(truth, scores)) * 100.0,
            tpr=float(true_rates[allowed].max()) * 100.0,
            fpr=fpr,
            clean=len(clean_scores),
            poisoned=len(poisoned_scores),
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "auroc": round(self.auroc, 4),
            f"tpr_at_{self.fpr:g}_fpr": round(self.tpr, 4),
            "fpr": self.fpr,
            "clean_inputs": self.clean,
            "poisoned_inputs": self.poisoned,
        }
