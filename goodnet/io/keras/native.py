"""Keras 3's own formats, without Keras: the `.keras` archive and the `.weights.h5` weights file.

A `.keras` file is a zip holding `config.json` (the architecture, as Keras 3 serialises it),
`metadata.json` and `model.weights.h5`. That weights file (and a `.weights.h5` from
`save_weights`) keeps each layer under `layers/<key>/vars/<i>`: the key is the layer's class name
in snake case, numbered `_1`, `_2`... among layers of the same class in the model's layer order,
and the variables are numbered in the layer's own order (kernel then bias; gamma, beta, moving
mean, moving variance). Recent Keras writes the layer's real name as the `name` attribute of its
`vars` group; for files without it, the order in the architecture says which layer a key is.
The result is the same {layer: {weight: array}} mapping the Keras 2 layouts give, so one loader
serves both. Nothing in the archive is executed: the config is parsed as data (custom and Lambda
layers are refused by the config parser), and the archive is never extracted to disk.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from ...errors import ModelError, shown_path
from ..data import refuse_outside_storage

ARCHIVE_SUFFIX = ".keras"
WEIGHTS_SUFFIX = ".weights.h5"
CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
MAX_CONFIG_BYTES = 64 * 2**20  # an architecture description, not data

# The variables of each weighted layer class, in the order Keras 3 numbers them.
VARIABLE_NAMES = {
    "conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def snake_case(class_name: str) -> str:
    """A class name as Keras 3 turns it into a weights key ('BatchNormalization' -> 'batch_normalization')."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_order(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers of a Keras model config ({"class_name", "config"}) in the model's layer order."""
    body = config.get("config") if isinstance(config, dict) else None
    layers = body.get("layers") if isinstance(body, dict) else body
    if not isinstance(layers, list):
        return []
    out = []
    for layer in layers:
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
            name = layer.get("name") or layer["config"].get("name")
            out.append({"class_name": str(layer.get("class_name")), "name": str(name), "config": layer["config"]})
    return out


