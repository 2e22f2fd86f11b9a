"""Models as ONNX files, for runtimes without PyTorch (onnxruntime, TensorRT, browsers...).

A GoodNet exports as one graph: the trunk once, the two tails (plain and channel-masked), and the
label comparison, so a server needs nothing but the .onnx file. Input `image` is a float32 NCHW
batch of pixel values as the data files store them (the model's own input scaling is inside);
output `label` (int64, N = poisoned) for a GoodNet, `scores` (float32) for a classifier. The value
range the model was trained on, when known, is in the metadata property `goodnet_input_range`.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import warnings

import torch
from torch import nn

from ..devices import device_of
from ..errors import GoodnetError, ModelError, OutputError
from ..models.goodnet import GoodNet, ScriptableGoodNet, TwoModelGoodNet
from .data import trained_range
from .output_dir import shown_path, write_file_atomically

OPSET = 17
# The TorchScript-based exporter handles our models (fx graph modules, scripted parts); recent torch
# releases default to the dynamo exporter unless told, older ones (before 2.5) have no such switch.
TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


RANGE_PROPERTY = "goodnet_input_range"  # metadata: the values the model was trained on, [low, high]


def require_onnx() -> None:
    """Fail before any work when the exporter's dependency is missing."""
    if importlib.util.find_spec("onnx") is None:
        raise ModelError("ONNX export needs the onnx package: pip install 'goodnet[onnx]' (or pip install onnx)")


def export_onnx(model: nn.Module, path: str, opset: int = OPSET) -> None:
    """Write `model` (a classifier or a GoodNet) as ONNX, with a variable batch size; `path` ends in .onnx."""
    if os.path.isdir(path):
        raise OutputError(f"{shown_path(path)}: is a directory; name the file to write")
    if not str(path).lower().endswith(".onnx"):
        raise OutputError(f"{shown_path(path)}: an ONNX file is named .onnx")
    require_onnx()
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ModelError("the model's input shape is unknown; cannot export to ONNX")
    output = "label" if isinstance(model, GoodNet) else "scores"
    value_range = trained_range(model)  # recorded in the file's metadata, as in goodnet's own files
    model.eval()
    if isinstance(model, TwoModelGoodNet) and isinstance(model.backdoored, torch.jit.ScriptModule):
        # TorchScript parts: export the scripted G as a whole
        model = torch.jit.script(ScriptableGoodNet(model.backdoored, model.repaired, model.extra_class))
    example = torch.zeros(2, *shape, device=device_of(model))

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not for our users
            torch.onnx.export(
                model,
                (example,),
                tmp,
                **TORCHSCRIPT_EXPORTER,
                opset_version=opset,
                input_names=["image"],
                output_names=[output],
                dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}},
            )
        if value_range is not None:
            import onnx

            proto = onnx.load(tmp)
            onnx.helper.set_model_props(proto, {RANGE_PROPERTY: json.dumps([float(v) for v in value_range])})
            onnx.save(proto, tmp)

    try:
        write_file_atomically(path, write)
    except GoodnetError:
        raise
    except Exception as exc:  # the exporter raises many types for unsupported ops
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot export {type(model).__name__} to ONNX: {first}") from None
