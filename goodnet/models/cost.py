"""How much arithmetic one forward pass of a model takes: the multiply-adds of its convolutions and
dense layers for one image, counted by running one blank image through it. Grids use it, with each
repair's usual cost relative to fine-tuning, to start their longest cells first."""

from __future__ import annotations

import torch
from torch import nn


def multiply_adds(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of `model`'s Conv2d and Linear layers for one image of `input_shape` (C, H, W);
    other layers (pooling, normalisation, activations) are cheap beside them and not counted. A
    model that cannot run a blank image counts 0 (it is refused elsewhere, with its reason)."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.weight[0].numel()  # in-channels / groups x kernel height x width
            total += int(output[0].numel()) * kernel
        else:
            total += int(module.in_features) * int(module.out_features)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    was_training = model.training
    parameter = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            blank = torch.zeros((1, *input_shape))
            model(blank if parameter is None else blank.to(parameter.device, parameter.dtype))
    except Exception:  # noqa: BLE001 - a cost estimate only: 0, and the real refusal comes elsewhere
        return 0
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total
