"""Model files: ours (safetensors + JSON header, never pickle) and the lab's Keras weights.

Our files hold tensors plus a JSON description under the metadata key "goodnet":
  {"kind": "classifier", "arch": ..., "config": {...}}                      a model (B or B')
  {"kind": "goodnet", "arch": ..., "config": {...}, "layer": ..., "pruned": [...]}   a GoodNet
Loading rebuilds the module from the registry of built-in architectures; nothing in the file runs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .architectures import ARCHITECTURES, ImageClassifier, build_model
from .errors import GoodnetError
from .goodnet_model import GoodNet, PrunedGoodNet
from .keras_weights import load_keras_weights, output_size, read_keras_weights

FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras.h5")


def _header(model: ImageClassifier, kind: str, **extra: Any) -> dict[str, str]:
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "arch": model.arch, "config": model.config(), **extra}
    return {"goodnet": json.dumps(meta, sort_keys=True)}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, path: str) -> None:
    """Save a classifier (B, B') or a GoodNet as one self-describing file."""
    if isinstance(model, PrunedGoodNet):
        tensors = {f"backdoored.{k}": v for k, v in _state(model.backdoored).items()}
        save_file(tensors, path, metadata=_header(model.backdoored, "goodnet", layer=model.layer,
                                                   pruned=model.pruned))
    elif isinstance(model, ImageClassifier):
        save_file(_state(model), path, metadata=_header(model, "classifier"))
    else:
        raise TypeError(f"cannot save {type(model).__name__}")


def _read_ours(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(path, framework="pt") as f:
            meta = (f.metadata() or {}).get("goodnet")
            if meta is None:
                raise GoodnetError(f"{path}: a safetensors file without a goodnet header "
                                   f"(architecture unknown); save models with goodnet")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise GoodnetError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        header = json.loads(meta)
    except ValueError:
        header = None
    if not isinstance(header, dict) or not all(k in header for k in ("arch", "config", "kind")) \
            or not isinstance(header["config"], dict):
        raise GoodnetError(f"{path}: malformed goodnet header")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise GoodnetError(f"{path}: tensor '{name}' contains NaN or infinite values")
    return header, tensors


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise GoodnetError(f"{path}: weights do not match the architecture "
                           f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(unexpected) or '-'})")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise GoodnetError(f"{path}: '{name}' has shape {tuple(value.shape)}, "
                               f"expected {tuple(expected[name].shape)}")
    model.load_state_dict(tensors)


def load_model(path: str, arch: str = "deepid", input_shape: tuple[int, int, int] | None = None,
               input_divisor: float = 1.0) -> nn.Module:
    """Load B, B' or G in eval mode.

    Our .safetensors files describe themselves. A Keras weights file (.h5) needs the architecture
    (`arch`) and the input shape (taken from the data by callers); the number of classes is read
    from the file.
    """
    if not os.path.isfile(path):
        raise GoodnetError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(MODEL_SUFFIX):
        header, tensors = _read_ours(path)
        model = build_model(header["arch"], **header["config"])
        if header["kind"] == "classifier":
            _load_state(model, tensors, path)
            return model.eval()
        if header["kind"] == "goodnet":
            prefix = "backdoored."
            _load_state(model, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, path)
            pruned = header.get("pruned", [])
            if any(not isinstance(c, int) for c in pruned):
                raise GoodnetError(f"{path}: malformed list of pruned channels")
            return PrunedGoodNet(model, header["layer"], pruned).eval()
        raise GoodnetError(f"{path}: unknown model kind '{header['kind']}'")
    if lower.endswith(KERAS_SUFFIXES):
        layers = read_keras_weights(path)
        if arch not in ARCHITECTURES:
            raise GoodnetError(f"unknown architecture '{arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
        num_classes = output_size(layers, ARCHITECTURES[arch].final_layer, path)
        config: dict[str, Any] = {"num_classes": num_classes, "input_divisor": input_divisor}
        if input_shape is not None:
            config["input_shape"] = tuple(input_shape)
        model = build_model(arch, **config)
        load_keras_weights(model, layers, path)
        return model.eval()
    raise GoodnetError(f"{path}: unknown model format (expected {MODEL_SUFFIX} or a Keras .h5 weights file)")


__all__ = ["GoodNet", "load_model", "save_model"]
