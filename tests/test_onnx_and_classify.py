"""G as one ONNX file (onnxruntime must give the PyTorch G's labels), and `goodnet classify`."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from goodnet.inference import predict
from goodnet.io.data import load_images
from goodnet.io.model_files import load_model
from goodnet.io.onnx_export import export_onnx
from goodnet.pruning.graph_split import split_at_conv

pytestmark = pytest.mark.slow


def _demo(demo_run):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        doc = json.load(f)
    entry = next(t for t in doc["thresholds"] if t["x"] == 10 and t["rule"] == "crossing")
    return doc, entry


def test_goodnet_onnx_equals_pytorch_on_demo_data(demo_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    doc, entry = _demo(demo_run)
    g = load_model(os.path.join(demo_run["out"], entry["files"]["goodnet"]))
    path = str(tmp_path / "g.onnx")
    export_onnx(g, path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    flagged = 0
    for role in ("clean_test", "poisoned_test"):
        images = load_images(doc["inputs"][role])
        got = session.run(["label"], {"image": images.x})[0]
        expected = predict(g, images.x)
        np.testing.assert_array_equal(got, expected)
        flagged += int((got == g.extra_class).sum())
    assert flagged > 0  # the comparison branch is exercised, not only agreement
    # one graph: the trunk's convs once, the tail's convs twice
    convs = sum(node.op_type == "Conv" for node in onnx.load(path).graph.node)
    split = split_at_conv(g.backdoored, g.layer)
    tail_convs = sum(
        node.op == "call_module" and isinstance(split.tail.get_submodule(node.target), torch.nn.Conv2d)
        for node in split.tail.graph.nodes
    )
    trunk_convs = sum(
        node.op == "call_module" and isinstance(split.trunk.get_submodule(node.target), torch.nn.Conv2d)
        for node in split.trunk.graph.nodes
    )
    assert convs == trunk_convs + 2 * tail_convs


def test_classify_prints_one_label_per_image(demo_run, tmp_path, capsys):
    from PIL import Image

    doc, entry = _demo(demo_run)
    images = load_images(doc["inputs"]["poisoned_test"])
    paths = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(images.x[i, 0].astype(np.uint8), mode="L").save(path)
        paths.append(path)
    g_path = os.path.join(demo_run["out"], entry["files"]["goodnet"])
    code, out, err = run_cli(capsys, ["classify", g_path, *paths])
    assert code == 0, err
    expected = predict(load_model(g_path), images.x[:6])
    assert [int(v) for v in out.split()] == list(expected)
    assert all(0 <= v <= 10 for v in expected)

    Image.fromarray(np.zeros((28, 28, 3), np.uint8), mode="RGB").save(tmp_path / "rgb.png")
    code, _, err = run_cli(capsys, ["classify", g_path, tmp_path / "rgb.png"])
    assert_one_line_error(code, err, "image is 3x28x28 (C x H x W) but the model takes 1x28x28")
    Image.fromarray(np.zeros((30, 28), np.uint8), mode="L").save(tmp_path / "big.png")
    code, _, err = run_cli(capsys, ["classify", g_path, tmp_path / "big.png"])
    assert_one_line_error(code, err, "image is 1x30x28")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    code, _, err = run_cli(capsys, ["classify", g_path, tmp_path / "junk.png"])
    assert_one_line_error(code, err, "not a readable image")


def test_export_command(demo_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    doc, entry = _demo(demo_run)
    b_prime = os.path.join(demo_run["out"], entry["files"]["repaired"])
    code, _, err = run_cli(capsys, ["export", b_prime, "--to", "keras", "--out", tmp_path / "b.h5"])
    assert code == 0, err
    again = load_model(str(tmp_path / "b.h5"), arch="small_cnn", input_shape=(1, 28, 28), input_divisor=255.0)
    x = torch.from_numpy(load_images(doc["inputs"]["clean_test"]).x[:50])
    assert torch.allclose(again(x), load_model(b_prime)(x), atol=1e-5)
    g = os.path.join(demo_run["out"], entry["files"]["goodnet"])
    code, _, err = run_cli(capsys, ["export", g, "--to", "keras", "--out", tmp_path / "g.h5"])
    assert_one_line_error(code, err, "a GoodNet has no Keras form")
    assert not os.path.exists(tmp_path / "g.h5")
    code, _, err = run_cli(capsys, ["export", g, "--to", "onnx", "--out", tmp_path / "g.onnx"])
    assert code == 0, err
    assert os.path.getsize(tmp_path / "g.onnx") > 0