def keys_to_layers(config: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{weights key: layer} as Keras 3 numbers the layers of `config` (see the module docstring)."""
    keys, used = {}, {}
    for layer in layer_order(config) if config else []:
        base = snake_case(layer["class_name"])
        if base in used:
            used[base] += 1
            key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            key = base
        keys[key] = layer
    return keys


def is_native_weights(f: h5py.File) -> bool:
    """Keras 3's layout: a `layers` group of `<key>/vars` groups, and no Keras 2 `layer_names`."""
    root = f["model_weights"] if "model_weights" in f else f
    return "layer_names" not in root.attrs and isinstance(f.get("layers"), h5py.Group)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _array(dataset: h5py.Dataset, where: str) -> np.ndarray:
    """A stored variable as float32-compatible numbers (bfloat16 kept as its upper 16 bits)."""
    if _text(dataset.attrs.get("dtype", "")) == "bfloat16":
        raw = np.asarray(dataset[()])
        bits = raw.view(np.uint16) if raw.dtype.itemsize == 2 else None
        if bits is None:
            raise ModelError(f"{where}: a bfloat16 variable stored as {raw.dtype}")
        return (bits.astype(np.uint32) << 16).view(np.float32)
    value = np.asarray(dataset[()])
    if value.dtype.kind not in "fiu":
        raise ModelError(f"{where}: holds {value.dtype} values, not numbers")
    return value


def _variables(group: h5py.Group, where: str) -> list[np.ndarray]:
    """The numbered variables of one `vars` group, in their order (0, 1, ...)."""
    names = list(group.keys())
    if sorted(names, key=lambda n: (len(n), n)) != [str(i) for i in range(len(names))]:
        raise ModelError(f"{where}: variables named {names[:6]}, expected 0, 1, ...")
    out = []
    for i in range(len(names)):
        if not isinstance(group.get(str(i), getlink=True), h5py.HardLink):
            raise ModelError(f"{where}/{i}: is a link to elsewhere; goodnet reads only what is inside the file")
        item = group[str(i)]
        if not isinstance(item, h5py.Dataset):
            raise ModelError(f"{where}/{i}: is not a dataset")
        refuse_outside_storage(item, f"{where}/{i}", ModelError)
        out.append(_array(item, f"{where}/{i}"))
    return out


def _short_names(base: str, count: int, layer: dict[str, Any] | None, where: str) -> tuple[str, ...]:
    """Which weight each numbered variable is, from the layer's class and (when known) its config."""
    names = VARIABLE_NAMES[base]
    config = (layer or {}).get("config", {})
    if base == "batch_normalization":
        if count == 4:
            return names
        if count == 2:
            return names[2:]
        if layer is None:
            raise ModelError(
                f"{where}: a BatchNormalization with 3 variables (center or scale switched off); "
                f"give the architecture (a .keras or model.to_json() .json file) to say which"
            )
        kept = [n for n, on in (("gamma", config.get("scale", True)), ("beta", config.get("center", True))) if on]
        return (*kept, *names[2:])
    if count == 1:
        if layer is not None and config.get("use_bias", True):
            raise ModelError(f"{where}: one variable, but the layer has a bias")
        return names[:1]
    return names[:count]


def _native_layers(
    f: h5py.File, source: str, config: dict[str, Any] | None
) -> Iterator[tuple[str, str, dict[str, Any] | None, str | None, h5py.Group]]:
    """(where, class key, the layer's config entry or None, its name or None, its `vars` group) for
    every layer of Keras 3's layout, in file order; links and missing `vars` groups refused."""
    by_key = keys_to_layers(config)
    for key in f["layers"]:
        if not isinstance(f["layers"].get(key, getlink=True), h5py.HardLink):
            raise ModelError(
                f"{shown_path(source)}: layers/{key} is a link to elsewhere; goodnet reads only what is inside the file"
            )
        group = f["layers"][key]
        where = f"{shown_path(source)}: layers/{key}"
        vars_group = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(vars_group, h5py.Group):
            if isinstance(group, h5py.Group) and "layers" in group:
                raise ModelError(f"{where}: a nested model; flatten the model into one first")
            raise ModelError(f"{where}: no 'vars' group; not a Keras 3 weights file")
        layer = by_key.get(key)
        name = _text(vars_group.attrs["name"]) if "name" in vars_group.attrs else (layer or {}).get("name")
        yield where, re.sub(r"_\d+$", "", key), layer, name, vars_group


def _weight_names(where: str, base: str, layer: dict[str, Any] | None, name: str | None, count: int) -> tuple[str, ...]:
    """Which weight each of a layer's `count` numbered variables is; refuses what cannot be placed."""
    if name is None:
        raise ModelError(
            f"{where}: the file does not name its layers (written by an older Keras 3); "
            f"give the architecture as a .keras or model.to_json() .json file"
        )
    if base not in VARIABLE_NAMES:
        raise ModelError(
            f"{where}: layer '{name}' of kind '{base}' has weights goodnet cannot place "
            f"(supported: Conv2D, Dense, BatchNormalization)"
        )
    if count > len(VARIABLE_NAMES[base]):
        raise ModelError(f"{where}: {count} variables, a {base} layer has at most {len(VARIABLE_NAMES[base])}")
    return _short_names(base, count, layer, where)


def read_native_weights(
    f: h5py.File, source: str, config: dict[str, Any] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight: array}} from Keras 3's layout; `config` (the model's Keras config)
    names layers for files that do not store names."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for where, base, layer, name, vars_group in _native_layers(f, source, config):
        values = _variables(vars_group, f"{where}/vars")
        if not values:
            if name is not None:
                layers[name] = {}
            continue
        shorts = _weight_names(where, base, layer, name, len(values))
        if name in layers:
            raise ModelError(f"{where}: a second layer named '{name}'")
        layers[name] = dict(zip(shorts, values))
    return layers


def variable_paths(
    f: h5py.File, source: str, config: dict[str, Any] | None = None
) -> Iterator[tuple[str, str, h5py.Dataset]]:
    """(layer name, weight name, dataset) for every weighted variable, for writing in place into a
    copy of a file `read_native_weights` accepted (no value is read here)."""
    for where, base, layer, name, vars_group in _native_layers(f, source, config):
        count = len(vars_group)
        if count:
            for index, short in enumerate(_weight_names(where, base, layer, name, count)):
                yield name, short, vars_group[str(index)]


# ----- the .keras archive -----


def _open_archive(path: str) -> zipfile.ZipFile:
    if not os.path.isfile(path):
        raise ModelError(f"{shown_path(path)}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{shown_path(path)}: not a Keras .keras archive ({exc})") from None
    listed = archive.namelist()
    names = set(listed)
    problem = None
    if CONFIG_MEMBER not in names:
        problem = f"not a Keras .keras archive (no {CONFIG_MEMBER})"
    elif len(names) != len(listed):
        problem = "the archive holds two members of one name"
    else:
        odd = next(
            (n for n in listed if n.startswith(("/", "\\")) or ".." in n.replace("\\", "/").split("/") or ":" in n),
            None,
        )
        if odd is not None:
            problem = f"the archive holds a member named {odd!r}, which points outside it"
    if problem is not None:
        archive.close()
        raise ModelError(f"{shown_path(path)}: {problem}")
    return archive


