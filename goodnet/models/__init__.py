"""Models: the classifiers goodnet builds and prunes (one family per file, in a registry), the
GoodNet classes with their one labelling rule, and training.

The names below are imported on first use: a module that imports only `goodnet.models.training`
(as the repairs do, which the command line reads to list them) does not define every architecture,
which imports PyTorch. Asking for any of them imports the modules that define them all, so every
built-in architecture is in the registry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import FlattenNHWC, ImageClassifier
    from .deepid import DeepID
    from .goodnet import GoodNet, PrunedGoodNet, TwoModelGoodNet, build_goodnet, goodnet_labels
    from .keras_graph import KerasModel
    from .registry import ARCHITECTURES, build_model, register_architecture
    from .resnet import ResNet8
    from .small_cnn import SmallCNN

# the modules that define the names below, in the order that registers the architectures
_MODULES = ("base", "deepid", "goodnet", "keras_graph", "registry", "resnet", "small_cnn")
_EXPORTS = {
    "FlattenNHWC": "base",
    "ImageClassifier": "base",
    "DeepID": "deepid",
    "GoodNet": "goodnet",
    "PrunedGoodNet": "goodnet",
    "TwoModelGoodNet": "goodnet",
    "build_goodnet": "goodnet",
    "goodnet_labels": "goodnet",
    "KerasModel": "keras_graph",
    "ARCHITECTURES": "registry",
    "build_model": "registry",
    "register_architecture": "registry",
    "ResNet8": "resnet",
    "SmallCNN": "small_cnn",
}

__all__ = [
    "ARCHITECTURES",
    "DeepID",
    "FlattenNHWC",
    "GoodNet",
    "ImageClassifier",
    "KerasModel",
    "PrunedGoodNet",
    "ResNet8",
    "SmallCNN",
    "TwoModelGoodNet",
    "build_goodnet",
    "build_model",
    "goodnet_labels",
    "register_architecture",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    modules = {module: importlib.import_module(f"{__name__}.{module}") for module in _MODULES}
    for export, module in _EXPORTS.items():
        globals()[export] = getattr(modules[module], export)
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
