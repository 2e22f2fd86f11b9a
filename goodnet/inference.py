"""Running a model over a data set in batches: the one prediction loop every layer uses."""

from __future__ import annotations

import numbers

import numpy as np

from .devices import to_model, to_numpy
from .errors import NonFiniteOutputs, SettingsError
from .lazy_torch import nn, torch

DEFAULT_BATCH_SIZE = 512


def batches(n: int, batch_size: int = DEFAULT_BATCH_SIZE):
    """Consecutive slices covering range(n)."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def predict(model: nn.Module, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Argmax labels of a plain classifier (or labels of a GoodNet, which returns them directly).
    Scores that are NaN or infinite raise NonFiniteOutputs: an argmax over them is no prediction."""
    out = np.empty(len(x), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for s in batches(len(x), batch_size):
            batch = to_model(x[s], model)
            y = model(batch)
            parts = [y] if y.dim() > 1 else _part_scores(model, batch)
            for scores in parts:  # a GoodNet's labels come from its models' scores
                check_finite_scores(scores, s.start, len(x))
            out[s] = to_numpy(y if y.dim() == 1 else y.argmax(dim=1))
    return out


def _part_scores(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The scores a GoodNet's labels come from: B's and B''s."""
    if hasattr(model, "part_scores"):
        return list(model.part_scores(x))
    return [
        getattr(model, name)(x)
        for name in ("backdoored", "repaired")
        if isinstance(getattr(model, name, None), nn.Module)
    ]


def check_finite_scores(scores: torch.Tensor, first: int = 0, total: int | None = None) -> None:
    """Refuse scores (logits or probabilities) holding NaN or infinity; `first` is the index of the
    batch's first image in a set of `total`, for the message."""
    bad = ~torch.isfinite(scores).all(dim=1)
    if bool(bad.any()):
        index = first + int(bad.nonzero()[0, 0])
        of = f" of {total}" if total is not None else ""
        raise NonFiniteOutputs(
            f"the model's outputs are NaN or infinite (image {index}{of}, and "
            f"{int(bad.sum())} of this batch of {len(bad)}): its weights or statistics are "
            f"broken, and no label or score drawn from them means anything"
        )


def checked_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise SettingsError(f"batch_size must be a positive integer, not {repr(batch_size)}")
    return int(batch_size)
