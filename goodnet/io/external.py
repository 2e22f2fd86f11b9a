"""Models goodnet did not define: a PyTorch class of the user's (`package.module:factory` plus a
weights file) or a TorchScript file.

Weights are read as tensors only: safetensors, or `torch.load(weights_only=True)`, which refuses
pickled code. The factory is the user's own installed code, named on the command line; a model file
never chooses what gets imported. goodnet needs two facts no PyTorch module states, the number of
classes and the input shape: the input shape comes from the data, the number of classes from one
forward pass; both are attached to the module as `num_classes` and `input_shape`.
"""

from __future__ import annotations

import importlib
import os
import warnings
import zipfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import ModelError, shown_path

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ts", ".zip")


def import_factory(spec: str):
    """`package.module:function` -> the function (or class)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"factory '{spec}' is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"factory '{spec}': cannot import {module_name} ({exc})") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelError(f"factory '{spec}': {module_name} has no attribute '{attr}'")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"factory '{spec}' is not callable")
    return target


def is_torchscript(path: str) -> bool:
    """Whether a file is a TorchScript archive: a zip holding a `code/` folder. A damaged zip is not
    one (its reader then refuses it in one line)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, NotImplementedError, OSError, ValueError, EOFError):
        return False


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch.save'd state dict read without pickle code."""
    if not os.path.isfile(path):
        raise ModelError(f"{shown_path(path)}: no such file")
    if path.lower().endswith(".safetensors"):
        try:
            state = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{shown_path(path)}: not a readable safetensors file ({exc})") from None
    else:
        if is_torchscript(path):
            raise ModelError(f"{shown_path(path)}: a TorchScript file; load it without --factory")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types; never pass on advice to unpickle
            text = str(exc).strip()
            if "weights only load failed" in text.lower() or "weights_only" in text:
                raise ModelError(
                    f"{shown_path(path)}: holds pickled Python objects, not only tensors, and goodnet never "
                    f"unpickles code; save the weights with torch.save(model.state_dict(), ...) or "
                    f"as .safetensors"
                ) from None
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ModelError(f"{shown_path(path)}: not a readable PyTorch weights file ({first})") from None
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{shown_path(path)}: expected a dictionary of tensors (a state dict)")
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelError(f"{shown_path(path)}: tensor '{name}' contains NaN or infinite values")
    return state


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str, owner: str) -> None:
    """load_state_dict, with one-line errors naming the first mismatches instead of a traceback."""
    check_state_shapes(model, state, source, owner)
    model.load_state_dict(state)


def on_meta(build) -> nn.Module | None:
    """`build()` on the meta device, where nothing is allocated: sizes in a file are data, possibly
    absurd, so they are checked on this probe first. None when the construction cannot run on meta
    (the real build then tells); a ModelError (bad input) passes through."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on zero-element tensors: the checks speak
            return build()
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - not every construction runs on meta
        return None


def refuse_oversized(build, source: str) -> None:
    """Refuse in one line a model whose weights (sized on the meta device) would not fit in the
    memory available."""
    from .data import available_memory

    probe = on_meta(build)
    if probe is None:
        return
    need = sum(t.numel() * t.element_size() for t in probe.state_dict().values())
    free = available_memory()
    if free is not None and need > free:
        raise ModelError(
            f"{shown_path(source)}: the architecture declares {need / 2**30:.1f} GiB of weights, more than the "
            f"{free / 2**30:.1f} GiB of memory available"
        )


def check_state_shapes(model: nn.Module, state: dict[str, torch.Tensor], source: str, owner: str) -> None:
    """Refuse, in one line, a state whose names or shapes differ from `model`'s (which may live on
    the meta device: nothing is allocated)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{shown_path(source)}: weights do not match {owner} (missing: {', '.join(missing[:5]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:5]) or '-'})"
        )
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ModelError(
                f"{shown_path(source)}: '{name}' has shape {tuple(value.shape)}, {owner} expects "
                f"{tuple(expected[name].shape)}"
            )


def describe(model: nn.Module, input_shape: tuple[int, ...], source: str) -> nn.Module:
    """Attach `input_shape` and `num_classes` (from one forward pass) to a user model."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:  # the user's forward can raise anything
        raise ModelError(
            f"{shown_path(source)}: the model cannot run on {tuple(input_shape)} (C, H, W) inputs "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        raise ModelError(f"{shown_path(source)}: the model must return one (batch, classes) tensor of scores")
    model.input_shape = tuple(int(d) for d in input_shape)
    model.num_classes = int(out.shape[1])
    return model


def load_factory_model(
    factory: str, weights: str | None, input_shape: tuple[int, ...] | None, state: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    if input_shape is None:
        raise ModelError(f"factory model '{factory}': the input shape is unknown (give data or images)")
    build = import_factory(factory)
    try:
        model = build()
    except Exception as exc:  # user code
        raise ModelError(f"factory '{factory}' failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory '{factory}' returned a {type(model).__name__}, not a torch.nn.Module")
    if state is None and weights is not None:
        state = read_state_dict(weights)
    if state is not None:
        load_state_checked(model, state, str(weights), f"{factory}()")
    model.goodnet_factory = factory
    return describe(model, input_shape, weights or factory)


def load_torchscript(path: str, input_shape: tuple[int, ...] | None) -> nn.Module:
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and others for damaged archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{shown_path(path)}: not a readable TorchScript file ({first})") from None
    if input_shape is None:
        raise ModelError(f"{shown_path(path)}: the input shape of a TorchScript model is unknown (give data or images)")
    return describe(model, input_shape, path)
