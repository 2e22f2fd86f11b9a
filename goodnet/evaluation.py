"""Scoring model files as the lab does: eval.py's two numbers, and one label per image file."""

from __future__ import annotations

import dataclasses
import numbers
import os
import warnings
from typing import Any, Sequence

import numpy as np

from .errors import DataError, GoodnetWarning, ModelError, SettingsError
from .devices import placed
from .inference import DEFAULT_BATCH_SIZE, predict
from .io.data import (ImageSet, as_path, check_fits_model, check_input_range, checked_scale, load_images, read_image,
                      shown, trained_range)
from .io.model_files import ModelSource
from .io.role_checks import label_warnings, role_warnings
from .models.goodnet import GoodNet
from .metrics import accuracy


def model_source(source: Any) -> ModelSource:
    """Where B comes from, as a public function takes it: a ModelSource, or a model file path
    (str or os.PathLike such as pathlib.Path); paths inside a ModelSource may be os.PathLike too."""
    if isinstance(source, ModelSource):
        path = as_path(source.path, "source.path", ModelError)
        arch = os.fspath(source.arch) if isinstance(source.arch, os.PathLike) else source.arch
        if arch is not None and not isinstance(arch, str):
            raise ModelError(f"source.arch must be an architecture name or file, not {shown(arch)}")
        if source.factory is not None and not isinstance(source.factory, str):
            raise ModelError(f"source.factory must be 'package.module:function', not {shown(source.factory)}")
        return source if (path, arch) == (source.path, source.arch) else dataclasses.replace(source, path=path,
                                                                                            arch=arch)
    return ModelSource(as_path(source, "source", ModelError, "a model file path (str or os.PathLike) or a ModelSource"))


def checked_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise SettingsError(f"batch_size must be a positive integer, not {shown(batch_size)}")
    return int(batch_size)


def evaluate_files(clean_path: str | os.PathLike, poisoned_path: str | os.PathLike, source: ModelSource | str,
                   input_scale: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, float]:
    """The lab's eval.py: clean accuracy and attack success rate, in %, for B, B' or G. Paths may be
    str or os.PathLike."""
    clean_path, poisoned_path = as_path(clean_path, "clean_path"), as_path(poisoned_path, "poisoned_path")
    source = model_source(source)
    input_scale, batch_size = checked_scale(input_scale), checked_batch_size(batch_size)
    clean = load_images(clean_path, input_scale)
    poisoned = load_images(poisoned_path, input_scale)
    sets = {"clean_test": clean, "poisoned_test": poisoned}
    doubts = role_warnings(sets, {"clean_test": clean_path, "poisoned_test": poisoned_path})
    model = source.load(clean.image_shape)
    for role, images in (("clean data", clean), ("poisoned data", poisoned)):
        check_fits_model(images, model.input_shape, model.num_classes, role)
        check_input_range(images, trained_range(model), role)
    with placed(model):
        clean_labels, poisoned_labels = predict(model, clean.x, batch_size), predict(model, poisoned.x, batch_size)
    if not isinstance(model, GoodNet):
        doubts += label_warnings(poisoned, poisoned_labels, "poisoned_test")
    for line in doubts:  # the CLI prints them as `goodnet: warning: ...`
        warnings.warn(line, GoodnetWarning, stacklevel=2)
    return accuracy(clean_labels, clean.y), accuracy(poisoned_labels, poisoned.y)


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
