"""Copies of a model that a repair can change and train, whatever format the model came from.

`copy.deepcopy` alone is not enough for a TorchScript model: it drops the plain Python attributes
goodnet attaches when it loads a model (`num_classes`, `input_shape`, ...), so the copy can no
longer be measured or saved; and it clones every parameter through autograd, so the copy's
parameters are non-leaf tensors that no optimiser takes ("can't optimize a non-leaf Tensor").
`copy_model` copies a TorchScript model without autograd, gives each parameter back its
`requires_grad`, and carries the description attributes over: the copy trains like the original.
"""

from __future__ import annotations

import copy

from .lazy_torch import nn, torch

DESCRIPTION_ATTRIBUTES = ("num_classes", "input_shape", "goodnet_factory", "input_range")


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy of `model` (weights, buffers, mode) whose parameters are leaves with the
    original's `requires_grad`, and which says what the original says (DESCRIPTION_ATTRIBUTES)."""
    if not isinstance(model, torch.jit.ScriptModule):
        return copy.deepcopy(model)
    with torch.no_grad():  # a scripted copy clones its tensors; outside no_grad they become non-leaf
        copied = copy.deepcopy(model)
    wants_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in copied.named_parameters():
        p.requires_grad_(wants_grad.get(name, True))
    for attr in DESCRIPTION_ATTRIBUTES:  # a scripted copy keeps only what its compiled class declares
        if hasattr(model, attr) and not hasattr(copied, attr):
            setattr(copied, attr, getattr(model, attr))
    return copied


__all__ = ["DESCRIPTION_ATTRIBUTES", "copy_model"]
