"""File-to-directory workflows shared by the CLI's `defend` and `demo` (the demo runs exactly this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .data import check_fits_model, load_images
from .defense import ROLES, DefenseData, DefenseResult, DefenseSettings, run_defense
from .errors import GoodnetError
from .metrics import accuracy
from .model_io import load_model
from .architectures import ImageClassifier
from .reporting import write_defense_outputs
from .sweep import DEFAULT_BATCH_SIZE, predict


@dataclass
class DefenseRun:
    result: DefenseResult
    document: dict[str, Any]
    model: ImageClassifier


def load_defense_data(paths: dict[str, str | None], input_scale: float = 1.0) -> DefenseData:
    if not paths.get("clean_valid"):
        raise GoodnetError("clean validation data is required (it decides the pruning)")
    sets = {role: load_images(path, input_scale, name=path) for role, path in paths.items() if path}
    return DefenseData(**sets)


def defend_files(model_path: str, data_paths: dict[str, str | None], out_dir: str,
                 settings: DefenseSettings = DefenseSettings(), arch: str = "deepid",
                 input_scale: float = 1.0, progress: bool = True) -> DefenseRun:
    """Load B and the data, run the defense, write `out_dir`. Every input is checked before work."""
    unknown = set(data_paths) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown data roles {sorted(unknown)}")
    settings.validate()
    data = load_defense_data(data_paths, input_scale)
    model = load_model(model_path, arch=arch, input_shape=data.clean_valid.image_shape)
    if not isinstance(model, ImageClassifier):
        raise GoodnetError(f"{model_path}: is a GoodNet; defend needs the backdoored model B")
    result = run_defense(model, data, settings, progress=progress)
    document = write_defense_outputs(out_dir, result, model, data,
                                     {role: path for role, path in data_paths.items() if path})
    return DefenseRun(result=result, document=document, model=model)


def evaluate_files(clean_path: str, poisoned_path: str, model_path: str, arch: str = "deepid",
                   input_scale: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, float]:
    """The lab's eval.py: clean accuracy and attack success rate, in %, for B, B' or G."""
    clean = load_images(clean_path, input_scale)
    poisoned = load_images(poisoned_path, input_scale)
    model = load_model(model_path, arch=arch, input_shape=clean.image_shape)
    for role, images in (("clean data", clean), ("poisoned data", poisoned)):
        check_fits_model(images, model.input_shape, model.num_classes, role)
    return (accuracy(predict(model, clean.x, batch_size), clean.y),
            accuracy(predict(model, poisoned.x, batch_size), poisoned.y))


__all__ = ["DefenseRun", "defend_files", "evaluate_files", "load_defense_data"]