def _member(archive: zipfile.ZipFile, name: str, path: str, limit: int | None) -> bytes:
    """One member's bytes, refusing a declared size beyond `limit` (or the memory available) first."""
    from ..data import available_memory

    info = archive.getinfo(name)
    cap = limit if limit is not None else available_memory()
    if cap is not None and info.file_size > cap:
        raise ModelError(
            f"{shown_path(path)}: {name} declares {info.file_size / 2**20:.0f} MiB, more than "
            f"{cap / 2**20:.0f} MiB {'allowed' if limit is not None else 'of memory available'}"
        )
    try:
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise ModelError(f"{shown_path(path)}: cannot read {name} ({exc})") from None
    if len(data) != info.file_size:
        raise ModelError(f"{shown_path(path)}: {name} does not hold the {info.file_size} bytes it declares")
    return data


def read_archive_config(path: str) -> dict[str, Any]:
    """The raw Keras config (config.json) of a `.keras` archive."""
    with _open_archive(path) as archive:
        raw = _member(archive, CONFIG_MEMBER, path, MAX_CONFIG_BYTES)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(f"{shown_path(path)}: {CONFIG_MEMBER} is not JSON (or nested too deeply to read)") from None
    if not isinstance(config, dict):
        raise ModelError(f"{shown_path(path)}: {CONFIG_MEMBER} is not a Keras model description")
    return config


def _archive_weights(archive: zipfile.ZipFile, path: str) -> bytes:
    names = set(archive.namelist())
    if WEIGHTS_MEMBER not in names:
        sharded = any(n.startswith("model.weights") for n in names)
        raise ModelError(
            f"{shown_path(path)}: no {WEIGHTS_MEMBER} in the archive"
            + (" (sharded weights are not supported; save without max_shard_size)" if sharded else "")
        )
    return _member(archive, WEIGHTS_MEMBER, path, None)


def read_archive_weights(path: str, config: dict[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {weight: array}} of a `.keras` archive."""
    config = config if config is not None else read_archive_config(path)
    with _open_archive(path) as archive:
        data = _archive_weights(archive, path)
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            if not is_native_weights(f):
                raise ModelError(f"{shown_path(path)}: {WEIGHTS_MEMBER} is not in Keras 3's layout")
            return read_native_weights(f, f"{path}:{WEIGHTS_MEMBER}", config)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{shown_path(path)}: {WEIGHTS_MEMBER} is not a readable HDF5 file ({exc})") from None


def read_archive_attribute(path: str, name: str) -> Any:
    """A root attribute of a `.keras` archive's weights file (None when it has none)."""
    with _open_archive(path) as archive:
        data = _archive_weights(archive, path)
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            value = f.attrs.get(name)
            return None if value is None else np.asarray(value)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{shown_path(path)}: {WEIGHTS_MEMBER} is not a readable HDF5 file ({exc})") from None


def write_archive_like(source: str, tmp: str, overwrite) -> None:
    """Copy the archive `source` to `tmp`, member by member, with `overwrite(h5py.File)` applied to
    its weights file (the other members, and their order and compression, unchanged)."""
    config = read_archive_config(source)
    with _open_archive(source) as archive, zipfile.ZipFile(tmp, "w") as out:
        for info in archive.infolist():
            if info.filename == WEIGHTS_MEMBER:
                buffer = io.BytesIO(_archive_weights(archive, source))
                with h5py.File(buffer, "r+") as f:
                    overwrite(f, config)
                out.writestr(info, buffer.getvalue())
            else:
                out.writestr(info, _member(archive, info.filename, source, None))


def write_weights_like(source: str, tmp: str, overwrite, config: dict[str, Any] | None = None) -> None:
    """Copy the Keras 3 `.weights.h5` file `source` to `tmp` and apply `overwrite(h5py.File, config)`."""
    shutil.copyfile(source, tmp)
    with h5py.File(tmp, "r+") as f:
        overwrite(f, config)


__all__ = [
    "ARCHIVE_SUFFIX",
    "WEIGHTS_SUFFIX",
    "is_native_weights",
    "read_archive_attribute",
    "read_archive_config",
    "read_archive_weights",
    "read_native_weights",
    "snake_case",
    "variable_paths",
    "write_archive_like",
    "write_weights_like",
]
