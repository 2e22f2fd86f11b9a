"""PyTorch, imported on first use, so `goodnet --help` and a usage error answer at once.

Building the command line reads the repair registry (each repair's name, description and typed
settings), so it imports every repair module and what they import; importing PyTorch takes seconds,
and none of that needs it. Those modules take `torch`, `nn`, `F` and `fx` from here instead of
importing them: each is a stand-in for the module of that name that imports it on its first
attribute access and from then on hands every attribute over, so `torch.zeros(3)`, `nn.Module`,
`isinstance(m, nn.Conv2d)` and `F.relu` mean what they mean with the real module. Type checkers see
the real modules.

Code that runs while its module is imported still imports PyTorch then: a class deriving from
`nn.Module`, a constant built from PyTorch's classes or functions, a decorator such as
`@torch.no_grad()`. In a module the command line imports, such code lives in a function (cached
where it builds a constant) or in a module the command line does not import (the architectures of
goodnet.models). tests/test_fast_start.py checks that `goodnet --help` does not import PyTorch.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any


class LazyModule:
    """Stands in for the module `name`, importing it on first attribute access."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_module", None)

    def _load(self) -> ModuleType:
        if self._module is None:
            object.__setattr__(self, "_module", importlib.import_module(self._name))
        return self._module

    def __getattr__(self, attr: str) -> Any:
        if attr in LazyModule.__slots__:  # unset: an instance made without __init__ (a copy)
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._load(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import fx, nn
else:
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")
    F = LazyModule("torch.nn.functional")
    fx = LazyModule("torch.fx")

__all__ = ["F", "LazyModule", "fx", "nn", "torch"]
