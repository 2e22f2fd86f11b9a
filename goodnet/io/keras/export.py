"""Our models back into Keras files that Keras (and the lab's `architecture.py`) can load.

`export_like` keeps the layout of the file the model came from byte-for-byte except for the weight
values: it copies that file (weights-only or full model, Keras 2 or 3 HDF5, a Keras 3 `.weights.h5`
or `.keras` archive) and overwrites each weight dataset in place, keeping its dtype, shape and
attributes. `write_keras_weights` writes a fresh weights-only
file in the Keras 2.3.1 `save_weights` layout, for models that did not come from a Keras file.
"""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
from torch import nn

from ...errors import ModelError, OutputError
from ..output_dir import check_not_an_input, shown_path, write_file_atomically
from .native import (
    ARCHIVE_SUFFIX,
    WEIGHTS_SUFFIX,
    is_native_weights,
    variable_paths,
    write_archive_like,
    write_weights_like,
)
from .weights import WEIGHTED_MODULES, _text, keras_array, keras_names, read_keras_weights

KERAS_VERSION = "2.3.1"


def _weighted(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHTED_MODULES)}


def keras_suffix(source: str) -> str:
    """The suffix a file written like `source` must keep for Keras to read it the same way."""
    lower = source.lower()
    for suffix in (ARCHIVE_SUFFIX, WEIGHTS_SUFFIX, ".hdf5"):
        if lower.endswith(suffix):
            return suffix
    return ".h5"


def _check_value(source: str, name: str, short: str, dataset, value: np.ndarray) -> None:
    if dataset.shape != value.shape:
        raise ModelError(
            f"{shown_path(source)}: layer '{name}' {short} has shape {dataset.shape}, the model's is {value.shape}"
        )


def _overwrite_native(model_modules: dict[str, nn.Module], source: str):
    """A writer for Keras 3's layout: every weighted variable replaced by the model's value."""

    def overwrite(f, config) -> None:
        seen = set()
        for name, short, dataset in variable_paths(f, source, config):
            if name not in model_modules:
                raise ModelError(f"{shown_path(source)}: layer '{name}' has no counterpart in the model")
            seen.add(name)
            value = keras_array(model_modules[name], short)
            _check_value(source, name, short, dataset, value)
            if _text(dataset.attrs.get("dtype", "")) == "bfloat16":  # round to bfloat16 bits
                bits = value.astype(np.float32).view(np.uint32)
                dataset[...] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).view(dataset.dtype)
            else:
                dataset[...] = value.astype(dataset.dtype)
        missing = sorted(set(model_modules) - seen)
        if missing:
            raise ModelError(f"{shown_path(source)}: has no weights for layer(s) {', '.join(missing)}")

    return overwrite


def export_like(model: nn.Module, source: str, out: str, config: dict | None = None) -> None:
    """Write `model`'s weights into a copy of the Keras file `source` (same layout, names, dtypes),
    in any layout goodnet reads: Keras 2/3 HDF5, Keras 3 `.weights.h5` and `.keras` (`config`: the
    model's raw Keras description, for Keras 3 files that do not name their layers)."""
    check_not_an_input(out, [source], option="the output")
    if os.path.isdir(out):
        raise OutputError(f"{shown_path(out)}: is a directory; name the file to write")
    if keras_suffix(source) != keras_suffix(out):
        raise OutputError(
            f"{shown_path(out)}: must end in {keras_suffix(source)}, like the Keras file it copies "
            f"(Keras reads a file by its suffix)"
        )
    modules = _weighted(model)
    read_keras_weights(source, config)  # a clear error for a missing, damaged or non-Keras file
    if source.lower().endswith(ARCHIVE_SUFFIX):
        overwrite = _overwrite_native(modules, source)

        def overwrite_and_record(f: h5py.File, config: dict | None) -> None:
            overwrite(f, config)
            _set_range(f, model)  # on the archive's weights file, where Keras ignores it

        write_file_atomically(out, lambda tmp: write_archive_like(source, tmp, overwrite_and_record))
        return
    with h5py.File(source, "r") as f:
        native = is_native_weights(f)
    if native:

        def write_native(tmp: str) -> None:
            write_weights_like(source, tmp, _overwrite_native(modules, source), config)
            record_input_range(tmp, model)

        write_file_atomically(out, write_native)
        return

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
                    raise ModelError(f"{shown_path(source)}: layer '{name}' has no counterpart in the model")
                seen.add(name)
                known = {short for short, _ in keras_names(modules[name])}
                for weight in weight_names:
                    short = weight.rsplit("/", 1)[-1].split(":")[0]
                    if short not in known:
                        raise ModelError(f"{shown_path(source)}: layer '{name}' weight '{weight}' is not understood")
                    value = keras_array(modules[name], short)
                    dataset = group[weight]
                    _check_value(source, name, short, dataset, value)
                    dataset[...] = value.astype(dataset.dtype)
            missing = sorted(set(modules) - seen)
            if missing:
                raise ModelError(f"{shown_path(source)}: has no weights for layer(s) {', '.join(missing)}")
            _set_range(f, model)

    write_file_atomically(out, write)


# the root attribute [low, high] of an HDF5 Keras file (of a .keras archive: of its weights file)
RANGE_ATTRIBUTE = "goodnet_input_range"


def record_input_range(path: str, model: nn.Module) -> None:
    """Record the value range `model` was trained on (when known) in the HDF5 Keras file `path`,
    as goodnet's own files do; Keras ignores the attribute, goodnet reads it back."""
    if getattr(model, "input_range", None) is not None:
        with h5py.File(path, "r+") as f:
            _set_range(f, model)


def _set_range(f: h5py.File, model: nn.Module) -> None:
    value = getattr(model, "input_range", None)
    if value is not None:
        f.attrs[RANGE_ATTRIBUTE] = np.asarray([float(v) for v in value], dtype=np.float64)


def write_keras_weights(model: nn.Module, out: str) -> None:
    """A fresh Keras 2.3.1-style `save_weights` file holding every weighted layer of `model`; `out`
    ends in .h5 or .hdf5 (Keras 3 reads .weights.h5 and .keras as its own layouts)."""
    if os.path.isdir(out):
        raise OutputError(f"{shown_path(out)}: is a directory; name the file to write")
    if keras_suffix(out) not in (".h5", ".hdf5") or not out.lower().endswith((".h5", ".hdf5")):
        raise OutputError(
            f"{shown_path(out)}: a Keras 2 weights file is named .h5 or .hdf5, not "
            f"'{os.path.splitext(out)[1] or 'without a suffix'}'"
        )
    modules = _weighted(model)
    bad = [name for name in modules if "." in name or "/" in name]
    if bad:
        raise ModelError(f"layer name(s) {', '.join(bad)} cannot be Keras layer names")

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION.encode()
            f.attrs["layer_names"] = np.array([n.encode() for n in modules])
            _set_range(f, model)
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
