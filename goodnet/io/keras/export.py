"""Our models back into Keras HDF5 files that Keras (and the lab's `architecture.py`) can load.

`export_like` keeps the layout of the file the model came from byte-for-byte except for the weight
values: it copies that file (weights-only or full model) and overwrites each weight dataset in
place, keeping its dtype, shape and attributes. `write_keras_weights` writes a fresh weights-only
file in the Keras 2.3.1 `save_weights` layout, for models that did not come from a Keras file.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
from torch import nn

from ...errors import ModelError
from ..output_dir import write_file_atomically
from .weights import WEIGHTED_MODULES, _text, keras_array, keras_names, read_keras_weights

KERAS_VERSION = "2.3.1"


def _weighted(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHTED_MODULES)}


def export_like(model: nn.Module, source: str, out: str) -> None:
    """Write `model`'s weights into a copy of the Keras file `source` (same layout, names, dtypes)."""
    modules = _weighted(model)
    read_keras_weights(source)  # a clear error for a missing, damaged or non-Keras file

    def write(tmp: str) -> None:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            root = f["model_weights"] if "model_weights" in f else f
            seen = set()
            for raw in root.attrs["layer_names"]:
                name = _text(raw)
                group = root[name]
                weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
                if not weight_names:
                    continue
                if name not in modules:
                    raise ModelError(f"{source}: layer '{name}' has no counterpart in the model")
                seen.add(name)
                known = {short for short, _ in keras_names(modules[name])}
                for weight in weight_names:
                    short = weight.rsplit("/", 1)[-1].split(":")[0]
                    if short not in known:
                        raise ModelError(f"{source}: layer '{name}' weight '{weight}' is not understood")
                    value = keras_array(modules[name], short)
                    dataset = group[weight]
                    if dataset.shape != value.shape:
                        raise ModelError(f"{source}: layer '{name}' {short} has shape {dataset.shape}, "
                                           f"the model's is {value.shape}")
                    dataset[...] = value.astype(dataset.dtype)
            missing = sorted(set(modules) - seen)
            if missing:
                raise ModelError(f"{source}: has no weights for layer(s) {', '.join(missing)}")

    write_file_atomically(out, write)


def write_keras_weights(model: nn.Module, out: str) -> None:
    """A fresh Keras 2.3.1-style `save_weights` file holding every weighted layer of `model`."""
    modules = _weighted(model)
    bad = [name for name in modules if "." in name or "/" in name]
    if bad:
        raise ModelError(f"layer name(s) {', '.join(bad)} cannot be Keras layer names")

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION.encode()
            f.attrs["layer_names"] = np.array([n.encode() for n in modules])
            for name, module in modules.items():
                group = f.create_group(name)
                names = []
                for short, torch_name in keras_names(module):
                    if getattr(module, torch_name, None) is None:
                        continue
                    weight = f"{name}/{short}:0"
                    group.create_dataset(weight, data=keras_array(module, short).astype(np.float32))
                    names.append(weight.encode())
                group.attrs["weight_names"] = np.array(names)

    write_file_atomically(out, write)
