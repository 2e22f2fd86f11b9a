"""Which Keras file is this, and what model does it hold? Full-model files (`model.save`) carry
their architecture; weights-only files (`save_weights`) need one from elsewhere: a built-in
architecture, a full-model file or a `model.to_json()` file."""

from __future__ import annotations

import os
from typing import Any

import h5py

from ...errors import ModelError
from .config import parse_model_config
from ...models.keras_graph import KerasModel
from ..external import refuse_oversized
from .weights import load_keras_weights, read_keras_weights


def read_model_config(path: str) -> dict[str, Any] | None:
    """The parsed architecture of a Keras full-model file, or None for a weights-only file."""
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelError(f"{path}: not a readable HDF5 file ({exc})") from None
    if raw is None:
        return None
    return parse_model_config(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw), path)


def read_architecture(path: str) -> dict[str, Any]:
    """A graph from a full-model .h5 file or from a JSON file written by `model.to_json()`."""
    if path.lower().endswith(".json"):
        if not os.path.isfile(path):
            raise ModelError(f"{path}: no such file")
        with open(path, encoding="utf-8") as f:
            return parse_model_config(f.read(), path)
    graph = read_model_config(path)
    if graph is None:
        raise ModelError(f"{path}: a weights-only Keras file; it holds no architecture")
    return graph


def load_keras_model(path: str, graph: dict[str, Any] | None = None,
                     input_shape: tuple[int, int, int] | None = None, input_divisor: float = 1.0) -> KerasModel:
    """Build the Keras model of `path` (or `graph`, for a weights-only file) and load its weights."""
    graph = graph if graph is not None else read_architecture(path)
    shape = graph.get("input_shape")
    if input_shape is not None and shape is not None and None not in shape and tuple(shape) != tuple(input_shape):
        raise ModelError(f"{path}: the model takes {tuple(shape)} (C, H, W) images, the data has "
                           f"{tuple(input_shape)}")
    fixed = None if shape is not None and None not in shape else input_shape
    refuse_oversized(lambda: KerasModel(graph, input_shape=fixed, input_divisor=input_divisor), path)
    model = KerasModel(graph, input_shape=fixed, input_divisor=input_divisor)
    load_keras_weights(model, read_keras_weights(path), path)
    return model.eval()


