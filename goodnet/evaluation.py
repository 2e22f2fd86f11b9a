"""Scoring model files as the lab does: eval.py's two numbers, and one label per image file."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import DataError
from .devices import placed
from .inference import DEFAULT_BATCH_SIZE, predict
from .io.data import ImageSet, check_fits_model, check_input_range, load_images, read_image, trained_range
from .io.model_files import ModelSource
from .metrics import accuracy


def evaluate_files(clean_path: str, poisoned_path: str, source: ModelSource | str, input_scale: float = 1.0,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, float]:
    """The lab's eval.py: clean accuracy and attack success rate, in %, for B, B' or G."""
    source = ModelSource(source) if isinstance(source, str) else source
    clean = load_images(clean_path, input_scale)
    poisoned = load_images(poisoned_path, input_scale)
    model = source.load(clean.image_shape)
    for role, images in (("clean data", clean), ("poisoned data", poisoned)):
        check_fits_model(images, model.input_shape, model.num_classes, role)
        check_input_range(images, trained_range(model), role)
    with placed(model):
        return (accuracy(predict(model, clean.x, batch_size), clean.y),
                accuracy(predict(model, poisoned.x, batch_size), poisoned.y))


def classify_files(source: ModelSource, image_paths: Sequence[str], input_scale: float = 1.0) -> list[int]:
    """One label per image: in [0, N-1] for a classifier, [0, N] for a GoodNet (N = poisoned)."""
    images = [read_image(p, input_scale) for p in image_paths]
    model = source.load(images[0].shape)
    expected = tuple(model.input_shape)
    for path, image in zip(image_paths, images):
        if image.shape != expected:
            raise DataError(f"{path}: image is {'x'.join(map(str, image.shape))} (C x H x W) but the "
                              f"model takes {'x'.join(map(str, expected))}")
    stacked = np.stack(images)
    check_input_range(ImageSet(stacked, np.zeros(len(stacked), dtype=np.int64), "images"), trained_range(model),
                      "images")
    with placed(model):
        return [int(v) for v in predict(model, stacked)]
