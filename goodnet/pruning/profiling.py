"""Which channels does clean data use? Mean activation per channel: at the pruning cut (the lab's
profile, which `prune` uses), or after the conv's activation function (fine-pruning's)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from ..devices import to_model
from ..errors import ModelError
from ..inference import DEFAULT_BATCH_SIZE, batches
from ..lazy_torch import F, fx, nn, torch
from .graph_split import check_conv_layer, split_at_conv, trace
from .sweep import run_trunk


def channel_means(cut_tensor: torch.Tensor) -> np.ndarray:
    """Mean of each channel over inputs and positions, accumulated in float64 so the ranking does
    not depend on batch order."""
    dims = [0] + list(range(2, cut_tensor.dim()))
    return cut_tensor.double().mean(dim=dims).cpu().numpy()


def pruning_order(means: np.ndarray, order: str = "ascending") -> np.ndarray:
    """Channel indices to prune first-to-last; ties (e.g. the many dead channels) by index."""
    if order == "ascending":
        return np.argsort(means, kind="stable")
    if order == "descending":
        return np.argsort(-means, kind="stable")
    raise ValueError(f"unknown order '{order}' (ascending or descending)")


def activation_order(model: nn.Module, x: np.ndarray, layer: str, order: str = "ascending") -> list[int]:
    """`layer`'s channels in `order` of mean activation at its cut on images `x` (the lab's order)."""
    return [int(c) for c in pruning_order(channel_means(run_trunk(split_at_conv(model, layer), x)[0]), order)]


# Fine-pruning's neuron: what a conv channel outputs after its activation function. Tracing forward
# from the conv, what `_passes` names passes the channel on unchanged in meaning: its BatchNorm, a
# residual addition (ResNet blocks activate after adding the shortcut), channel-wise pooling and
# identities; the trace ends at what `_activations` names. Both are built on first use: they name
# PyTorch's classes and functions, and this module is imported without PyTorch (see lazy_torch).
_ACTIVATION_METHODS = {"relu", "relu_", "tanh", "sigmoid"}
_PASS_METHODS = {"add", "add_"}


@functools.cache
def activation_kinds() -> tuple[tuple[type[nn.Module], ...], frozenset[Callable[..., Any]]]:
    """The activations' (module types, functions): built on first use, since they are PyTorch's
    and this module is imported without PyTorch (see lazy_torch)."""
    modules = (
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.ELU,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Hardtanh,
        nn.Sigmoid,
        nn.PReLU,
        nn.Mish,
        nn.Hardswish,
    )
    functions = frozenset(
        {
            F.relu,
            F.relu_,
            torch.relu,
            torch.relu_,
            F.relu6,
            F.leaky_relu,
            F.elu,
            F.gelu,
            F.silu,
            torch.tanh,
            torch.sigmoid,
            F.hardtanh,
            F.mish,
            F.hardswish,
        }
    )
    return modules, functions


@functools.cache
def _passes() -> tuple[tuple[type[nn.Module], ...], frozenset[Callable[..., Any]]]:
    modules = (
        nn.modules.batchnorm._BatchNorm,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.Dropout,
        nn.Dropout2d,
        nn.Identity,
    )
    functions = frozenset(
        {
            operator.add,
            operator.iadd,
            torch.add,
            F.max_pool2d,
            F.avg_pool2d,
            F.adaptive_avg_pool2d,
            F.adaptive_max_pool2d,
            F.dropout,
        }
    )
    return modules, functions


def _matches(node: fx.Node, modules: dict[str, nn.Module], kinds, functions, methods) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], kinds)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def post_activation_node(gm: fx.GraphModule, layer: str) -> fx.Node:
    """The node whose output is conv `layer`'s channels after their activation function: from the
    conv, follow its single reader through BatchNorm, residual additions, pooling and identities to
    the first activation (ReLU, ...). Without one (the conv feeds a flatten or a linear layer
    directly), the last node reached."""
    modules = dict(gm.named_modules())
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        raise ModelError(f"layer '{layer}' is called {len(calls)} times in forward(); profiling needs exactly one call")
    node = calls[0]
    while len(node.users) == 1:
        user = next(iter(node.users))
        if _matches(user, modules, *activation_kinds(), _ACTIVATION_METHODS):
            return user
        if not _matches(user, modules, *_passes(), _PASS_METHODS):
            break
        node = user
    return node


def post_activation_means(
    model: nn.Module, x: np.ndarray, layer: str, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[str, np.ndarray]:
    """(the traced node measured, mean of each of `layer`'s channels after its activation function
    over images `x` and positions): fine-pruning's activation profile (Liu et al. 2018)."""
    check_conv_layer(model, layer)
    gm = trace(model)
    target = post_activation_node(gm, layer)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:  # topological order: every ancestor of `target` comes before it
        env[node] = graph.node_copy(node, lambda a: env[a])
        if node is target:
            break
    graph.output(env[target])
    head = fx.GraphModule(gm, graph, class_name="PostActivation")
    head.graph.eliminate_dead_code()
    head.recompile()
    head.eval()  # running statistics, no dropout: the profile of the model as it answers
    total, count = None, 0
    with torch.inference_mode():
        for s in batches(len(x), batch_size):
            out = head(to_model(x[s], head)).double()
            if out.dim() < 2 or out.shape[1] != check_conv_layer(model, layer).out_channels:
                raise ModelError(
                    f"the activation after '{layer}' ({target.name}) has shape {tuple(out.shape)}; "
                    f"it cannot be profiled per channel"
                )
            part = out.sum(dim=[0] + list(range(2, out.dim()))).cpu()
            total = part if total is None else total + part
            count += out.shape[0] * int(np.prod(out.shape[2:]))
    return target.name, (total / max(count, 1)).numpy()


def post_activation_order(model: nn.Module, x: np.ndarray, layer: str, order: str = "ascending") -> list[int]:
    """`layer`'s channels in `order` of mean post-activation output on images `x` (fine-pruning's order)."""
    return [int(c) for c in pruning_order(post_activation_means(model, x, layer)[1], order)]
