"""Which Keras file is this, and what model does it hold? Full-model files (`model.save`) carry
their architecture; weights-only files (`save_weights`) need one from elsewhere: a built-in
architecture, a full-model file or a `model.to_json()` file."""

from __future__ import annotations

import json
import os
from typing import Any

import h5py

from ...errors import ModelError, shown_path
from ...models.keras_graph import KerasModel
from ..external import refuse_oversized
from .config import parse_model_config
from .native import ARCHIVE_SUFFIX, MAX_CONFIG_BYTES, read_archive_config
from .weights import load_keras_weights, read_keras_weights


def read_keras_config(path: str) -> dict[str, Any] | None:
    """The raw Keras model description of a full-model file (.h5 `model_config`, a `.keras`
    archive's config.json, a `model.to_json()` .json file), or None for a weights-only file."""
    if os.path.isdir(path):
        raise ModelError(f"{shown_path(path)}: is a directory, not a Keras file")
    if not os.path.isfile(path):
        raise ModelError(f"{shown_path(path)}: no such file")
    lower = path.lower()
    if lower.endswith(ARCHIVE_SUFFIX):
        return read_archive_config(path)
    if lower.endswith(".json"):
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ModelError(
                f"{shown_path(path)}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a model description"
            )
    else:
        try:
            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
        except OSError as exc:
            raise ModelError(f"{shown_path(path)}: not a readable HDF5 file ({exc})") from None
        if raw is None:
            return None
    try:
        config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(f"{shown_path(path)}: model_config is not a Keras model description (not JSON)") from None
    if not isinstance(config, dict):
        raise ModelError(f"{shown_path(path)}: model_config is not a Keras model description")
    return config


def read_model_config(path: str) -> dict[str, Any] | None:
    """The parsed architecture of a Keras full-model file, or None for a weights-only file."""
    config = read_keras_config(path)
    return None if config is None else parse_model_config(config, path)


def read_architecture(path: str) -> dict[str, Any]:
    """A graph from a full-model .h5 or .keras file or from a JSON file written by `model.to_json()`."""
    graph = read_model_config(path)
    if graph is None:
        raise ModelError(f"{shown_path(path)}: a weights-only Keras file; it holds no architecture")
    return graph


def load_keras_model(
    path: str,
    graph: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    input_divisor: float = 1.0,
    config: dict[str, Any] | None = None,
) -> KerasModel:
    """Build the Keras model of `path` (or `graph`, for a weights-only file, with `config` its raw
    Keras description) and load its weights."""
    if graph is None:
        config = read_keras_config(path)
        if config is None:
            raise ModelError(f"{shown_path(path)}: a weights-only Keras file; it holds no architecture")
        graph = parse_model_config(config, path)
    shape = graph.get("input_shape")
    if input_shape is not None and shape is not None and None not in shape and tuple(shape) != tuple(input_shape):
        raise ModelError(
            f"{shown_path(path)}: the model takes {tuple(shape)} (C, H, W) images, the data has {tuple(input_shape)}"
        )
    fixed = None if shape is not None and None not in shape else input_shape
    refuse_oversized(lambda: KerasModel(graph, input_shape=fixed, input_divisor=input_divisor), path)
    model = KerasModel(graph, input_shape=fixed, input_divisor=input_divisor)
    load_keras_weights(model, read_keras_weights(path, config), path)
    return model.eval()
