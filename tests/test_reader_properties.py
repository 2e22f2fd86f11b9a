"""Property-based tests of every reader: whatever the input, a valid result or one GoodnetError,
never another exception. Examples are derandomised so CI sees the same ones every run."""

import json
import os
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from goodnet.errors import GoodnetError
from goodnet.io.data import load_images, read_image
from goodnet.io.keras.config import parse_model_config
from goodnet.io.model_files import load_model, save_model
from goodnet.models import SmallCNN

# GOODNET_PROPERTY_EXAMPLES=2000 for a longer hunt; CI runs the default, the same examples every time
SETTINGS = settings(
    max_examples=int(os.environ.get("GOODNET_PROPERTY_EXAMPLES", "300")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

DTYPES = st.sampled_from([np.uint8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_, np.complex64])


def arrays(max_rank=5):
    return DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=max_rank, min_side=0, max_side=4),
            elements=None
            if dtype is np.bool_
            else hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True),
        )
    )


def _scratch(suffix):
    fd, path = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    return path


def _check_image_set(images):
    assert images.x.dtype == np.float32 and images.x.ndim == 4 and np.isfinite(images.x).all()
    assert images.y.dtype == np.int64 and images.y.ndim == 1 and len(images.y) == len(images.x) > 0
    assert (images.y >= 0).all()


def _read(reader, *args):
    try:
        return reader(*args)
    except GoodnetError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None


@SETTINGS
@given(data=arrays(), label=arrays(max_rank=2), layout=st.sampled_from(["both", "no-label", "label-group"]))
def test_any_hdf5_data_file_reads_or_is_refused(data, label, layout):
    path = _scratch(".h5")
    try:
        with h5py.File(path, "w") as f:
            f["data"] = data
            if layout == "both":
                f["label"] = label
            elif layout == "label-group":
                f.create_group("label")
        images = _read(load_images, path)
        if images is not None:
            _check_image_set(images)
    finally:
        os.unlink(path)


@SETTINGS
@given(x=arrays(), y=arrays(max_rank=2), scale=st.floats(allow_nan=True, allow_infinity=True))
def test_any_npz_data_file_and_scale_reads_or_is_refused(x, y, scale):
    path = _scratch(".npz")
    try:
        np.savez(path, x=x, y=y)
        images = _read(load_images, path, scale)
        if images is not None:
            _check_image_set(images)
    finally:
        os.unlink(path)


@SETTINGS
@given(blob=st.binary(max_size=2048), suffix=st.sampled_from([".h5", ".npz", ".safetensors", ".pt", ".png"]))
def test_any_bytes_under_any_name_are_read_or_refused(blob, suffix):
    path = _scratch(suffix)
    try:
        with open(path, "wb") as f:
            f.write(blob)
        if suffix == ".png":
            _read(read_image, path)
        elif suffix in (".h5", ".npz"):
            _read(load_images, path)
        else:
            _read(load_model, path)
    finally:
        os.unlink(path)


@SETTINGS
@given(
    pixels=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)),
    mode=st.sampled_from(["L", "RGB", "RGBA", "I;16", "I", "F", "1", "P", "LA"]),
    scale=st.sampled_from([1.0, 255.0, 1e-40, 3.5]),
)
def test_any_image_mode_reads_or_is_refused(pixels, mode, scale):
    from PIL import Image

    base = Image.fromarray(pixels)
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(pixels.astype(np.uint16) * 257)
    path = _scratch(".png" if mode not in ("F", "I") else ".tiff")
    try:
        image.save(path)
        array = _read(read_image, path, scale)
        if array is not None:
            assert array.dtype == np.float32 and array.ndim == 3 and np.isfinite(array).all()
            if mode in ("L", "I;16") and scale == 1.0:
                assert float(array.max()) <= 255.0 + 1e-3  # 16-bit levels land on the 8-bit scale
    finally:
        os.unlink(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("header") / "b.safetensors")
    save_model(SmallCNN(num_classes=10, width=4), path)
    return path


@SETTINGS
@given(
    field=st.sampled_from(
        [
            "arch",
            "kind",
            "config",
            "input_range",
            "layer",
            "pruned",
            "num_classes",
            "input_shape",
            "input_divisor",
            "width",
            "two_models",
        ]
    ),
    value=JSON,
)
def test_any_header_field_value_loads_or_is_refused(saved_model, field, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(saved_model, framework="pt") as f:
        header = json.loads(f.metadata()["goodnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if field in ("num_classes", "input_shape", "input_divisor", "width"):
        header["config"][field] = value
    else:
        header[field] = value
    path = _scratch(".safetensors")
    try:
        save_file(tensors, path, metadata={"goodnet": json.dumps(header)})
        _read(load_model, path)
    finally:
        os.unlink(path)


LAYER = st.fixed_dictionaries(
    {
        "class_name": st.sampled_from(
            ["Conv2D", "Dense", "MaxPooling2D", "Flatten", "Activation", "Lambda", "Dropout", "Add", "Nope"]
        ),
        "config": st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "filters",
                    "kernel_size",
                    "strides",
                    "units",
                    "activation",
                    "padding",
                    "pool_size",
                    "batch_input_shape",
                ]
            ),
            JSON,
            max_size=6,
        ),
    }
)


@SETTINGS
@given(
    config=st.one_of(
        JSON,
        st.fixed_dictionaries(
            {
                "class_name": st.sampled_from(["Sequential", "Model", "Functional", "Other"]),
                "config": st.one_of(JSON, st.fixed_dictionaries({"layers": st.lists(LAYER, max_size=5)})),
            }
        ),
    )
)
def test_any_keras_model_config_parses_or_is_refused(config):
    graph = _read(parse_model_config, json.dumps(config), "model.h5")
    if graph is not None:
        assert isinstance(graph["layers"], list)


WEIGHT = hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.int32, np.bool_]),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)


@SETTINGS
@given(
    layers=st.dictionaries(
        st.sampled_from(["conv_1", "conv_2", "fc_1", "output", "x/y", "other"]),
        st.dictionaries(st.sampled_from(["kernel:0", "bias:0", "gamma:0", "odd"]), WEIGHT, max_size=3),
        max_size=5,
    ),
    listed=st.lists(st.sampled_from(["conv_1", "conv_2", "fc_1", "output", "missing"]), max_size=5),
    arch=st.sampled_from(["small_cnn", "deepid"]),
)
def test_any_keras_weights_file_loads_or_is_refused(layers, listed, arch):
    path = _scratch(".h5")
    try:
        with h5py.File(path, "w") as f:
            names = list(dict.fromkeys([*layers, *listed]))
            f.attrs["layer_names"] = [n.encode() for n in names]
            for name, weights in layers.items():
                group = f.require_group(name)
                group.attrs["weight_names"] = [f"{name}/{w}".encode() for w in weights]
                for w, value in weights.items():
                    group[f"{name}/{w}"] = value
        shape = (1, 28, 28) if arch == "small_cnn" else (3, 55, 47)
        _read(load_model, path, arch, shape)
    finally:
        os.unlink(path)
