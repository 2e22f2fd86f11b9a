"""Bad input: a one-line error naming the problem, exit status 2, no traceback, no output directory."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from goodnet.cli import main
from goodnet.io.data import ImageSet, save_images
from goodnet.io.model_files import save_model
from goodnet.models import SmallCNN


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(0)
    model_path = str(tmp_path / "b.safetensors")
    save_model(SmallCNN(num_classes=10, width=4), model_path)
    data = str(tmp_path / "clean.h5")
    save_images(data, ImageSet(rng.integers(0, 256, (20, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 20)))
    return {"dir": tmp_path, "model": model_path, "data": data, "out": str(tmp_path / "out")}


def _h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, label
    return str(path)


def _fails(capsys, argv, pattern, out=None):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("goodnet: error:"), err
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err
    if out is not None:
        assert not os.path.exists(out)
        assert not [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".out")], "staging left behind"


def _defend(case, **over):
    args = {"--model": case["model"], "--clean-valid": case["data"], "--out": case["out"]}
    args.update(over)
    argv = ["defend", "--quiet"]
    for k, v in args.items():
        argv += [k, v]
    return argv


def test_missing_files(case, capsys):
    _fails(capsys, _defend(case, **{"--model": str(case["dir"] / "nope.safetensors")}), "no such file", case["out"])
    _fails(capsys, _defend(case, **{"--clean-valid": str(case["dir"] / "nope.h5")}), "no such file", case["out"])


def test_wrong_shapes(case, capsys):
    d = case["dir"]
    _fails(
        capsys,
        _defend(case, **{"--clean-valid": _h5(d / "3d.h5", np.zeros((4, 28, 28)), np.zeros(4))}),
        "expected 4 dimensions",
        case["out"],
    )
    _fails(
        capsys,
        _defend(case, **{"--clean-valid": _h5(d / "big.h5", np.zeros((4, 3, 28, 28)), np.zeros(4))}),
        "the model takes 1x28x28",
        case["out"],
    )
    _fails(
        capsys,
        _defend(case, **{"--clean-valid": _h5(d / "n.h5", np.zeros((4, 1, 28, 28)), np.zeros(3))}),
        "4 images but 3 labels",
        case["out"],
    )


def test_missing_dataset_key(case, capsys):
    path = str(case["dir"] / "nolabel.h5")
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((4, 1, 28, 28))
    _fails(capsys, _defend(case, **{"--clean-valid": path}), "no 'label' dataset", case["out"])


def test_nan_and_bad_labels(case, capsys):
    d = case["dir"]
    x = np.zeros((4, 1, 28, 28))
    x[2, 0, 3, 3] = np.nan
    _fails(capsys, _defend(case, **{"--clean-valid": _h5(d / "nan.h5", x, np.zeros(4))}), "NaN", case["out"])
    x = np.zeros((4, 1, 28, 28))
    _fails(
        capsys,
        _defend(case, **{"--clean-valid": _h5(d / "lab.h5", x, np.array([0, 1, 2, 10]))}),
        "label 10 is out of range",
        case["out"],
    )
    _fails(
        capsys,
        _defend(case, **{"--clean-valid": _h5(d / "frac.h5", x, np.array([0, 1, 2.5, 1]))}),
        "whole numbers",
        case["out"],
    )
    _fails(
        capsys,
        _defend(case, **{"--clean-valid": _h5(d / "neg.h5", x, np.array([0, -1, 2, 1]))}),
        "negative label",
        case["out"],
    )


def test_pickled_npz_is_refused(case, capsys):
    path = str(case["dir"] / "pickled.npz")
    np.savez(path, x=np.array([object()], dtype=object), y=np.zeros(1))
    _fails(capsys, _defend(case, **{"--clean-valid": path}), "without pickle", case["out"])


def test_unknown_or_wrong_layer(case, capsys):
    _fails(capsys, _defend(case, **{"--layer": "conv_9"}), "no layer named 'conv_9'", case["out"])
    _fails(capsys, _defend(case, **{"--layer": "fc_1"}), "is a Linear, not a Conv2d", case["out"])


def test_truncated_and_foreign_model_files(case, capsys):
    d = case["dir"]
    blob = open(case["model"], "rb").read()
    (d / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    _fails(capsys, _defend(case, **{"--model": str(d / "cut.safetensors")}), "not a readable safetensors", case["out"])
    (d / "cut.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    _fails(capsys, _defend(case, **{"--model": str(d / "cut.h5")}), "not a readable HDF5", case["out"])
    (d / "model.pt").write_bytes(b"\x80\x04pickle")
    _fails(capsys, _defend(case, **{"--model": str(d / "model.pt")}), "pass --factory", case["out"])
    (d / "model.onnx").write_bytes(b"onnx")
    _fails(capsys, _defend(case, **{"--model": str(d / "model.onnx")}), "unknown model format", case["out"])
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, dtype=np.float32)}, str(d / "foreign.safetensors"))
    _fails(
        capsys, _defend(case, **{"--model": str(d / "foreign.safetensors")}), "without a goodnet header", case["out"]
    )


def test_refuses_to_overwrite_unrelated_directory(case, capsys):
    os.makedirs(case["out"])
    (case["dir"] / "out" / "thesis.tex").write_text("precious")
    assert main(_defend(case)) == 2
    assert "not a goodnet output directory" in capsys.readouterr().err
    assert (case["dir"] / "out" / "thesis.tex").read_text() == "precious"


def test_eval_errors(case, capsys):
    _fails(capsys, ["eval", case["data"], str(case["dir"] / "none.h5"), case["model"]], "no such file")


def test_real_entry_point_prints_one_line(case):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "goodnet",
            "defend",
            "--model",
            case["model"],
            "--clean-valid",
            str(case["dir"] / "absent.h5"),
            "--out",
            case["out"],
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "absent.h5': no such file" in proc.stderr
    assert not os.path.exists(case["out"])
