"""A PyTorch module that computes what a Keras model computes, built from a parsed graph description.

Tensors are NCHW inside; Keras's channels-last meaning is kept where it shows: Flatten flattens in
NHWC order, channel axes are translated, 'same' padding is TensorFlow's (the extra row/column goes
bottom/right) and 'same' average pooling ignores the padding. Layers with weights become submodules
named exactly like the Keras layers, so `--layer conv_3` means what it meant in Keras. A final
softmax is left out of forward() (it returns logits, like every goodnet classifier) and kept in
`keras_output()`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .base import ImageClassifier
from .registry import register_architecture

PARAMETRIC_OPS = ("conv", "dense", "batch_norm")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def torch_axis(axis: int, rank: int, layer: str) -> int:
    """Keras channels-last axis -> our channels-first axis."""
    axis = axis % rank
    if rank == 4:
        return {1: 2, 2: 3, 3: 1}.get(axis, 0) if axis else _bad_axis(layer)
    if rank == 2 and axis == 1:
        return 1
    return _bad_axis(layer)


def _bad_axis(layer: str) -> int:
    raise ModelError(f"layer '{layer}': operating on the batch axis is not supported")


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "softmax":
        return F.softmax(x, dim=1)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    return x


@register_architecture
class KerasModel(ImageClassifier):
    """A Keras model (Sequential or functional) as a goodnet classifier; config = the parsed graph."""

    arch = "keras"
    final_layer = ""

    def __init__(
        self,
        graph: dict[str, Any],
        input_shape: tuple[int, int, int] | None = None,
        num_classes: int | None = None,
        input_divisor: float = 1.0,
    ):
        shape = graph.get("input_shape")
        if shape is None or any(d is None for d in shape):
            if input_shape is None:
                raise ModelError(
                    f"the Keras model's input shape {shape} is not fixed; give the data (its image size decides)"
                )
            shape = list(input_shape)
        if input_shape is not None and tuple(input_shape) != tuple(shape):
            raise ModelError(
                f"the data's images are {tuple(input_shape)} (C, H, W) but the Keras model takes {tuple(shape)}"
            )
        super().__init__(num_classes if num_classes is not None else 1, tuple(shape), input_divisor)  # 1: set below
        self.eval()  # BatchNorm must not learn from the shape-finding passes below
        self.graph = graph
        self._steps: list[tuple[str, dict[str, Any], list[str]]] = []
        self._pads: dict[str, tuple[int, int, int, int]] = {}
        self._counts: dict[str, str] = {}  # 'same' average pools: layer -> buffer of pixel counts
        self._input_rank: dict[str, int] = {}
        self.strip_softmax = False
        example = {graph["input"]: torch.zeros(1, *self.input_shape)}
        for layer in graph["layers"]:
            if layer["op"] == "input":
                continue
            name = layer["name"]
            inputs = [example[i] for i in layer["inputs"]]
            if not inputs:
                raise ModelError(f"layer '{name}' has no input")
            self._input_rank[name] = inputs[0].dim()
            try:
                self._build(layer, inputs)
            except (RuntimeError, ValueError, TypeError, OverflowError) as exc:  # sizes PyTorch cannot build
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"layer '{name}' cannot be built: {first}") from None
            if hasattr(self, name):
                getattr(self, name).eval()
            self._steps.append((name, layer, list(layer["inputs"])))
            try:
                with torch.no_grad():
                    example[name] = self._run_layer(name, layer, inputs)
            except RuntimeError as exc:  # e.g. a kernel larger than its input, mismatched concat
                first = str(exc).strip().splitlines()[0]
                raise ModelError(
                    f"layer '{name}' cannot run on its input of shape {tuple(inputs[0].shape[1:])}: {first}"
                ) from None
        out = graph["output"]
        if out not in example:
            raise ModelError(f"output layer '{out}' is not in the model")
        last = next((layer for layer in graph["layers"] if layer["name"] == out), None)
        self.strip_softmax = last is not None and (last.get("activation") == "softmax" or last["op"] == "softmax")
        with torch.no_grad():
            logits = self.forward(torch.zeros(1, *self.input_shape))
        if logits.dim() != 2:
            raise ModelError(f"the model's output has shape {tuple(logits.shape)}; expected (batch, classes)")
        if num_classes is not None and int(num_classes) != logits.shape[1]:
            raise ModelError(
                f"the saved number of classes ({num_classes}) does not match the graph ({logits.shape[1]})"
            )
        self.num_classes = int(logits.shape[1])

    def config(self) -> dict[str, Any]:
        return {**super().config(), "graph": self.graph}

    def _build(self, layer: dict[str, Any], inputs: list[torch.Tensor]) -> None:
        name, op, x = layer["name"], layer["op"], inputs[0]
        if op in PARAMETRIC_OPS and ("." in name or "/" in name or hasattr(self, name)):
            raise ModelError(f"layer name '{name}' cannot be used as a PyTorch module name")
        if op == "conv":
            if x.dim() != 4:
                raise ModelError(f"layer '{name}': Conv2D needs an image tensor, got rank {x.dim()}")
            (kh, kw), (sh, sw), (dh, dw) = layer["kernel_size"], layer["strides"], layer["dilation"]
            padding: Any = 0
            if layer["padding"] == "same":
                top, bottom = same_padding(x.shape[2], kh, sh, dh)
                left, right = same_padding(x.shape[3], kw, sw, dw)
                if top == bottom and left == right:
                    padding = (top, left)
                else:
                    self._pads[name] = (left, right, top, bottom)
            if x.shape[1] % layer["groups"]:
                raise ModelError(
                    f"layer '{name}': {x.shape[1]} input channels do not split into {layer['groups']} groups"
                )
            self.add_module(
                name,
                nn.Conv2d(
                    x.shape[1],
                    layer["filters"],
                    (kh, kw),
                    stride=(sh, sw),
                    padding=padding,
                    dilation=(dh, dw),
                    groups=layer["groups"],
                    bias=layer["use_bias"],
                ),
            )
        elif op == "dense":
            if x.dim() != 2:
                raise ModelError(f"layer '{name}': Dense on a rank-{x.dim()} tensor is not supported (add a Flatten)")
            self.add_module(name, nn.Linear(x.shape[1], layer["units"], bias=layer["use_bias"]))
        elif op == "batch_norm":
            if torch_axis(layer["axis"], x.dim(), name) != 1:
                raise ModelError(f"layer '{name}': BatchNormalization must normalise the channel axis")
            cls = nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d
            self.add_module(name, cls(x.shape[1], eps=layer["epsilon"]))
        elif op in ("max_pool", "avg_pool"):
            if x.dim() != 4:
                raise ModelError(f"layer '{name}': pooling needs an image tensor")
            if op == "max_pool" and "." not in name and "/" not in name and not hasattr(self, name):
                # a named module (not a bare function) so reports can say "cut pool_3"
                self.add_module(name, nn.MaxPool2d(layer["pool_size"], layer["strides"]))
            if layer["padding"] == "same":
                (ph, pw), (sh, sw) = layer["pool_size"], layer["strides"]
                top, bottom = same_padding(x.shape[2], ph, sh)
                left, right = same_padding(x.shape[3], pw, sw)
                self._pads[name] = (left, right, top, bottom)
                if op == "avg_pool":  # TensorFlow divides by the number of real (unpadded) pixels
                    ones = F.pad(torch.ones(1, 1, *x.shape[2:]), self._pads[name])
                    count = F.avg_pool2d(ones, (ph, pw), (sh, sw)) * (ph * pw)
                    self._counts[name] = f"_same_count_{len(self._counts)}"
                    self.register_buffer(self._counts[name], count, persistent=False)
        elif op in ("global_avg_pool", "global_max_pool", "zero_pad") and x.dim() != 4:
            raise ModelError(f"layer '{name}': needs an image tensor")
        elif op == "add":
            if len({tuple(t.shape) for t in inputs}) != 1:
                raise ModelError(
                    f"layer '{name}': Add of tensors with different shapes {[tuple(t.shape[1:]) for t in inputs]}"
                )
        elif op == "concat":
            torch_axis(layer["axis"], x.dim(), name)

    def _run_layer(self, name: str, layer: dict[str, Any], inputs: list[torch.Tensor]) -> torch.Tensor:
        op, x = layer["op"], inputs[0]
        if op == "conv":
            if name in self._pads:
                x = F.pad(x, self._pads[name])
            return _activate(getattr(self, name)(x), layer["activation"])
        if op == "dense":
            return _activate(getattr(self, name)(x), layer["activation"])
        if op == "batch_norm":
            return getattr(self, name)(x)
        if op == "max_pool":
            if name in self._pads:
                x = F.pad(x, self._pads[name], value=float("-inf"))
            if name in self._modules:
                return self._modules[name](x)
            return F.max_pool2d(x, layer["pool_size"], layer["strides"])
        if op == "avg_pool":
            if name not in self._pads:
                return F.avg_pool2d(x, layer["pool_size"], layer["strides"])
            (ph, pw) = layer["pool_size"]
            summed = F.avg_pool2d(F.pad(x, self._pads[name]), (ph, pw), layer["strides"]) * (ph * pw)
            return summed / getattr(self, self._counts[name])
        if op == "global_avg_pool":
            return x.mean(dim=(2, 3), keepdim=layer["keepdims"])
        if op == "global_max_pool":
            return x.amax(dim=(2, 3), keepdim=layer["keepdims"])
        if op == "zero_pad":
            (top, bottom), (left, right) = layer["padding"]
            return F.pad(x, (left, right, top, bottom))
        if op == "flatten":
            return x.permute(0, 2, 3, 1).flatten(1) if self._input_rank[name] == 4 else x.flatten(1)
        if op == "identity":
            return x
        if op == "activation":
            return _activate(x, layer["activation"])
        if op == "relu":
            slope, top = layer["negative_slope"], layer["max_value"]
            y = F.leaky_relu(x, slope) if slope else F.relu(x)
            return y if top is None else torch.clamp(y, max=top)
        if op == "softmax":
            return F.softmax(x, dim=torch_axis(layer["axis"], self._input_rank[name], name))
        if op == "add":
            total = inputs[0]
            for other in inputs[1:]:
                total = total + other
            return total
        if op == "concat":
            return torch.cat(inputs, dim=torch_axis(layer["axis"], self._input_rank[name], name))
        raise ModelError(f"layer '{name}': unknown op '{op}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.graph["input"]: self.scale_input(x)}
        out = self.graph["output"]
        for name, layer, inputs in self._steps:
            args = [env[i] for i in inputs]
            if name == out and self.strip_softmax:
                layer = {**layer, "activation": "linear"} if layer["op"] != "softmax" else {"op": "identity"}
            env[name] = self._run_layer(name, layer, args)
        return env[out]

    def keras_output(self, x: torch.Tensor) -> torch.Tensor:
        """What Keras's predict() returns (probabilities when the model ends in softmax)."""
        y = self.forward(x)
        return F.softmax(y, dim=1) if self.strip_softmax else y
