"""File-to-file workflows behind the CLI (the demo runs exactly `defend_files`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from torch import nn

from .data import check_fits_model, load_images, read_image
from .defense import ROLES, DefenseData, DefenseResult, DefenseSettings, run_defense, run_repair
from .errors import GoodnetError
from .goodnet_model import GoodNet
from .metrics import accuracy
from .onnx_export import require_onnx
from .model_io import KERAS_SUFFIXES, load_model
from .reporting import ModelExports, write_defense_outputs, write_repair_outputs
from .sweep import DEFAULT_BATCH_SIZE, predict


@dataclass(frozen=True)
class ModelSource:
    """Where B comes from: a file, plus what that file cannot say itself."""

    path: str
    arch: str | None = None  # Keras weights-only files: built-in name or architecture file
    factory: str | None = None  # a user's PyTorch class, "package.module:function"

    def load(self, input_shape: tuple[int, ...] | None = None, input_divisor: float = 1.0) -> nn.Module:
        return load_model(self.path, arch=self.arch, input_shape=input_shape, input_divisor=input_divisor,
                          factory=self.factory)

    def load_backdoored(self, input_shape: tuple[int, ...] | None = None) -> nn.Module:
        model = self.load(input_shape)
        if isinstance(model, GoodNet):
            raise GoodnetError(f"{self.path}: is a GoodNet; this needs the backdoored model B")
        return model

    @property
    def is_keras(self) -> bool:
        return self.path.lower().endswith(KERAS_SUFFIXES)


@dataclass
class DefenseRun:
    result: DefenseResult
    document: dict[str, Any]
    model: nn.Module


def load_defense_data(paths: dict[str, str | None], input_scale: float = 1.0) -> DefenseData:
    if not paths.get("clean_valid"):
        raise GoodnetError("clean validation data is required (it decides the pruning)")
    sets = {role: load_images(path, input_scale, name=path) for role, path in paths.items() if path}
    return DefenseData(**sets)


def _check_roles(data_paths: dict[str, str | None]) -> None:
    unknown = set(data_paths) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown data roles {sorted(unknown)}")


def _exports(source: ModelSource, onnx: bool) -> ModelExports:
    if onnx:
        require_onnx()
    return ModelExports(keras_like=source.path if source.is_keras else None, onnx=onnx)


def defend_files(source: ModelSource | str, data_paths: dict[str, str | None], out_dir: str,
                 settings: DefenseSettings = DefenseSettings(), input_scale: float = 1.0,
                 progress: bool = True, onnx: bool = False) -> DefenseRun:
    """Load B and the data, run the defense, write `out_dir`. Every input is checked before work."""
    source = ModelSource(source) if isinstance(source, str) else source
    _check_roles(data_paths)
    settings.validate()
    exports = _exports(source, onnx)
    data = load_defense_data(data_paths, input_scale)
    model = source.load_backdoored(data.clean_valid.image_shape)
    result = run_defense(model, data, settings, progress=progress)
    document = write_defense_outputs(out_dir, result, model, data,
                                     {role: path for role, path in data_paths.items() if path}, exports)
    return DefenseRun(result=result, document=document, model=model)


def repair_files(source: ModelSource, data_paths: dict[str, str | None], out_dir: str, repair,
                 input_scale: float = 1.0, onnx: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress: bool = True):
    """Repair B with `repair` (a repairs.Repair), measure B, B' and G on the data given, write
    `out_dir`. Returns (RepairRun, results document)."""
    _check_roles(data_paths)
    exports = _exports(source, onnx)
    sets = {role: load_images(path, input_scale, name=path) for role, path in data_paths.items() if path}
    if repair.needs_data and "clean_valid" not in sets:
        raise GoodnetError(f"the {repair.name} repair needs clean validation data (--clean-valid)")
    shapes = {s.image_shape for s in sets.values()}
    if len(shapes) > 1:
        raise GoodnetError(f"the data files hold images of different sizes: {sorted(shapes)}")
    model = source.load_backdoored(next(iter(shapes)) if shapes else None)
    run, outcome = run_repair(model, sets, repair, progress=progress, batch_size=batch_size)
    document = write_repair_outputs(out_dir, run, outcome, model,
                                    {role: path for role, path in data_paths.items() if path}, exports)
    return run, document


def evaluate_files(clean_path: str, poisoned_path: str, source: ModelSource | str, input_scale: float = 1.0,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, float]:
    """The lab's eval.py: clean accuracy and attack success rate, in %, for B, B' or G."""
    source = ModelSource(source) if isinstance(source, str) else source
    clean = load_images(clean_path, input_scale)
    poisoned = load_images(poisoned_path, input_scale)
    model = source.load(clean.image_shape)
    for role, images in (("clean data", clean), ("poisoned data", poisoned)):
        check_fits_model(images, model.input_shape, model.num_classes, role)
    return (accuracy(predict(model, clean.x, batch_size), clean.y),
            accuracy(predict(model, poisoned.x, batch_size), poisoned.y))


def classify_files(source: ModelSource, image_paths: Sequence[str], input_scale: float = 1.0) -> list[int]:
    """One label per image: in [0, N-1] for a classifier, [0, N] for a GoodNet (N = poisoned)."""
    images = [read_image(p, input_scale) for p in image_paths]
    model = source.load(images[0].shape)
    expected = tuple(model.input_shape)
    for path, image in zip(image_paths, images):
        if image.shape != expected:
            raise GoodnetError(f"{path}: image is {'x'.join(map(str, image.shape))} (C x H x W) but the "
                               f"model takes {'x'.join(map(str, expected))}")
    return [int(v) for v in predict(model, np.stack(images))]


__all__ = ["DefenseRun", "ModelSource", "classify_files", "defend_files", "evaluate_files",
           "load_defense_data", "repair_files"]
