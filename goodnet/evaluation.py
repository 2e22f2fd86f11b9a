"""Scoring model files as the lab does: eval.py's two numbers, and one label per image file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from .devices import placed
from .errors import DataError, GoodnetWarning, shown_path
from .inference import DEFAULT_BATCH_SIZE, checked_batch_size, predict
from .io.data import (
    ImageSet,
    as_path,
    check_fits_model,
    check_input_range,
    checked_range,
    checked_scale,
    load_images,
    read_image,
    trained_range,
)
from .io.model_files import ModelSource, model_source
from .io.role_checks import label_warnings, role_warnings
from .measure.sanity import SanityCheck
from .metrics import accuracy
from .models.goodnet import GoodNet


def evaluate_files(
    clean_path: str | os.PathLike,
    poisoned_path: str | os.PathLike,
    source: ModelSource | str,
    input_scale: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[float, float]:
    """The lab's eval.py: clean accuracy and attack success rate, in %, for B, B' or G. Paths may be
    str or os.PathLike. Doubts about the inputs (files sharing images, a poisoned file that seems to
    carry true labels, a model not clearly better than chance on the clean file) are GoodnetWarnings."""
    clean_path, poisoned_path = as_path(clean_path, "clean_path"), as_path(poisoned_path, "poisoned_path")
    source = model_source(source)
    input_scale, batch_size = checked_scale(input_scale), checked_batch_size(batch_size)
    clean = load_images(clean_path, input_scale)
    poisoned = load_images(poisoned_path, input_scale)
    model = source.load(clean.image_shape)
    sets = {"clean_test": clean, "poisoned_test": poisoned}
    doubts = role_warnings(sets, {"clean_test": clean_path, "poisoned_test": poisoned_path})
    for role, images in (("clean data", clean), ("poisoned data", poisoned)):
        check_fits_model(images, model.input_shape, model.num_classes, role)
        check_input_range(images, trained_range(model), role)
    with placed(model):
        clean_labels, poisoned_labels = predict(model, clean.x, batch_size), predict(model, poisoned.x, batch_size)
    if not isinstance(model, GoodNet):
        doubts += label_warnings(poisoned, poisoned_labels, "poisoned_test")
    sanity = SanityCheck.of(clean_labels, clean, model.num_classes, forced=False) if len(clean) else None
    # a wrong scale, wrong labels or the wrong model: the numbers stand, with a word beside them
    if sanity is not None and not sanity.above_chance and sanity.could_tell:
        recorded = trained_range(model)
        doubts.append(
            f"the model is not clearly better than chance on the clean data ({sanity.valid_accuracy:.2f} % of "
            f"{sanity.images} images, chance {sanity.chance:.2f} %): check the pixel range (the data hold "
            f"{clean.value_range[0]:g}..{clean.value_range[1]:g}, "
            + (
                "the model file records none"
                if recorded is None
                else f"the model was trained on {recorded[0]:g}..{recorded[1]:g}"
            )
            + "; --input-scale divides the data), the labels, and that this is the right model"
        )
    for line in doubts:  # the CLI prints them as `goodnet: warning: ...`
        warnings.warn(line, GoodnetWarning, stacklevel=2)
    return accuracy(clean_labels, clean.y), accuracy(poisoned_labels, poisoned.y)


def classify_files(
    source: ModelSource,
    image_paths: Sequence[str],
    input_scale: float = 1.0,
    input_range: tuple[float, float] | None = None,
) -> list[int]:
    """One label per image: in [0, N-1] for a classifier, [0, N] for a GoodNet (N = poisoned).
    The images are checked against the value range the model's file records; a file that records
    none is refused unless `input_range` states it, since images on the wrong scale would get a
    wrong label each without a word."""
    source = model_source(source)
    stated = None if input_range is None else checked_range(input_range)
    images = [read_image(p, input_scale) for p in image_paths]
    model = source.load(images[0].shape)
    expected = tuple(model.input_shape)
    for path, image in zip(image_paths, images):
        if image.shape != expected:
            raise DataError(
                f"{shown_path(path)}: image is {'x'.join(map(str, image.shape))} (C x H x W) but the "
                f"model takes {'x'.join(map(str, expected))}"
            )
    recorded = trained_range(model)
    if recorded is None and stated is None:
        raise DataError(
            f"{shown_path(source.path)}: records no input range, so goodnet cannot check that the images "
            f"are on the scale it was trained on: state it with --input-range LOW,HIGH (the values after "
            f"--input-scale, e.g. 0,1 or 0,255)"
        )
    if recorded is not None and stated is not None and not np.allclose(recorded, stated):
        raise DataError(
            f"{shown_path(source.path)}: records the input range {recorded[0]:g},{recorded[1]:g}, not the "
            f"{stated[0]:g},{stated[1]:g} given by --input-range"
        )
    stacked = np.stack(images)
    check_input_range(ImageSet(stacked, np.zeros(len(stacked), dtype=np.int64), "images"), recorded or stated, "images")
    with placed(model):
        return [int(v) for v in predict(model, stacked)]
