"""Registry of built-in architectures, by the name saved in model files."""

from __future__ import annotations

from typing import Any

from ..errors import GoodnetError
from .base import FlattenNHWC, ImageClassifier
from .deepid import DeepID
from .resnet import ResNet8
from .small_cnn import SmallCNN
from ..keras_io.model import KerasModel

ARCHITECTURES: dict[str, type[ImageClassifier]] = {cls.arch: cls for cls in (DeepID, SmallCNN, ResNet8,
                                                                             KerasModel)}


def build_model(arch: str, **config: Any) -> ImageClassifier:
    """Build a registered architecture from its saved config."""
    if arch not in ARCHITECTURES:
        raise GoodnetError(f"unknown architecture '{arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[arch](**config)
    except (TypeError, ValueError) as exc:
        raise GoodnetError(f"cannot build '{arch}' with config {config}: {exc}") from None


__all__ = ["ARCHITECTURES", "DeepID", "FlattenNHWC", "ImageClassifier", "KerasModel", "ResNet8", "SmallCNN",
           "build_model"]
