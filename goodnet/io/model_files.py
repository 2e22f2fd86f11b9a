"""Model files in and out: ours (safetensors + JSON header, never pickle), Keras HDF5 (full model or
weights only), a user's PyTorch class plus weights, and TorchScript.

Our files hold tensors plus a JSON description under the metadata key "goodnet":
  {"kind": "classifier", "arch": ..., "config": {...}}                      a model (B or B')
  {"kind": "goodnet", "arch": ..., "config": {...}, "layer": ..., "pruned": [...]}   a GoodNet
plus, when known, "input_range": [low, high], the values the model was trained on (what
`check_input_range` holds data to).
Built-in architectures (and Keras graphs, stored as plain JSON in the config) are rebuilt from the
registry; nothing in the file runs. For a user's class (arch "factory") the header names the
factory, but it is only imported when the user names it again (`factory=`, CLI `--factory`).
TorchScript models are saved as TorchScript, with the same description as an extra file.
Each format is one reader in MODEL_READERS (`register_model_reader`, see goodnet.io.readers),
chosen by suffix and content; an ONNX model is recognised, and refused, under any name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import ModelError, OutputError, shown_path
from ..models import ARCHITECTURES, ImageClassifier, build_model
from ..models.goodnet import GoodNet, PrunedGoodNet, ScriptableGoodNet, ScriptedGoodNet, TwoModelGoodNet
from .data import as_path, shown
from .external import (
    TORCH_SUFFIXES,
    check_state_shapes,
    is_torchscript,
    load_factory_model,
    load_state_checked,
    load_torchscript,
    on_meta,
)
from .file_checks import ONNX_REFUSAL, check_input_file, holds_onnx
from .keras.export import RANGE_ATTRIBUTE as KERAS_RANGE_ATTRIBUTE
from .keras.files import load_keras_model, read_architecture, read_keras_config, read_model_config
from .keras.native import read_archive_attribute
from .keras.weights import load_keras_weights, output_size, read_keras_weights
from .readers import HDF5_MAGIC, ZIP_MAGIC, Reader, ReaderRegistry, holds_safetensors

FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
SCRIPT_SUFFIX = ".pt"
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")  # .weights.h5 (Keras 3) ends in .h5
DESCRIPTION_FILE = "goodnet.json"


def is_scripted(model: nn.Module) -> bool:
    if isinstance(model, TwoModelGoodNet):
        return isinstance(model.backdoored, torch.jit.ScriptModule)
    return isinstance(model, torch.jit.ScriptModule)


def model_suffix(model: nn.Module) -> str:
    """The file suffix `save_model` needs for this model."""
    return SCRIPT_SUFFIX if is_scripted(model) else MODEL_SUFFIX


def _describe(model: nn.Module) -> dict[str, Any]:
    if isinstance(model, ImageClassifier):
        return {"arch": model.arch, "config": model.config()}
    factory = getattr(model, "goodnet_factory", None)
    config = {"num_classes": int(model.num_classes), "input_shape": list(model.input_shape)}
    if factory is not None:
        return {"arch": "factory", "factory": factory, "config": config}
    if isinstance(model, torch.jit.ScriptModule):
        return {"arch": "torchscript", "config": config}
    raise TypeError(f"cannot save {type(model).__name__}")


def _header(model: nn.Module, kind: str, **extra: Any) -> dict[str, str]:
    meta = {"format_version": FORMAT_VERSION, "kind": kind, **_describe(model), **extra}
    if getattr(model, "input_range", None) is not None:
        meta["input_range"] = [float(v) for v in model.input_range]
    return {"goodnet": json.dumps(meta, sort_keys=True)}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, path: str) -> None:
    """Save a classifier (B, B') or a GoodNet as one self-describing file (see `model_suffix`)."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"save_model saves a PyTorch model (nn.Module), not {type(model).__name__}")
    path = as_path(path, "the path to save to", OutputError)
    if isinstance(model, TwoModelGoodNet) and not is_scripted(model):
        tensors = {
            f"{part}.{k}": v for part in ("backdoored", "repaired") for k, v in _state(getattr(model, part)).items()
        }
        save_file(tensors, path, metadata=_header(model.backdoored, "goodnet", two_models=True))
    elif isinstance(model, TwoModelGoodNet):
        scripted = torch.jit.script(ScriptableGoodNet(model.backdoored, model.repaired, model.extra_class))
        meta = _header(model.backdoored, "goodnet")["goodnet"]
        torch.jit.save(scripted, path, _extra_files={DESCRIPTION_FILE: meta})
    elif isinstance(model, torch.jit.ScriptModule):
        torch.jit.save(model, path, _extra_files={DESCRIPTION_FILE: _header(model, "classifier")["goodnet"]})
    elif isinstance(model, PrunedGoodNet):
        tensors = {f"backdoored.{k}": v for k, v in _state(model.backdoored).items()}
        save_file(tensors, path, metadata=_header(model.backdoored, "goodnet", layer=model.layer, pruned=model.pruned))
    else:
        save_file(_state(model), path, metadata=_header(model, "classifier"))


def _read_ours(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(path, framework="pt") as f:
            meta = (f.metadata() or {}).get("goodnet")
            if meta is None:
                raise ModelError(
                    f"{shown_path(path)}: a safetensors file without a goodnet header (architecture "
                    f"unknown); for your own PyTorch class pass --factory package.module:function"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{shown_path(path)}: not a readable safetensors file ({exc})") from None
    header = _parse_header(meta, path)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{shown_path(path)}: tensor '{name}' contains NaN or infinite values")
    return header, tensors


def _parse_header(meta: str, path: str) -> dict[str, Any]:
    try:
        header = json.loads(meta)
    except ValueError:
        header = None
    if (
        not isinstance(header, dict)
        or not all(k in header for k in ("arch", "config", "kind"))
        or not isinstance(header["config"], dict)
        or not isinstance(header["arch"], str)
        or not isinstance(header["kind"], str)
    ):
        raise ModelError(f"{shown_path(path)}: malformed goodnet header")
    if header["kind"] not in ("classifier", "goodnet"):
        raise ModelError(f"{shown_path(path)}: unknown model kind '{header['kind']}'")
    return header


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_ours(path: str, factory: str | None) -> nn.Module:
    header, tensors = _read_ours(path)
    if header["kind"] == "goodnet" and header.get("two_models"):
        # G of a repair that changed weights (e.g. fine-pruning): B and B' in full, same architecture
        backdoored = _build_ours(header, _part(tensors, "backdoored."), path, factory)
        repaired = _build_ours(header, _part(tensors, "repaired."), path, factory)
        return TwoModelGoodNet(backdoored, repaired).eval()
    if header["kind"] == "goodnet":
        tensors = _part(tensors, "backdoored.")
    model = _build_ours(header, tensors, path, factory)
    if header["kind"] == "classifier":
        return model
    pruned, layer = header.get("pruned", []), header.get("layer")
    if (
        not isinstance(pruned, list)
        or any(isinstance(c, bool) or not isinstance(c, int) for c in pruned)
        or not isinstance(layer, str)
    ):
        raise ModelError(f"{shown_path(path)}: malformed GoodNet header (layer and pruned channels)")
    module = dict(model.named_modules()).get(layer) if layer else None
    width = getattr(module, "out_channels", None)
    if width is None:
        raise ModelError(
            f"{shown_path(path)}: the GoodNet header prunes layer '{layer}', which is not a conv layer of the model"
        )
    bad = sorted({c for c in pruned if not 0 <= c < width})
    if bad:
        raise ModelError(
            f"{shown_path(path)}: the GoodNet header prunes channel {bad[0]} of '{layer}', which has "
            f"{width} (0..{width - 1})"
        )
    if len(set(pruned)) != len(pruned):
        raise ModelError(f"{shown_path(path)}: the GoodNet header lists a pruned channel twice")
    return PrunedGoodNet(model, layer, pruned).eval()


def _build_ours(header: dict[str, Any], tensors: dict[str, torch.Tensor], path: str, factory: str | None) -> nn.Module:
    if header["arch"] == "factory":
        named = header.get("factory")
        if factory is None:
            raise ModelError(
                f"{shown_path(path)}: holds weights of the PyTorch class built by '{named}'; pass "
                f"--factory {named} to load it (goodnet never imports code a file names)"
            )
        config = header["config"]
        model = load_factory_model(factory, path, tuple(config.get("input_shape", ())) or None, state=tensors)
    else:
        if factory is not None:
            raise ModelError(
                f"{shown_path(path)}: --factory goes with weights of a class of your own; this goodnet file names "
                f"its architecture ('{header['arch']}'); drop --factory"
            )
        owner = f"the '{header['arch']}' architecture"
        # sizes come from the header: check them against the file's tensors on the meta device
        # first, so an absurd width is refused without allocating it
        probe = on_meta(lambda: build_model(header["arch"], **header["config"]))
        if probe is not None:
            check_state_shapes(probe, tensors, path, owner)
        model = build_model(header["arch"], **header["config"])
        load_state_checked(model, tensors, path, owner)
    if "input_range" in header:
        model.input_range = _input_range(header["input_range"], path)
    return model.eval()


def _input_range(value: Any, path: str) -> tuple[float, float]:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    if not ok or value[0] >= value[1]:
        raise ModelError(f"{shown_path(path)}: malformed input_range in the goodnet header: {value!r}")
    return float(value[0]), float(value[1])


def _load_script(path: str, input_shape: tuple[int, ...] | None) -> nn.Module:
    extra = {DESCRIPTION_FILE: ""}
    try:
        model = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception:  # reported with a clear message by load_torchscript below
        return load_torchscript(path, input_shape)
    if not extra[DESCRIPTION_FILE]:
        return load_torchscript(path, input_shape)
    header = _parse_header(extra[DESCRIPTION_FILE], path)
    model.num_classes = int(header["config"]["num_classes"])
    model.input_shape = tuple(header["config"]["input_shape"])
    model.eval()
    if header["kind"] == "goodnet":
        return ScriptedGoodNet(model)
    return model


def _keras_weights_model(path: str, arch: str, input_shape, input_divisor: float) -> nn.Module:
    if names_arch_file(arch):  # architecture from another file
        return load_keras_model(
            path,
            graph=read_architecture(arch),
            input_shape=input_shape,
            input_divisor=input_divisor,
            config=read_keras_config(arch),
        )
    layers = read_keras_weights(path)
    if arch not in ARCHITECTURES or arch == "keras":
        raise ModelError(
            f"unknown architecture '{arch}' (built-in: "
            f"{', '.join(sorted(a for a in ARCHITECTURES if a != 'keras'))}, or a Keras "
            f"full-model .h5 / .keras / model.to_json() .json file)"
        )
    num_classes = output_size(layers, ARCHITECTURES[arch].final_layer, path)
    config: dict[str, Any] = {"num_classes": num_classes, "input_divisor": input_divisor}
    if input_shape is not None:
        config["input_shape"] = tuple(input_shape)
    model = build_model(arch, **config)
    load_keras_weights(model, layers, path)
    return model.eval()


def load_model(
    path: str,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    input_divisor: float = 1.0,
    factory: str | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Load B, B' or G in eval mode, from any supported file.

    - goodnet .safetensors: describes itself (a user's class also needs `factory`);
    - Keras full-model .h5: architecture and weights from the file;
    - Keras weights-only .h5: `arch` is a built-in name (default deepid) or a file holding the
      architecture; the input shape comes from the data (`input_shape`);
    - `factory` ("package.module:function") plus a .safetensors/.pt state dict;
    - TorchScript .pt (input shape from the data unless goodnet wrote the file): a TorchScript file
      is a program, and loading and running it runs its author's code, so it is refused unless
      `trust_code` is True (CLI `--trust-model-code`). Nothing else a model file holds is ever run.
    """
    path = as_path(path, "the model path", ModelError)
    if not isinstance(trust_code, bool):
        raise ModelError(f"trust_code must be True or False, not {trust_code!r}")
    model = _load_model(path, arch, input_shape, input_divisor, factory, trust_code)
    check_model_values(model, path)
    return model


def check_model_values(model: nn.Module, path: str) -> None:
    """Refuse weights or statistics no trained model has: NaN or infinite values, and a BatchNorm
    running variance below 0 (its square root is NaN: every output would be)."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{shown_path(path)}: '{name}' holds NaN or infinite values")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise ModelError(
                f"{shown_path(path)}: '{name}' holds a negative variance ({float(tensor.min()):g}), which no "
                f"data can have: the model's statistics are broken"
            )


def _load_model(
    path: str,
    arch: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    input_divisor: float = 1.0,
    factory: str | None = None,
    trust_code: bool = False,
) -> nn.Module:
    check_input_file(path, "a model file", ModelError)  # a missing path, a directory, a pipe or device, a broken link
    reader = MODEL_READERS.choose(path)  # an ONNX file under any name first, then by suffix and content
    return reader.read(path, ModelRequest(arch, input_shape, input_divisor, factory, trust_code))


@dataclass(frozen=True)
class ModelRequest:
    """What a model reader is given besides the path: what the file cannot say itself (see load_model)."""

    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    input_divisor: float = 1.0
    factory: str | None = None
    trust_code: bool = False


MODEL_READERS = ReaderRegistry("model", ModelError)
register_model_reader = MODEL_READERS.register  # decorator: a function (path, ModelRequest) -> nn.Module
unregister_model_reader = MODEL_READERS.unregister


def model_readers() -> tuple[Reader, ...]:
    """The registered model readers, in the order a lookup tries them (see goodnet.io.readers)."""
    return MODEL_READERS.readers()


def _refuse_arch(path: str, request: ModelRequest) -> None:
    if request.arch is not None:
        raise ModelError(f"--arch goes with a Keras weights-only .h5; {path} holds its own architecture")


@register_model_reader("onnx", any_suffix=True, magic=(b"\x08",), sniff=holds_onnx)
def read_onnx(path: str, request: ModelRequest) -> nn.Module:
    """ONNX models, under any name: goodnet writes them but does not read them."""
    raise ModelError(f"{shown_path(path)}: {ONNX_REFUSAL}")


@register_model_reader("safetensors", suffixes=(MODEL_SUFFIX,), sniff=holds_safetensors, describe=MODEL_SUFFIX)
def read_safetensors(path: str, request: ModelRequest) -> nn.Module:
    """Ours (a goodnet header describes the model), or a state dict of the user's class (`factory`)."""
    _refuse_arch(path, request)
    with_header = True
    try:
        with safe_open(path, framework="pt") as f:
            with_header = "goodnet" in (f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{shown_path(path)}: not a readable safetensors file ({exc})") from None
    if with_header or request.factory is None:
        return _load_ours(path, request.factory)
    return load_factory_model(request.factory, path, request.input_shape)


@register_model_reader(
    "keras", suffixes=KERAS_SUFFIXES + (".weights.h5",), magic=(HDF5_MAGIC, ZIP_MAGIC), describe="Keras .h5/.keras"
)
def read_keras(path: str, request: ModelRequest) -> nn.Module:
    """A Keras full model (architecture from the file) or weights only (architecture from `arch`)."""
    if request.factory is not None:
        raise ModelError("--factory goes with a PyTorch weights file, not a Keras file")
    if read_model_config(path) is not None:
        _refuse_arch(path, request)
        model = load_keras_model(path, input_shape=request.input_shape, input_divisor=request.input_divisor)
    else:
        model = _keras_weights_model(path, request.arch or "deepid", request.input_shape, request.input_divisor)
    recorded = _keras_input_range(path)
    if recorded is not None:
        model.input_range = recorded
    return model


def _keras_input_range(path: str) -> tuple[float, float] | None:
    """The value range goodnet recorded in a Keras file it wrote (None: none recorded)."""
    if path.lower().endswith(".keras"):
        value = read_archive_attribute(path, KERAS_RANGE_ATTRIBUTE)
    else:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(KERAS_RANGE_ATTRIBUTE)
    if value is None:
        return None
    value = np.asarray(value)
    return _input_range(value.tolist() if value.dtype.kind in "fiu" else None, path)


@register_model_reader("torchscript", suffixes=TORCH_SUFFIXES, sniff=is_torchscript, describe="a PyTorch .pt/.pth file")
def read_torchscript(path: str, request: ModelRequest) -> nn.Module:
    """A TorchScript program: run only when the user trusts it (`trust_code`)."""
    _refuse_arch(path, request)
    if not request.trust_code:
        raise ModelError(
            f"{shown_path(path)}: a TorchScript file is a program, and loading it runs its author's code; "
            f"goodnet refuses it unless you trust the file: pass --trust-model-code "
            f"(library: trust_code=True)"
        )
    if request.factory is not None:
        raise ModelError(f"{shown_path(path)}: a TorchScript file holds its own code; drop --factory")
    return _load_script(path, request.input_shape)


@register_model_reader("pytorch", suffixes=TORCH_SUFFIXES, describe="a PyTorch .pt/.pth file")
def read_pytorch_state(path: str, request: ModelRequest) -> nn.Module:
    """A torch.save'd state dict of the user's class (`factory`), read as tensors only."""
    _refuse_arch(path, request)
    if request.factory is None:
        raise ModelError(
            f"{shown_path(path)}: a PyTorch weights file; pass --factory package.module:function "
            f"to say which class it belongs to"
        )
    return load_factory_model(request.factory, path, request.input_shape)


@dataclass(frozen=True)
class ModelSource:
    """Where B comes from: a file, plus what that file cannot say itself."""

    path: str
    arch: str | None = None  # Keras weights-only files: built-in name or architecture file
    factory: str | None = None  # a user's PyTorch class, "package.module:function"
    trust_code: bool = False  # run the code a TorchScript file holds (see load_model)

    def load(self, input_shape: tuple[int, ...] | None = None, input_divisor: float = 1.0) -> nn.Module:
        return load_model(
            self.path,
            arch=self.arch,
            input_shape=input_shape,
            input_divisor=input_divisor,
            factory=self.factory,
            trust_code=self.trust_code,
        )

    def load_backdoored(self, input_shape: tuple[int, ...] | None = None) -> nn.Module:
        model = self.load(input_shape)
        if isinstance(model, GoodNet):
            raise ModelError(f"{shown_path(self.path)}: is a GoodNet; this needs the backdoored model B")
        return model

    def input_files(self) -> list[str]:
        """The files this source reads: the model file, and an architecture file when one is named."""
        files = [self.path]
        if self.arch and os.path.isfile(self.arch):
            files.append(self.arch)
        return files

    @property
    def is_keras(self) -> bool:
        return self.path.lower().endswith(KERAS_SUFFIXES)

    @property
    def keras_config(self) -> dict[str, Any] | None:
        """The raw Keras description of the architecture file given for a weights-only Keras file."""
        if self.is_keras and self.arch and names_arch_file(self.arch):
            return read_keras_config(self.arch)
        return None


def manifest_path(value: str, base: str) -> str:
    """A path read from a manifest in the folder `base`: as written when absolute, else under `base`."""
    return value if os.path.isabs(value) else os.path.join(base, value)


def names_arch_file(arch: str) -> bool:
    """Whether an `arch` value names an architecture file (.json or a Keras file, by its suffix)
    rather than a built-in architecture."""
    return arch.lower().endswith((".json",) + KERAS_SUFFIXES)


def manifest_arch(arch: str, base: str) -> str:
    """An `arch` read from a manifest in the folder `base`: an architecture file under `base`, or a
    built-in architecture's name as written."""
    return manifest_path(arch, base) if names_arch_file(arch) else arch


def model_source(source: Any) -> ModelSource:
    """Where B comes from, as a public function takes it: a ModelSource, or a model file path
    (str or os.PathLike such as pathlib.Path); paths inside a ModelSource may be os.PathLike too."""
    if isinstance(source, ModelSource):
        path = as_path(source.path, "source.path", ModelError)
        arch = os.fspath(source.arch) if isinstance(source.arch, os.PathLike) else source.arch
        if arch is not None and not isinstance(arch, str):
            raise ModelError(f"source.arch must be an architecture name or file, not {shown(arch)}")
        if source.factory is not None and not isinstance(source.factory, str):
            raise ModelError(f"source.factory must be 'package.module:function', not {shown(source.factory)}")
        return (
            source if (path, arch) == (source.path, source.arch) else dataclasses.replace(source, path=path, arch=arch)
        )
    return ModelSource(as_path(source, "source", ModelError, "a model file path (str or os.PathLike) or a ModelSource"))


__all__ = [
    "ModelRequest",
    "ModelSource",
    "load_model",
    "model_readers",
    "model_source",
    "model_suffix",
    "register_model_reader",
    "save_model",
    "unregister_model_reader",
]
