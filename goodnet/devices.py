"""Where models run: `--device cpu|cuda|auto`, one rule for every command.

A command picks the device once (`using_device`); each top-level step (a repair, a scan, STRIP,
an evaluation) moves the models it was handed there for its duration (`placed`) and puts them
back where they were, and every helper sends its batches to wherever the model it runs is
(`device_of`), so nothing below the entry points needs to know the choice. The random numbers
goodnet draws itself (shuffles, augmentations, masks, noise) come from seeded CPU generators and are
then moved, so a GPU run draws them as a CPU run does; PyTorch's own draws (dropout) come from the
device's generator, and floating-point arithmetic differs, so GPU numbers are close to CPU numbers,
not equal.
Models handed back (B', G) are on the CPU, ready to save.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

import numpy as np

from .errors import SettingsError
from .lazy_torch import nn, torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# the device of the current command; None: the CPU (a torch.device here would import PyTorch)
_CURRENT: contextvars.ContextVar[torch.device | None] = contextvars.ContextVar("goodnet_device", default=None)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto': the first CUDA GPU when PyTorch sees one, else the CPU; 'cuda' (or 'cuda:N') without
    one is refused in one line rather than falling back silently."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:(0|[1-9][0-9]{0,3}))?", text):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise SettingsError(
                f"--device {text}: PyTorch sees no CUDA GPU (torch {torch.__version__}, {build}); "
                f"use --device cpu or auto"
            )
        index = text.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise SettingsError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(text)
    raise SettingsError(f"--device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), not {name!r}")


def compute_device() -> torch.device:
    """The device the current command runs models on (the CPU unless `using_device` says otherwise)."""
    device = _CURRENT.get()
    return torch.device("cpu") if device is None else device


@contextlib.contextmanager
def using_device(device: str | torch.device) -> Iterator[torch.device]:
    """Run the enclosed work's models on `device` (resolved as `resolve_device` does)."""
    token = _CURRENT.set(resolve_device(device))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def device_of(model: nn.Module) -> torch.device:
    """Where a model's tensors are (the CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def placed(*models: nn.Module) -> Iterator[torch.device]:
    """Move `models` to the compute device for the enclosed work, then back to where each was."""
    device = compute_device()
    homes = [device_of(m) for m in models]
    moved = [(m, home) for m, home in zip(models, homes) if home != device]
    for m, _ in moved:
        m.to(device)
    try:
        yield device
    finally:
        for m, home in moved:
            m.to(home)


def fast_layout_ready(model: nn.Module) -> bool:
    """Whether `model` is one of goodnet's own architectures, whose forward works unchanged on
    channels-last tensors (they declare `channels_last_ready`); a model from elsewhere may `view`
    its feature maps, which that layout would break, so it is never switched."""
    return getattr(type(model), "channels_last_ready", False) is True


@contextlib.contextmanager
def training_layout(model: nn.Module, like: nn.Module | None = None) -> Iterator[nn.Module]:
    """For the enclosed training loop, keep `model`'s 4-D weights in the channels-last layout when
    it runs on the CPU and it (or `like`, the model it was made from, for a wrapper) is one of
    goodnet's own architectures; back to the standard layout afterwards, in place. PyTorch's oneDNN
    convolutions take that layout from the weights and run about 1.3x faster in it on these small
    networks (benchmarks/repairs.py measures it). The values are the same; only the order in which
    the kernels add up differs, so the trained weights differ from a standard-layout run by
    rounding, as they do between thread counts. Other models, and every GPU, are left as they are."""
    switch = device_of(model).type == "cpu" and fast_layout_ready(like if like is not None else model)
    if switch:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if switch:
            model.to(memory_format=torch.contiguous_format)


def to_model(tensor: torch.Tensor | np.ndarray, model: nn.Module) -> torch.Tensor:
    """A batch (tensor or array) on the model's device."""
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(tensor)
    return tensor.to(device_of(model))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A result back on the CPU as an array, from any device."""
    return tensor.detach().cpu().numpy()


__all__ = [
    "DEVICE_CHOICES",
    "compute_device",
    "device_of",
    "fast_layout_ready",
    "placed",
    "resolve_device",
    "to_model",
    "to_numpy",
    "training_layout",
    "using_device",
]
