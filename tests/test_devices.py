"""`--device cpu|cuda|auto`: one rule for every command that runs a model. On the CPU (all CI has)
the tests check the choice, the refusals and that nothing changes; the GPU test runs where PyTorch
sees a GPU and checks a repair there against the same repair on the CPU."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from goodnet.devices import compute_device, device_of, placed, resolve_device, to_model, to_numpy, using_device
from goodnet.errors import SettingsError

has_cuda = torch.cuda.is_available()


def test_choice_and_refusals(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if has_cuda else "cpu")
    with pytest.raises(SettingsError, match="one of auto, cpu, cuda"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(SettingsError, match="PyTorch sees no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")  # resolving touches no GPU
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(SettingsError, match="there are 1 CUDA device"):
        resolve_device("cuda:3")


def test_context_places_models_and_puts_them_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert compute_device() == torch.device("cpu")
    with using_device("cpu") as device:
        assert compute_device() == device == torch.device("cpu")
        with placed(model) as where:
            assert where == device_of(model) == device
            x = to_model(np.ones((4, 3), np.float32), model)
            assert x.device == device and to_numpy(model(x)).shape == (4, 2)
    assert device_of(model) == torch.device("cpu") and device_of(torch.nn.ReLU()) == torch.device("cpu")


@pytest.mark.skipif(has_cuda, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(demo_run, tmp_path, capsys):
    inputs = demo_run["inputs"]
    code, _, err = run_cli(
        capsys, ["eval", "--device", "cuda", inputs["clean_test"], inputs["poisoned_test"], demo_run["model"]]
    )
    assert_one_line_error(code, err, "--device cuda: PyTorch sees no CUDA GPU")
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--device",
            "cuda",
            "--model",
            demo_run["model"],
            "--clean-valid",
            inputs["clean_valid"],
            "--out",
            tmp_path / "o",
        ],
    )
    assert_one_line_error(code, err, "--device cuda")
    assert not (tmp_path / "o").exists()


def _defend(capsys, demo_run, out, device):
    inputs = demo_run["inputs"]
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--device",
            device,
            "--model",
            demo_run["model"],
            "--repair",
            "fine-tune",
            "--epochs",
            "2",
            "--clean-valid",
            inputs["clean_valid"],
            "--clean-test",
            inputs["clean_test"],
            "--poisoned-test",
            inputs["poisoned_test"],
            "--out",
            out,
            "--quiet",
            "--no-strip",
        ],
    )
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


def test_cpu_by_name_is_the_default_here(demo_run, tmp_path, capsys):
    """On a machine without a GPU, --device cpu and auto give the same numbers, to the last digit."""
    if has_cuda:
        pytest.skip("auto means the GPU here")
    a, b = _defend(capsys, demo_run, tmp_path / "a", "cpu"), _defend(capsys, demo_run, tmp_path / "b", "auto")
    assert a["models"][0]["metrics"] == b["models"][0]["metrics"]


@pytest.mark.skipif(not has_cuda, reason="needs a CUDA GPU")
def test_a_repair_on_the_gpu_matches_the_cpu(demo_run, tmp_path, capsys):
    """The same draws on both devices; only floating-point arithmetic differs, so the numbers agree
    to within a few test images."""
    cpu, gpu = _defend(capsys, demo_run, tmp_path / "cpu", "cpu"), _defend(capsys, demo_run, tmp_path / "gpu", "cuda")
    for role in ("clean_test", "poisoned_test"):
        assert abs(cpu["models"][0]["metrics"][role]["repaired"] - gpu["models"][0]["metrics"][role]["repaired"]) < 1.0
