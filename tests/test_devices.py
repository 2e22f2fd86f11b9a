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


def _four_d_layouts(model: torch.nn.Module) -> set[str]:
    formats = set()
    for p in model.parameters():
        last, standard = p.is_contiguous(memory_format=torch.channels_last), p.is_contiguous()
        if p.dim() == 4 and last != standard:  # a kernel of one input channel is both: no evidence
            formats.add("channels-last" if last else "standard")
    return formats


def test_own_architectures_train_channels_last_and_come_back_standard():
    from goodnet.devices import fast_layout_ready, training_layout
    from goodnet.models import build_model

    model = build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fast_layout_ready(model) and _four_d_layouts(model) == {"standard"}
    with training_layout(model):
        assert _four_d_layouts(model) == {"channels-last"}
    assert _four_d_layouts(model) == {"standard"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a layout change only

    foreign = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    assert not fast_layout_ready(foreign)
    with training_layout(foreign):  # a model from elsewhere may view its maps: never switched
        assert _four_d_layouts(foreign) == {"standard"}
    with training_layout(foreign, like=model):  # a wrapper of one of goodnet's own models is
        assert _four_d_layouts(foreign) == {"channels-last"}
    assert _four_d_layouts(foreign) == {"standard"}


def test_the_layout_changes_rounding_only(monkeypatch):
    from goodnet.models import build_model
    from goodnet.models.small_cnn import SmallCNN
    from goodnet.models.training import fine_tune

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (96, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 96)

    def tuned() -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28))
        return fine_tune(model, x, y, 2, 0, value_range=(0.0, 255.0), lr=0.01)

    fast = tuned()
    monkeypatch.setattr(SmallCNN, "channels_last_ready", False)
    standard = tuned()
    assert _four_d_layouts(fast) == _four_d_layouts(standard) == {"standard"}  # ready to save either way
    for (name, a), b in zip(fast.state_dict().items(), standard.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
