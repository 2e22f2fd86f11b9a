"""Keras weights import, checked against an independent NumPy forward pass in Keras's own layout
(NHWC tensors, (kh, kw, in, out) kernels, NHWC flatten)."""

import h5py
import numpy as np
import pytest
import torch
from conftest import LAB_WEIGHTS, needs_lab_weights

from goodnet.errors import GoodnetError
from goodnet.io.model_files import load_model

LAYERS = {"conv_1": (4, 3, 20), "conv_2": (3, 20, 40), "conv_3": (3, 40, 60), "conv_4": (2, 60, 80)}


def _conv(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return out + bias


def _pool(x):
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def keras_deepid_logits(weights, x_nchw):
    """The lab's Keras model, written out by hand in float64 NumPy."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = x_nchw.transpose(0, 2, 3, 1).astype(np.float64)
    for name in ("conv_1", "conv_2", "conv_3"):
        x = _pool(relu(_conv(x, *weights[name])))
    fc_1 = x.reshape(len(x), -1) @ weights["fc_1"][0] + weights["fc_1"][1]
    c4 = relu(_conv(x, *weights["conv_4"]))
    fc_2 = c4.reshape(len(c4), -1) @ weights["fc_2"][0] + weights["fc_2"][1]
    return relu(fc_1 + fc_2) @ weights["output"][0] + weights["output"][1]


def _read(path):
    with h5py.File(path, "r") as f:
        return {
            name: (f[name][name]["kernel:0"][()].astype(np.float64), f[name][name]["bias:0"][()].astype(np.float64))
            for name in ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output")
        }


def write_keras_weights(path, weights, extra_attrs=True):
    """A file in the layout Keras's save_weights writes (see ../shared/fixtures/README.md)."""
    names = [
        "input",
        "conv_1",
        "pool_1",
        "conv_2",
        "pool_2",
        "conv_3",
        "pool_3",
        "conv_4",
        "flatten_1",
        "flatten_2",
        "fc_1",
        "fc_2",
        "add_1",
        "activation_1",
        "output",
    ]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        if extra_attrs:
            f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.3.1"
        for name in names:
            g = f.create_group(name)
            if name in weights:
                kernel, bias = weights[name]
                g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
                g.create_dataset(f"{name}/kernel:0", data=kernel.astype(np.float32))
                g.create_dataset(f"{name}/bias:0", data=bias.astype(np.float32))
            else:
                g.attrs["weight_names"] = np.array([], dtype=np.float64)


def random_keras_deepid(num_classes, height, width, seed=0):
    rng = np.random.default_rng(seed)
    weights = {}
    for name, (k, cin, cout) in LAYERS.items():
        weights[name] = (rng.normal(0, 0.5 / np.sqrt(k * k * cin), (k, k, cin, cout)), rng.normal(0, 0.05, cout))
    h, w = (height - 3) // 2, (width - 3) // 2
    h, w = (h - 2) // 2, (w - 2) // 2
    h, w = (h - 2) // 2, (w - 2) // 2
    weights["fc_1"] = (rng.normal(0, 0.05, (60 * h * w, 160)), rng.normal(0, 0.05, 160))
    weights["fc_2"] = (rng.normal(0, 0.05, (80 * (h - 1) * (w - 1), 160)), rng.normal(0, 0.05, 160))
    weights["output"] = (rng.normal(0, 0.1, (160, num_classes)), rng.normal(0, 0.05, num_classes))
    return weights


def _compare(path, x, input_shape):
    model = load_model(path, arch="deepid", input_shape=input_shape)
    with torch.inference_mode():
        ours = model(torch.from_numpy(x)).numpy().astype(np.float64)
    reference = keras_deepid_logits(_read(path), x)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(ours.argmax(1), reference.argmax(1))
    return model


def test_import_matches_numpy_keras_on_written_file(tmp_path):
    # A non-square input whose NHWC and NCHW flatten orders differ at every position.
    path = str(tmp_path / "w.h5")
    write_keras_weights(path, random_keras_deepid(37, 31, 43))
    x = (np.random.default_rng(1).random((16, 3, 31, 43)) * 255).astype(np.float32)
    model = _compare(path, x, (3, 31, 43))
    assert model.num_classes == 37


@needs_lab_weights
def test_import_matches_numpy_keras_on_lab_badnet():
    x = (np.random.default_rng(2).random((8, 3, 55, 47)) * 255).astype(np.float32)
    model = _compare(LAB_WEIGHTS, x, (3, 55, 47))
    assert model.num_classes == 1283


def test_wrong_input_size_is_a_clear_error(tmp_path):
    path = str(tmp_path / "w.h5")
    write_keras_weights(path, random_keras_deepid(5, 55, 47))
    with pytest.raises(GoodnetError, match="'fc_1' kernel has shape"):
        load_model(path, arch="deepid", input_shape=(3, 31, 43))


def test_missing_layer_and_nan_weights(tmp_path):
    weights = random_keras_deepid(5, 55, 47)
    del weights["conv_4"]
    path = str(tmp_path / "missing.h5")
    write_keras_weights(path, weights)
    with pytest.raises(GoodnetError, match="no weights for layer.*conv_4"):
        load_model(path, arch="deepid", input_shape=(3, 55, 47))
    weights = random_keras_deepid(5, 55, 47)
    weights["conv_2"][0][0, 0, 0, 0] = np.nan
    path = str(tmp_path / "nan.h5")
    write_keras_weights(path, weights)
    with pytest.raises(GoodnetError, match="'conv_2' kernel contains NaN"):
        load_model(path, arch="deepid", input_shape=(3, 55, 47))
