"""Registry of built-in architectures, by the name saved in model files (one family per file,
each registering itself with `register_architecture`)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ModelError
from .base import ImageClassifier

ARCHITECTURES: dict[str, type[ImageClassifier]] = {}


def register_architecture(cls: type[ImageClassifier]) -> type[ImageClassifier]:
    """Class decorator: make `cls` buildable from (`cls.arch`, config) and loadable from our files."""
    if (
        not isinstance(cls, type)
        or not issubclass(cls, ImageClassifier)
        or not isinstance(getattr(cls, "arch", None), str)
    ):
        raise ModelError(f"register_architecture takes an ImageClassifier subclass with an `arch` name, not {cls!r}")
    if cls.arch in ARCHITECTURES and ARCHITECTURES[cls.arch] is not cls:
        raise ValueError(f"architecture name '{cls.arch}' is taken by {ARCHITECTURES[cls.arch].__name__}")
    ARCHITECTURES[cls.arch] = cls
    return cls


def build_model(arch: str, **config: Any) -> ImageClassifier:
    """Build a registered architecture from its saved config."""
    if not isinstance(arch, str):
        raise ModelError(
            f"an architecture is named by text (known: {', '.join(sorted(ARCHITECTURES))}), not {type(arch).__name__}"
        )
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[arch](**config)
    # a header is data, not code; RuntimeError: sizes PyTorch cannot build (a negative width)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        shown = json.dumps(config, default=str)
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"cannot build '{arch}' with config {shown}: {type(exc).__name__}: {first}") from None
