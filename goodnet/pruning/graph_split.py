"""Split a model at a pruned conv layer into a trunk (run once) and a tail (re-run per step).

Zeroing a conv output channel's kernel and bias makes that channel exactly zero; a BatchNorm that
follows the conv (directly or after a ReLU) is pruned with it (its scale and shift zeroed too, see
zeroing.py), so its output channel is zero as well and the cut starts after it. Channel-wise ops
that map 0 to 0 (ReLU, max/avg pooling, ...) keep it zero, so the cut moves past them: masking
their output is the same as pruning the conv, and the tail gets cheaper. Everything that does not
depend on the cut is trunk; every trunk tensor the tail reads (skip connections included) crosses
the cut and is cached.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..devices import device_of
from ..errors import ModelError, SettingsError
from ..lazy_torch import F, fx, nn, torch

ZERO_PRESERVING_METHODS = {"relu", "tanh"}


# The modules and functions that keep a zero channel zero: built on first use, since they are
# PyTorch's and this module is imported without importing PyTorch (see lazy_torch).
@functools.cache
def zero_preserving_modules() -> tuple[type[nn.Module], ...]:
    return (
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.ELU,
        nn.GELU,
        nn.SiLU,
        nn.Tanh,
        nn.Hardtanh,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.Dropout,
        nn.Dropout2d,
        nn.Identity,
    )


@functools.cache
def zero_preserving_functions() -> frozenset[Callable[..., Any]]:
    return frozenset(
        {
            F.relu,
            torch.relu,
            F.relu6,
            F.leaky_relu,
            F.elu,
            F.gelu,
            F.silu,
            torch.tanh,
            F.max_pool2d,
            F.avg_pool2d,
            F.adaptive_avg_pool2d,
            F.adaptive_max_pool2d,
        }
    )


def trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(
            "a TorchScript model cannot be profiled or swept (its forward is compiled "
            "code); prune an explicit list with --channels, or load its PyTorch class "
            "with --factory"
        )
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise ModelError(f"cannot trace {type(model).__name__} with torch.fx ({exc})") from None


def _zero_preserving(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], zero_preserving_modules())
    if node.op == "call_function":
        return node.target in zero_preserving_functions()
    if node.op == "call_method":
        return node.target in ZERO_PRESERVING_METHODS
    return False


def _batchnorm_after(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The BatchNorm that reads the conv's output, directly or through zero-preserving ops only
    (conv -> BN, or Keras's conv+relu -> BN): it is pruned along with the conv."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.all_input_nodes != [node]:
            return None
        if (
            user.op == "call_module"
            and isinstance(modules[user.target], nn.BatchNorm2d)
            and modules[user.target].affine
        ):
            return user
        if not _zero_preserving(user, modules):
            return None
        node = user
    return None


def following_batchnorm(model: nn.Module, layer: str) -> str | None:
    """Name of the BatchNorm module pruned along with conv `layer` (None if there is none)."""
    try:
        gm = trace(model)
    except ModelError:  # TorchScript, or code fx cannot trace: pruning must still work
        return _registered_batchnorm_after(model, layer)
    modules = dict(gm.named_modules())
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer]
    bn = _batchnorm_after(calls[0], modules) if len(calls) == 1 else None
    return None if bn is None else str(bn.target)


def _registered_batchnorm_after(model: nn.Module, layer: str) -> str | None:
    # Without a graph, the module registered right after the conv is taken when it is a BatchNorm
    # of matching width (true of nn.Sequential and torchvision-style blocks).
    names = [name for name, _ in model.named_modules()]
    modules = dict(model.named_modules())
    if layer not in modules or names.index(layer) + 1 >= len(names):
        return None
    following = names[names.index(layer) + 1]
    bn = modules[following]
    if (
        getattr(bn, "original_name", type(bn).__name__) == "BatchNorm2d"
        and getattr(bn, "num_features", None) == modules[layer].out_channels
    ):
        return following
    return None


def conv_layers(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) or getattr(m, "original_name", None) == "Conv2d"
    ]


AUTO_LAYER = "auto"


def resolve_layer(model: nn.Module, layer: str) -> str:
    """`layer`, or for "auto": the lab's `conv_3` when the model has one, else its last conv layer
    (in definition order) with a kernel larger than 1x1 (so not a ResNet's shortcut projection)."""
    if layer != AUTO_LAYER:
        return layer
    convs = conv_layers(model)
    if not convs:
        raise SettingsError("the model has no conv layer to prune")
    if "conv_3" in convs:
        return "conv_3"
    modules = dict(model.named_modules())
    spatial = [name for name in convs if tuple(getattr(modules[name], "kernel_size", (3, 3))) != (1, 1)]
    return (spatial or convs)[-1]


def check_conv_layer(model: nn.Module, layer: str) -> nn.Module:
    """The conv module named `layer`, or a one-line error naming the model's conv layers."""
    modules = dict(model.named_modules())
    convs = conv_layers(model)
    if layer not in modules:
        raise SettingsError(f"no layer named '{layer}' (conv layers: {', '.join(convs) or 'none'})")
    if layer not in convs:
        kind = getattr(modules[layer], "original_name", type(modules[layer]).__name__)
        raise SettingsError(f"layer '{layer}' is a {kind}, not a Conv2d (conv layers: {', '.join(convs)})")
    return modules[layer]


@dataclass
class CutSplit:
    """`trunk(x)` returns the tensors crossing the cut, the masked one first;
    `tail(*crossing)` returns the model's output. Both share the model's parameters."""

    layer: str
    cut: str
    num_channels: int
    trunk: fx.GraphModule
    tail: fx.GraphModule

    def masked_tail(self, crossing: tuple[torch.Tensor, ...], keep: torch.Tensor) -> torch.Tensor:
        """Tail output with the cut's channels multiplied by `keep` (1 = kept, 0 = pruned)."""
        return self.tail(apply_keep_mask(crossing[0], keep), *crossing[1:])


def apply_keep_mask(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return h * keep.view(1, -1, *([1] * (h.dim() - 2)))


def split_at_conv(model: nn.Module, layer: str, example: torch.Tensor | None = None) -> CutSplit:
    """Split `model` after the conv module named `layer` (see module docstring)."""
    if isinstance(model, torch.jit.ScriptModule):
        trace(model)  # refuses, with the reason
    conv = check_conv_layer(model, layer)
    gm = trace(model)
    modules = dict(gm.named_modules())
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        raise ModelError(f"layer '{layer}' is called {len(calls)} times in forward(); pruning needs exactly one call")
    cut = _batchnorm_after(calls[0], modules) or calls[0]
    while len(cut.users) == 1:
        user = next(iter(cut.users))
        if not (_zero_preserving(user, modules) and user.all_input_nodes == [cut]):
            break
        cut = user

    nodes = list(gm.graph.nodes)
    tail_nodes: set[fx.Node] = set()
    for node in nodes:  # topological order: descendants of the cut
        if node.op != "output" and any(a is cut or a in tail_nodes for a in node.all_input_nodes):
            tail_nodes.add(node)
    input_dependent: set[fx.Node] = set()
    for node in nodes:
        if node.op == "placeholder" or any(a in input_dependent for a in node.all_input_nodes):
            input_dependent.add(node)
    readers = tail_nodes | {n for n in nodes if n.op == "output"}
    crossing = [cut] + [
        n
        for n in nodes
        if n is not cut and n not in tail_nodes and n in input_dependent and any(u in readers for u in n.users)
    ]

    trunk_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node.op != "output" and node not in tail_nodes:
            env[node] = trunk_graph.node_copy(node, lambda a: env[a])
    trunk_graph.output(tuple(env[n] for n in crossing))
    trunk = fx.GraphModule(gm, trunk_graph, class_name="Trunk")
    trunk.graph.eliminate_dead_code()
    trunk.recompile()

    tail_graph = fx.Graph()
    tail_env: dict[fx.Node, fx.Node] = {n: tail_graph.placeholder(n.name) for n in crossing}

    def copy_into_tail(a: fx.Node) -> fx.Node:
        # Parameters and constants the tail reads are copied in; they do not depend on the batch.
        if a not in tail_env:
            tail_env[a] = tail_graph.node_copy(a, copy_into_tail)
        return tail_env[a]

    for node in nodes:
        if node in tail_nodes or node.op == "output":
            tail_env[node] = tail_graph.node_copy(node, copy_into_tail)
    tail = fx.GraphModule(gm, tail_graph, class_name="Tail")

    split = CutSplit(layer=layer, cut=cut.name, num_channels=int(conv.out_channels), trunk=trunk, tail=tail)
    _check_split(split, model, example)
    return split


def _check_split(split: CutSplit, model: nn.Module, example: torch.Tensor | None) -> None:
    """Run two inputs through trunk+tail: every crossing value must be a per-input tensor."""
    shape = getattr(model, "input_shape", None)
    if example is None:
        if shape is None:
            return
        ref = next((p for p in split.trunk.parameters() if p.is_floating_point()), None)
        example = torch.zeros(
            2, *shape, device=device_of(split.trunk), dtype=torch.float32 if ref is None else ref.dtype
        )
    with torch.inference_mode():
        crossing = split.trunk(example)
        for value in crossing:
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != example.shape[0]:
                raise ModelError(
                    f"a value crossing the cut after '{split.layer}' is not a per-input "
                    f"tensor; this model cannot be split there"
                )
        h = crossing[0]
        if h.dim() < 2 or h.shape[1] != split.num_channels:
            raise ModelError(
                f"the cut after '{split.layer}' ({split.cut}) has shape {tuple(h.shape)}, "
                f"expected {split.num_channels} channels in dimension 1"
            )
