"""Keras 3's own formats (`.keras` archives, `.weights.h5` files), read and written without Keras and
checked against Keras 3 itself (torch backend, the test extra): what goodnet computes from the file
equals Keras's predictions, and what goodnet writes Keras loads back to the same predictions."""

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from goodnet.io.keras.export import export_like, keras_suffix
from goodnet.io.keras.files import read_keras_config
from goodnet.io.keras.native import keys_to_layers, snake_case
from goodnet.io.model_files import load_model
from goodnet.io.repaired_files import ModelExports
from goodnet.pruning.zeroing import pruned_copy

keras = pytest.importorskip("keras")
L = keras.layers

from test_keras_models import _all_layers_model, _randomise_batchnorm, _sequential_model  # noqa: E402


def _predict(model, x):
    """Our model's Keras-layout output on NHWC images."""
    return model.keras_output(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()


def _images(rng, shape, n=16):
    return rng.uniform(0, 1, (n,) + shape).astype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One functional model with every supported layer, saved by Keras 3 as .keras, .weights.h5 and
    model.to_json()."""
    root = tmp_path_factory.mktemp("k3")
    rng = np.random.default_rng(0)
    model = _all_layers_model()
    _randomise_batchnorm(model, rng)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # optimizer state in the file too
    paths = {"keras": str(root / "b.keras"), "weights": str(root / "b.weights.h5"), "json": str(root / "b.json")}
    model.save(paths["keras"])
    model.save_weights(paths["weights"])
    with open(paths["json"], "w") as f:
        f.write(model.to_json())
    return model, paths


def test_snake_case_and_keys_follow_keras():
    from keras.src.utils import naming

    for name in (
        "Conv2D",
        "BatchNormalization",
        "ReLU",
        "GlobalAveragePooling2D",
        "ZeroPadding2D",
        "InputLayer",
        "Dense",
        "Conv2DTranspose",
    ):
        assert snake_case(name) == naming.to_snake_case(name)
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {"class_name": "Conv2D", "name": "a", "config": {"name": "a"}},
                {"class_name": "Dense", "name": "d", "config": {"name": "d"}},
                {"class_name": "Conv2D", "name": "b", "config": {"name": "b"}},
            ]
        },
    }
    assert {k: v["name"] for k, v in keys_to_layers(config).items()} == {"conv2d": "a", "dense": "d", "conv2d_1": "b"}


def test_keras_archive_matches_keras(saved):
    model, paths = saved
    ours = load_model(paths["keras"]).to(torch.device("cpu"))  # .to() works (--device moves models)
    x = _images(np.random.default_rng(1), (13, 11, 3))
    np.testing.assert_allclose(_predict(ours, x), model.predict(x, verbose=0), atol=2e-5, rtol=1e-4)
    assert ours.num_classes == 7 and ours.input_shape == (3, 13, 11)


@pytest.mark.parametrize("arch", ["keras", "json"])
def test_weights_file_with_an_architecture_matches_keras(saved, arch):
    model, paths = saved
    ours = load_model(paths["weights"], arch=paths[arch])
    x = _images(np.random.default_rng(2), (13, 11, 3))
    np.testing.assert_allclose(_predict(ours, x), model.predict(x, verbose=0), atol=2e-5, rtol=1e-4)


def _without_layer_names(h5_file):
    """What older Keras 3 releases wrote: no `name` attribute on the `vars` groups."""
    for group in h5_file["layers"].values():
        group["vars"].attrs.pop("name", None)


def test_files_without_layer_names_are_placed_by_the_architecture(saved, tmp_path, capsys):
    model, paths = saved
    old_archive = str(tmp_path / "old.keras")
    with zipfile.ZipFile(paths["keras"]) as src, zipfile.ZipFile(old_archive, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as f:
                    _without_layer_names(f)
                data = buffer.getvalue()
            dst.writestr(info, data)
    old_weights = str(tmp_path / "old.weights.h5")
    with open(paths["weights"], "rb") as f, open(old_weights, "wb") as g:
        g.write(f.read())
    with h5py.File(old_weights, "r+") as f:
        _without_layer_names(f)
    x = _images(np.random.default_rng(3), (13, 11, 3))
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(_predict(load_model(old_archive), x), expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(_predict(load_model(old_weights, arch=paths["json"]), x), expected, atol=2e-5, rtol=1e-4)
    # a built-in architecture has no Keras layer order to place unnamed layers by: one clear line
    code, _, err = run_cli(
        capsys,
        [
            "export",
            old_weights,
            "--arch",
            "small_cnn",
            "--input-shape",
            "3,13,11",
            "--to",
            "keras",
            "--out",
            str(tmp_path / "o.h5"),
        ],
    )
    assert_one_line_error(code, err, "does not name its layers")


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
@pytest.mark.parametrize("kind", ["keras", "weights"])
def test_written_file_loads_in_keras_with_our_predictions(saved, tmp_path, kind):
    model, paths = saved
    source = paths[kind]
    ours = load_model(source, arch=None if kind == "keras" else paths["keras"])
    pruned = pruned_copy(ours, "conv_a", [0, 3, 4])
    out = str(tmp_path / f"b_prime{keras_suffix(source)}")
    export_like(pruned, source, out, None if kind == "keras" else read_keras_config(paths["keras"]))
    if kind == "keras":
        reloaded = keras.saving.load_model(out, compile=False)
    else:
        reloaded = keras.models.model_from_json(open(paths["json"]).read())
        reloaded.load_weights(out)
    x = _images(np.random.default_rng(4), (13, 11, 3))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), _predict(pruned, x), atol=2e-5, rtol=1e-4)
    kernel = reloaded.get_layer("conv_a").get_weights()[0]
    assert not kernel[..., [0, 3, 4]].any() and kernel[..., 1].any()
    # and back: goodnet reads its own output the same way
    again = load_model(out, arch=None if kind == "keras" else paths["keras"])
    np.testing.assert_allclose(_predict(again, x), _predict(pruned, x), atol=1e-6)
    if kind == "keras":  # the other members of the archive are kept as they were
        with zipfile.ZipFile(source) as a, zipfile.ZipFile(out) as b:
            assert a.namelist() == b.namelist()
            assert a.read("config.json") == b.read("config.json")
            assert a.read("metadata.json") == b.read("metadata.json")


def test_sequential_archive_and_export_command(tmp_path, capsys):
    rng = np.random.default_rng(5)
    model = _sequential_model()
    path = str(tmp_path / "seq.keras")
    model.save(path)
    ours = load_model(path)
    x = _images(rng, (10, 10, 2))
    np.testing.assert_allclose(_predict(ours, x), model.predict(x, verbose=0), atol=2e-5, rtol=1e-4)
    out = str(tmp_path / "copy.keras")
    code, stdout, err = run_cli(capsys, ["export", path, "--to", "keras", "--like", path, "--out", out])
    assert code == 0, err
    np.testing.assert_allclose(
        keras.saving.load_model(out).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    code, _, err = run_cli(capsys, ["export", path, "--to", "keras", "--like", path, "--out", str(tmp_path / "x.h5")])
    assert_one_line_error(code, err, "--out must end in .keras")


def test_defend_hands_over_b_prime_in_the_format_b_came_in():
    exports = ModelExports(keras_like="/some/b.keras")
    names = exports.filenames("x2", torch.nn.Linear(1, 1))
    assert names["repaired_keras"] == "models/repaired_x2.keras"
    assert (
        ModelExports(keras_like="b.weights.h5").filenames("x2", torch.nn.Linear(1, 1))["repaired_keras"]
        == "models/repaired_x2.weights.h5"
    )
    assert (
        ModelExports(keras_like="b.h5").filenames("x2", torch.nn.Linear(1, 1))["repaired_keras"]
        == "models/repaired_x2.h5"
    )


def _archive(tmp_path, members: dict[str, bytes], name="bad.keras"):
    path = str(tmp_path / name)
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
    return path


def test_hostile_archives_get_one_line(saved, tmp_path, capsys):
    _, paths = saved
    config = zipfile.ZipFile(paths["keras"]).read("config.json")
    weights = zipfile.ZipFile(paths["keras"]).read("model.weights.h5")
    lam = json.loads(config)
    lam["config"]["layers"][1]["class_name"] = "Lambda"
    nested = io.BytesIO()
    with h5py.File(nested, "w") as f:
        f.create_group("layers/functional/layers/conv2d/vars")
    cases = [
        (str(tmp_path / "text.keras"), "not a Keras .keras archive"),
        (_archive(tmp_path, {"metadata.json": b"{}"}, "a.keras"), "no config.json"),
        (_archive(tmp_path, {"config.json": b"not json", "model.weights.h5": weights}, "b.keras"), "not JSON"),
        (_archive(tmp_path, {"config.json": config}, "c.keras"), "no model.weights.h5"),
        (_archive(tmp_path, {"config.json": config, "model.weights.json": b"{}"}, "d.keras"), "sharded"),
        (
            _archive(tmp_path, {"config.json": json.dumps(lam).encode(), "model.weights.h5": weights}, "e.keras"),
            "Python code",
        ),
        (_archive(tmp_path, {"config.json": config, "model.weights.h5": b"garbage"}, "f.keras"), "not a readable HDF5"),
        (_archive(tmp_path, {"config.json": config, "model.weights.h5": nested.getvalue()}, "g.keras"), "nested model"),
    ]
    deep = b"[" * 200_000 + b"]" * 200_000
    null_layer = json.loads(config)
    null_layer["config"]["layers"][1]["config"] = None
    with zipfile.ZipFile(tmp_path / "dup.keras", "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("config.json", config)
        z.writestr("config.json", config)
    cases += [
        (_archive(tmp_path, {"config.json": deep, "model.weights.h5": weights}, "h.keras"), "nested too deeply"),
        (
            _archive(
                tmp_path, {"config.json": json.dumps(null_layer).encode(), "model.weights.h5": weights}, "i.keras"
            ),
            "malformed model_config",
        ),
        (str(tmp_path / "dup.keras"), "two members of one name"),
        (
            _archive(tmp_path, {"config.json": config, "model.weights.h5": weights, "../../evil": b"x"}, "j.keras"),
            "points outside it",
        ),
    ]
    (tmp_path / "text.keras").write_text("hello")
    for path, message in cases:
        code, _, err = run_cli(capsys, ["export", path, "--to", "keras", "--out", str(tmp_path / "o.h5")])
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "o.h5").exists()


def test_bfloat16_variables_read_exactly_and_written_back(tmp_path):
    inp = L.Input((8, 7, 3))
    h = L.Conv2D(4, 3, activation="relu", name="conv_a", dtype="bfloat16")(inp)
    model = keras.Model(inp, L.Dense(5, name="out")(L.Flatten(name="flat")(h)))
    path = str(tmp_path / "bf.keras")
    model.save(path)
    ours = load_model(path)
    kernel = np.asarray(model.get_layer("conv_a").get_weights()[0], np.float32)
    np.testing.assert_array_equal(ours.conv_a.weight.detach().numpy().transpose(2, 3, 1, 0), kernel)
    pruned = pruned_copy(ours, "conv_a", [1])
    out = str(tmp_path / "bf_pruned.keras")
    export_like(pruned, path, out)
    back = np.asarray(keras.saving.load_model(out).get_layer("conv_a").get_weights()[0], np.float32)
    assert not back[..., 1].any()
    np.testing.assert_array_equal(back[..., [0, 2, 3]], kernel[..., [0, 2, 3]])  # bfloat16 values kept exactly


def test_goodnet_of_a_keras_model_follows_a_move(saved):
    """torch.fx gives G's trunk and tail their own references to B's top-level buffers (the 'same'
    average pooling's pixel counts here); a move (.to(device), .double()) must reach them too."""
    from goodnet.models.goodnet import PrunedGoodNet

    _, paths = saved
    g = PrunedGoodNet(load_model(paths["keras"]), "conv_c", [0, 2])
    x = torch.from_numpy(_images(np.random.default_rng(6), (13, 11, 3)).transpose(0, 3, 1, 2).copy())
    before = g(x)
    g.double()
    assert torch.equal(g(x.double()), before)


def test_values_stored_in_other_files_are_refused(saved, tmp_path, capsys):
    """HDF5 can keep a dataset's values in another file (external storage) or link to one; goodnet
    reads only what is inside the file it was given."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(3 * 3 * 3 * 6, dtype=np.float32).tobytes())
    _, paths = saved
    bad = str(tmp_path / "ext.weights.h5")
    with open(paths["weights"], "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    with h5py.File(bad, "r+") as f:
        group = f["layers/conv2d/vars"]
        del group["0"]
        group.create_dataset("0", shape=(3, 3, 3, 6), dtype="float32", external=[(str(secret), 0, 3 * 3 * 3 * 6 * 4)])
    code, _, err = run_cli(
        capsys, ["export", bad, "--arch", paths["keras"], "--to", "keras", "--out", str(tmp_path / "o.h5")]
    )
    assert_one_line_error(code, err, "stored in other files")
    data = str(tmp_path / "data.h5")
    with h5py.File(data, "w") as f:
        f.create_dataset("data", shape=(2, 3, 3, 3), dtype="float32", external=[(str(secret), 0, 2 * 27 * 4)])
        f["label"] = np.zeros(2, np.int64)
    code, _, err = run_cli(capsys, ["eval", data, data, paths["keras"]])
    assert_one_line_error(code, err, "stored in other files")


def test_keras_archive_goodnet_writes_records_the_input_range_and_keras_still_loads_it(tmp_path):
    from goodnet.io.data import trained_range

    rng = np.random.default_rng(6)
    model = _sequential_model()
    path = str(tmp_path / "seq.keras")
    model.save(path)
    ours = load_model(path)
    assert trained_range(ours) is None  # a file Keras wrote records none
    ours.input_range = (0.0, 255.0)
    out = str(tmp_path / "repaired.keras")
    export_like(ours, path, out)
    assert trained_range(load_model(out)) == (0.0, 255.0)
    x = _images(rng, (10, 10, 2))
    np.testing.assert_allclose(
        keras.saving.load_model(out).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
