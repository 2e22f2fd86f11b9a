"""Read a Keras `model.save` HDF5 file's architecture (`model_config`) without Keras or TensorFlow.

Two layouts exist: Keras 2 (`inbound_nodes` as nested lists, `batch_input_shape` on the first layer)
and Keras 3's legacy HDF5 (`inbound_nodes` as {"args", "kwargs"} holding `__keras_tensor__` records,
`batch_shape` on an InputLayer). Both become one plain-JSON graph description: a list of layers, each
{"name", "op", "inputs", ...op parameters}, which `KerasModel` builds and which our own model files
store. Only layer types with a fixed meaning are accepted; anything that carries code is refused.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelError, shown_path

ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid", "tanh")
CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
NESTED_MODELS = {"Sequential", "Model", "Functional"}


def _pair(value: Any, what: str, layer: str) -> list[int]:
    """Two whole numbers (one given twice), at least 1 (at least 0 for padding)."""
    least = 0 if what == "padding" else 1
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and least <= v < 2**16 for v in value)
    ):
        return [int(v) for v in value]
    raise ModelError(f"layer '{layer}': cannot read {what} {value!r} (whole numbers of at least {least})")


def _activation(value: Any, layer: str) -> str:
    if value is None:
        return "linear"
    if isinstance(value, dict):  # Keras 3 may serialise built-in activations as objects
        value = value.get("config", {}).get("name", value.get("class_name"))
    if value not in ACTIVATIONS:
        raise ModelError(f"layer '{layer}': unsupported activation {value!r} (supported: {', '.join(ACTIVATIONS)})")
    return value


def _channels_last(config: dict[str, Any], layer: str) -> None:
    if config.get("data_format") not in (None, "channels_last"):
        raise ModelError(
            f"layer '{layer}': data_format '{config['data_format']}' is not supported (channels_last only)"
        )


def _padding(value: Any, layer: str) -> str:
    if value not in ("valid", "same"):
        raise ModelError(f"layer '{layer}': unsupported padding {value!r} (valid or same)")
    return value


def _refuse_custom(layer: dict[str, Any], name: str) -> None:
    """Keras 3 marks where a layer class comes from; a class from outside Keras is custom code,
    even when it borrows a built-in name."""
    module = layer.get("module")
    registered = layer.get("registered_name")
    if (module is not None and not str(module).startswith("keras")) or registered not in (None, layer["class_name"]):
        raise ModelError(
            f"layer '{name}' is a custom layer ({registered or layer['class_name']} from "
            f"{module}): it carries code, which goodnet never runs"
        )


def _layer_op(class_name: str, config: dict[str, Any], name: str) -> dict[str, Any]:
    """The op description of one layer: which computation, with which parameters."""
    if class_name in CODE_LAYERS:
        raise ModelError(
            f"layer '{name}' is a {class_name} layer: it carries Python code, which goodnet "
            f"never runs; rebuild the model without it"
        )
    if class_name in NESTED_MODELS:
        raise ModelError(f"layer '{name}' is a nested {class_name}: flatten the model into one first")
    if class_name == "InputLayer":
        return {"op": "input"}
    if class_name == "Conv2D":
        _channels_last(config, name)
        return {
            "op": "conv",
            "filters": int(config["filters"]),
            "kernel_size": _pair(config["kernel_size"], "kernel_size", name),
            "strides": _pair(config.get("strides", 1), "strides", name),
            "dilation": _pair(config.get("dilation_rate", 1), "dilation_rate", name),
            "padding": _padding(config.get("padding", "valid"), name),
            "groups": int(config.get("groups", 1)),
            "use_bias": bool(config.get("use_bias", True)),
            "activation": _activation(config.get("activation"), name),
        }
    if class_name == "Dense":
        return {
            "op": "dense",
            "units": int(config["units"]),
            "use_bias": bool(config.get("use_bias", True)),
            "activation": _activation(config.get("activation"), name),
        }
    if class_name in ("MaxPooling2D", "AveragePooling2D"):
        _channels_last(config, name)
        pool = _pair(config.get("pool_size", 2), "pool_size", name)
        strides = config.get("strides")
        return {
            "op": "max_pool" if class_name.startswith("Max") else "avg_pool",
            "pool_size": pool,
            "strides": pool if strides is None else _pair(strides, "strides", name),
            "padding": _padding(config.get("padding", "valid"), name),
        }
    if class_name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        _channels_last(config, name)
        return {
            "op": "global_max_pool" if "Max" in class_name else "global_avg_pool",
            "keepdims": bool(config.get("keepdims", False)),
        }
    if class_name == "ZeroPadding2D":
        _channels_last(config, name)
        value = config.get("padding", 1)
        if isinstance(value, int):
            pads = [[value, value], [value, value]]
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            pads = [[value[0], value[0]], [value[1], value[1]]]
        else:
            pads = [_pair(v, "padding", name) for v in value] if isinstance(value, (list, tuple)) else None
            if pads is None or len(pads) != 2:
                raise ModelError(f"layer '{name}': cannot read padding {value!r}")
        return {"op": "zero_pad", "padding": pads}
    if class_name == "Flatten":
        _channels_last(config, name)
        return {"op": "flatten"}
    if class_name in ("Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout"):
        return {"op": "identity"}  # inference-time identity
    if class_name == "Activation":
        return {"op": "activation", "activation": _activation(config.get("activation"), name)}
    if class_name == "ReLU":
        if float(config.get("threshold") or 0) != 0:
            raise ModelError(f"layer '{name}': ReLU with a threshold is not supported")
        max_value = config.get("max_value")
        return {
            "op": "relu",
            "max_value": None if max_value is None else float(max_value),
            "negative_slope": float(config.get("negative_slope") or 0),
        }
    if class_name == "Softmax":
        return {"op": "softmax", "axis": int(config.get("axis", -1))}
    if class_name == "Add":
        return {"op": "add"}
    if class_name == "Concatenate":
        return {"op": "concat", "axis": int(config.get("axis", -1))}
    if class_name == "BatchNormalization":
        axis = config.get("axis", -1)
        if isinstance(axis, list):
            if len(axis) != 1:
                raise ModelError(f"layer '{name}': BatchNormalization over several axes is not supported")
            axis = axis[0]
        return {
            "op": "batch_norm",
            "axis": int(axis),
            "epsilon": float(config.get("epsilon", 1e-3)),
            "center": bool(config.get("center", True)),
            "scale": bool(config.get("scale", True)),
        }
    raise ModelError(f"layer '{name}' has unsupported type {class_name} (supported: {', '.join(SUPPORTED)})")


SUPPORTED = (
    "InputLayer",
    "Conv2D",
    "Dense",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "ZeroPadding2D",
    "Flatten",
    "Dropout",
    "Activation",
    "ReLU",
    "Softmax",
    "Add",
    "Concatenate",
    "BatchNormalization",
)


def _input_shape(config: dict[str, Any]) -> list[int | None] | None:
    shape = config.get("batch_input_shape") or config.get("batch_shape")
    if shape is None:
        return None
    if len(shape) != 4:
        raise ModelError(f"input shape {shape} is not (batch, height, width, channels)")
    h, w, c = shape[1:]
    return [c, h, w]


def _history(value: Any, out: list[list[Any]]) -> None:
    """Collect Keras 3 `keras_history` records, in argument order."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            out.append(list(value["config"]["keras_history"]))
        else:
            for v in value.values():
                _history(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _history(v, out)


def _inbound(layer: dict[str, Any], name: str) -> list[str]:
    nodes = layer.get("inbound_nodes", [])
    if len(nodes) > 1:
        raise ModelError(f"layer '{name}' is called {len(nodes)} times (a shared layer); not supported")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3
        records: list[list[Any]] = []
        _history(node.get("args", []), records)
        _history(node.get("kwargs", {}), records)
    else:  # Keras 2: [[layer, node_index, tensor_index, kwargs], ...]
        records = [list(entry[:3]) for entry in node]
    for source, node_index, tensor_index in (r[:3] for r in records):
        if node_index != 0 or tensor_index != 0:
            raise ModelError(
                f"layer '{name}' reads output {tensor_index} of call {node_index} of "
                f"'{source}'; shared layers are not supported"
            )
    return [str(r[0]) for r in records]


def _endpoint(value: Any, what: str) -> str:
    # Keras 2 writes [[name, 0, 0], ...]; Keras 3 writes [name, 0, 0] for a single tensor.
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or len(value) != 1:
        raise ModelError(
            f"the model has {len(value) if isinstance(value, list) else '?'} {what}s; goodnet needs exactly one"
        )
    return str(value[0][0])


def parse_model_config(model_config: str | dict[str, Any], source: str = "model") -> dict[str, Any]:
    """Return {"input": name, "input_shape": [C, H, W], "output": name, "layers": [...]}."""
    try:
        config = json.loads(model_config) if isinstance(model_config, (str, bytes)) else model_config
        class_name = config["class_name"]
        body = config["config"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ModelError(f"{shown_path(source)}: model_config is not a Keras model description") from None
    try:
        if class_name == "Sequential":
            return _sequential(body if isinstance(body, dict) else {"layers": body}, source)
        if class_name in ("Model", "Functional"):
            return _functional(body, source)
    except ModelError as exc:
        raise ModelError(f"{shown_path(source)}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
        raise ModelError(f"{shown_path(source)}: malformed model_config ({type(exc).__name__}: {exc})") from None
    raise ModelError(
        f"{shown_path(source)}: model class {class_name} is not supported (Sequential or functional Model)"
    )


def _sequential(body: dict[str, Any], source: str) -> dict[str, Any]:
    layers = body["layers"]
    if not layers:
        raise ModelError("the Sequential model has no layers")
    shape = None
    out: list[dict[str, Any]] = []
    first = layers[0]
    if first["class_name"] == "InputLayer":
        input_name = first["config"].get("name", "input")
        shape = _input_shape(first["config"])
        layers = layers[1:]
    else:
        input_name = "input"
        shape = _input_shape(first["config"])
    if shape is None and body.get("build_input_shape"):
        shape = _input_shape({"batch_shape": body["build_input_shape"]})
    out.append({"name": input_name, "op": "input", "inputs": []})
    previous = input_name
    for layer in layers:
        name = layer["config"]["name"]
        _refuse_custom(layer, name)
        op = _layer_op(layer["class_name"], layer["config"], name)
        if op["op"] == "input":
            raise ModelError(f"layer '{name}': an InputLayer inside a Sequential model")
        out.append({"name": name, **op, "inputs": [previous]})
        previous = name
    return {"input": input_name, "input_shape": shape, "output": previous, "layers": out}


def _functional(body: dict[str, Any], source: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    shape = None
    for layer in body["layers"]:
        name = layer.get("name") or layer["config"]["name"]
        _refuse_custom(layer, name)
        op = _layer_op(layer["class_name"], layer["config"], name)
        if op["op"] == "input":
            shape = _input_shape(layer["config"])
        out.append({"name": name, **op, "inputs": [] if op["op"] == "input" else _inbound(layer, name)})
    input_name = _endpoint(body["input_layers"], "input")
    output_name = _endpoint(body["output_layers"], "output")
    inputs = [layer["name"] for layer in out if layer["op"] == "input"]
    if inputs != [input_name]:
        raise ModelError(f"the model has input layers {inputs}; goodnet needs exactly one")
    return {"input": input_name, "input_shape": shape, "output": output_name, "layers": _topological(out)}


def _topological(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {layer["name"]: layer for layer in layers}
    if len(by_name) != len(layers):
        raise ModelError("two layers share one name")
    done: set[str] = set()
    ordered: list[dict[str, Any]] = []
    pending = list(layers)
    while pending:
        ready = [layer for layer in pending if all(i in done for i in layer["inputs"])]
        if not ready:
            missing = sorted({i for layer in pending for i in layer["inputs"] if i not in by_name})
            raise ModelError(
                f"layers read unknown layer(s) {', '.join(missing)}" if missing else "the layer graph has a cycle"
            )
        for layer in ready:
            ordered.append(layer)
            done.add(layer["name"])
        pending = [layer for layer in pending if layer["name"] not in done]
    return ordered
