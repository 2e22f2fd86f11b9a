"""Keras HDF5 weights into and out of our PyTorch models, without TensorFlow or file code.

Keras writes one group per layer (attr `weight_names`, datasets `<layer>/<name>:0` in Keras 2,
`<layer>/<name>` in Keras 3), either at the file root (`save_weights`) or under `model_weights`
(`model.save`). Conv kernels are stored as (kh, kw, in, out) and dense kernels as (in, out); our
models flatten in NHWC order like Keras, so dense kernels only need a transpose. BatchNormalization
stores gamma, beta, moving_mean and moving_variance (gamma/beta absent when scale/center is off).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import torch
from torch import nn

from ...errors import ModelError, shown_path
from ..data import refuse_outside_storage
from .native import ARCHIVE_SUFFIX, is_native_weights, read_archive_weights, read_native_weights


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_weights(path: str, config: dict | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Return {layer name: {weight short name ('kernel', 'bias', ...): array}} in file order, from
    any Keras layout: Keras 2's and Keras 3's legacy HDF5, Keras 3's `.weights.h5` and `.keras`
    (see native.py; `config`, the model's raw Keras config, names layers there when the file does not)."""
    if os.path.isdir(path):
        raise ModelError(f"{shown_path(path)}: is a directory, not a Keras file")
    if not os.path.isfile(path):
        raise ModelError(f"{shown_path(path)}: no such file")
    if path.lower().endswith(ARCHIVE_SUFFIX):
        return read_archive_weights(path, config)
    try:
        with h5py.File(path, "r") as f:
            if is_native_weights(f):
                return read_native_weights(f, path, config)
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise ModelError(f"{shown_path(path)}: not a Keras weights file (no 'layer_names' attribute)")
            layers: dict[str, dict[str, np.ndarray]] = {}
            for raw_name in root.attrs["layer_names"]:
                name = _text(raw_name)
                if name not in root:
                    raise ModelError(f"{shown_path(path)}: layer '{name}' is listed but has no group")
                group = root[name]
                weights = {}
                for raw_weight in group.attrs.get("weight_names", []):
                    weight = _text(raw_weight)
                    if weight not in group:
                        raise ModelError(f"{shown_path(path)}: layer '{name}' lacks its weight '{weight}'")
                    short = weight.rsplit("/", 1)[-1].split(":")[0]
                    if isinstance(group.get(weight, getlink=True), (h5py.ExternalLink, h5py.SoftLink)):
                        raise ModelError(
                            f"{shown_path(path)}: layer '{name}' weight '{weight}' is a link to elsewhere; "
                            f"goodnet reads only what is inside the file"
                        )
                    if not isinstance(group[weight], h5py.Dataset):
                        raise ModelError(f"{shown_path(path)}: layer '{name}' weight '{weight}' is not a dataset")
                    refuse_outside_storage(
                        group[weight], f"{shown_path(path)}: layer '{name}' weight '{weight}'", ModelError
                    )
                    weights[short] = np.asarray(group[weight][()])
                layers[name] = weights
            return layers
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{shown_path(path)}: not a readable HDF5 file ({exc})") from None


WEIGHTED_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def keras_names(module: nn.Module) -> list[tuple[str, str]]:
    """(Keras weight short name, PyTorch tensor name) pairs of a module, in Keras's order."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return [
            ("gamma", "weight"),
            ("beta", "bias"),
            ("moving_mean", "running_mean"),
            ("moving_variance", "running_var"),
        ]
    return [("kernel", "weight"), ("bias", "bias")]


def _torch_layout(module: nn.Module, short: str, array: np.ndarray) -> np.ndarray:
    if short == "kernel" and isinstance(module, nn.Conv2d):
        return array.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    if short == "kernel" and isinstance(module, nn.Linear):
        return array.T
    return array


def load_keras_weights(model: nn.Module, layers: dict[str, dict[str, np.ndarray]], source: str) -> None:
    """Copy Keras weights into the same-named Conv2d/Linear/BatchNorm modules of `model`, checking shapes."""
    targets = {name: m for name, m in model.named_modules() if isinstance(m, WEIGHTED_MODULES)}
    with_weights = {name for name, w in layers.items() if w}
    missing = sorted(set(targets) - with_weights)
    if missing:
        raise ModelError(f"{shown_path(source)}: no weights for layer(s) {', '.join(missing)}")
    extra = sorted(with_weights - set(targets))
    if extra:
        raise ModelError(
            f"{shown_path(source)}: layer(s) {', '.join(extra)} do not exist in the {type(model).__name__} architecture"
        )
    with torch.no_grad():
        for name, module in targets.items():
            weights = dict(layers[name])
            for short, param_name in keras_names(module):
                param = getattr(module, param_name)
                if param is None:
                    continue
                if short not in weights and short in ("gamma", "beta"):
                    param.fill_(1.0 if short == "gamma" else 0.0)  # scale / center switched off
                    continue
                if short not in weights:
                    raise ModelError(f"{shown_path(source)}: layer '{name}' has no {short}")
                stored = weights.pop(short)
                if not np.isfinite(stored).all():
                    raise ModelError(f"{shown_path(source)}: layer '{name}' {short} contains NaN or infinite values")
                value = _torch_layout(module, short, stored)
                if tuple(value.shape) != tuple(param.shape):
                    expected = _keras_shape(module, short, tuple(param.shape))
                    raise ModelError(
                        f"{shown_path(source)}: layer '{name}' {short} has shape {tuple(stored.shape)} "
                        f"but the model expects {expected}; is the input size or "
                        f"architecture right?"
                    )
                param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
            if weights:
                raise ModelError(f"{shown_path(source)}: layer '{name}' has unexpected weights {', '.join(weights)}")


def _keras_shape(module: nn.Module, short: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    if short == "kernel" and isinstance(module, nn.Conv2d):
        out, inp, kh, kw = torch_shape
        return (kh, kw, inp, out)
    if short == "kernel" and isinstance(module, nn.Linear):
        return torch_shape[::-1]
    return torch_shape


def output_size(layers: dict[str, dict[str, np.ndarray]], final_layer: str, source: str) -> int:
    """Number of classes, read off the final dense layer's kernel."""
    kernel = layers.get(final_layer, {}).get("kernel")
    if kernel is None or kernel.ndim != 2:
        raise ModelError(
            f"{shown_path(source)}: no dense layer named '{final_layer}' to read the number of classes from"
        )
    return int(kernel.shape[1])


def keras_array(module: nn.Module, short: str) -> np.ndarray:
    """One of `module`'s tensors in Keras's layout."""
    torch_name = dict(keras_names(module))[short]
    value = getattr(module, torch_name).detach().cpu().numpy()
    if short == "kernel" and isinstance(module, nn.Conv2d):
        return value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    if short == "kernel" and isinstance(module, nn.Linear):
        return value.T
    return value
