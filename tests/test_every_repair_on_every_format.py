"""Every registered repair on every model format goodnet loads: it either hands back B' whose
outputs are finite, or refuses in one line (a GoodnetError raised by the repair's check_model,
before any work), never a traceback. ONNX is refused when loaded, whatever the repair.

The repairs come from the registry, so a new one is covered without touching this file; each runs
at its cheapest (every epoch, step, round and iteration count at its lower bound) on a tiny model
and 64 tiny images. The formats: a goodnet .safetensors file of a built-in architecture, a Keras 2
weights-only .h5 with a built-in architecture (--arch), a user's class (--factory) with a torch.save'd
state dict, TorchScript (--trust-model-code) and a Keras 2 full-model .h5, written here without
Keras. The cases users hit (TorchScript with fine-tune, ft-sam and clp) also run through the CLI,
and every repair that runs on TorchScript must give the B' it gives for the same weights loaded as
a PyTorch class.
"""

import json
import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from goodnet.errors import GoodnetError, ModelError
from goodnet.io.data import ImageSet
from goodnet.io.keras.config import parse_model_config
from goodnet.io.keras.export import write_keras_weights
from goodnet.io.model_files import ModelSource, load_model, save_model
from goodnet.measure import run_repair
from goodnet.models import KerasModel, build_model
from goodnet.pruning.graph_split import conv_layers, resolve_layer
from goodnet.repairs import REPAIRS, RepairData, build_repair, repair_names

SHAPE = (1, 16, 16)
N = 64
FACTORY = "user_models:tiny_resnet"
FORMATS = ("goodnet", "keras-weights", "factory", "torchscript", "keras")
COSTLY = ("epochs", "steps", "iterations", "rounds")  # int settings that set how long a repair runs
CHEAP = {
    "clp": {"u": 1.0},  # 8-channel layers can have an outlier only for u < 2.47: something is pruned
    "prune": {"thresholds": (2.0, 100.0), "rule": "both"},  # a B' even when no budget is crossed
    "attack-aware": {"layers": 1},  # one full pass per channel tried
}

# What compiled TorchScript code cannot give: a torch.fx graph (profiling, sweeps, feature taps) or
# forward hooks (masks, head search). Everything else runs on every format.
TORCHSCRIPT_REFUSALS = {
    "prune": "cannot be profiled",
    "fine-prune": "cannot be profiled",
    "fst": "forward hooks",
    "rnp": "forward hooks",
    "anp": "forward hooks",
    "nad": "torch.fx graph",
    "attack-aware": "torch.fx graph",
}
BUILT_IN = {name for name, cls in REPAIRS.items() if cls.__module__.startswith("goodnet.repairs.")}


def _keras_full_model(path):
    """A Keras 2 full-model file (`model_config` + `model_weights`), as Keras's model.save writes it."""
    config = {
        "class_name": "Sequential",
        "config": {
            "name": "tiny",
            "layers": [
                {"class_name": "InputLayer", "config": {"name": "image", "batch_input_shape": [None, 16, 16, 1]}},
                *(
                    layer
                    for i, filters in ((1, 8), (2, 12))
                    for layer in (
                        {
                            "class_name": "Conv2D",
                            "config": {
                                "name": f"conv_{i}",
                                "filters": filters,
                                "kernel_size": [3, 3],
                                "padding": "same",
                                "activation": "relu",
                            },
                        },
                        {"class_name": "BatchNormalization", "config": {"name": f"bn_{i}"}},
                        {"class_name": "MaxPooling2D", "config": {"name": f"pool_{i}", "pool_size": [2, 2]}},
                    )
                ),
                {"class_name": "Flatten", "config": {"name": "flatten"}},
                {"class_name": "Dense", "config": {"name": "output", "units": 4, "activation": "softmax"}},
            ],
        },
    }
    model = KerasModel(parse_model_config(config))
    with torch.no_grad():
        model.conv_1.weight /= 255.0  # the data are 0..255 pixels
        for bn in (model.bn_1, model.bn_2):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    weights = str(path).replace(".h5", "_weights_only.h5")
    write_keras_weights(model, weights)
    with h5py.File(path, "w") as f, h5py.File(weights, "r") as w:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"], f.attrs["backend"] = b"2.3.1", b"tensorflow"
        group = f.create_group("model_weights")
        for key, value in w.attrs.items():
            group.attrs[key] = value
        for key in w:
            w.copy(key, group)
    return ModelSource(str(path))


def _sources(d):
    """One model file per format (tiny models, random weights)."""
    from user_models import tiny_resnet

    save_model(build_model("small_cnn", num_classes=4, input_shape=SHAPE, width=4).eval(), str(d / "b.safetensors"))
    # --arch small_cnn builds the architecture's default width (16)
    write_keras_weights(build_model("small_cnn", num_classes=4, input_shape=SHAPE).eval(), str(d / "b_weights.h5"))
    torch.save(tiny_resnet().state_dict(), d / "b_state.pt")
    torch.jit.save(torch.jit.script(tiny_resnet().eval()), str(d / "b_script.pt"))
    return {
        "goodnet": ModelSource(str(d / "b.safetensors")),
        "keras-weights": ModelSource(str(d / "b_weights.h5"), arch="small_cnn"),
        "factory": ModelSource(str(d / "b_state.pt"), factory=FACTORY),
        "torchscript": ModelSource(str(d / "b_script.pt"), trust_code=True),
        "keras": _keras_full_model(d / "b_full.h5"),
    }


def _images():
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(0, 255, (N, *SHAPE))).astype(np.float32)
    poisoned = x[:24].copy()
    poisoned[:, :, -4:, -4:] = 255.0  # a white corner patch, labelled with the target 0
    return x, poisoned


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """format -> (its ModelSource, B loaded from it, validation data)."""
    d = tmp_path_factory.mktemp("formats")
    x, poisoned = _images()
    out = {}
    for name, source in _sources(d).items():
        model = source.load_backdoored(SHAPE)
        data = {  # every class present; B is at chance on random images (the runs are --force'd)
            "clean_valid": ImageSet(x, np.arange(N, dtype=np.int64) % model.num_classes),
            "poisoned_valid": ImageSet(poisoned, np.zeros(len(poisoned), dtype=np.int64)),
        }
        out[name] = (source, model, data)
    return out


def cheap_settings(name, model=None):
    """The repair `name` at its cheapest: every epoch/step/round/iteration count at its lower bound;
    a `layer` setting at the model's last conv, a `channels` list of one channel."""
    settings = {}
    for spec in REPAIRS[name].setting_specs():
        if spec.kind == "int" and spec.name.endswith(COSTLY):
            settings[spec.name] = max(1, int(spec.low or 1))
        elif spec.name == "layer" and spec.kind == "str" and model is not None and conv_layers(model):
            settings["layer"] = resolve_layer(model, "auto")
        elif spec.name == "channels" and spec.kind == "ints":
            settings["channels"] = (0,)
    return {**settings, **CHEAP.get(name, {})}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finite_outputs(model, x):
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return out.shape == (len(x), model.num_classes) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", repair_names())
def test_every_repair_runs_or_refuses_in_one_line(formats, fmt, name):
    _, model, data = formats[fmt]
    repair = build_repair(name, cheap_settings(name, model))
    before = _state(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # doubts about the tiny data are not what this checks
            result = run_repair(model, repair, data, force=True, max_drop=None)
        refusal = None
    except GoodnetError as exc:
        refusal = exc
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), f"{name} changed B itself"
    if fmt == "torchscript" and name in TORCHSCRIPT_REFUSALS:
        message = str(refusal)
        assert isinstance(refusal, ModelError), f"{name} on TorchScript should refuse, got {refusal!r}"
        assert "\n" not in message and TORCHSCRIPT_REFUSALS[name] in message
        assert f"the {name} repair cannot run on a TorchScript model" in message and "--factory" in message
        with pytest.raises(ModelError, match="cannot run on a TorchScript model"):  # before any work
            repair.check_model(model)
        return
    if name in BUILT_IN:
        assert refusal is None, f"{name} on {fmt}: {refusal}"
    if refusal is None:  # a repair from elsewhere may refuse; it must do so in one line
        assert result.models or name not in BUILT_IN, f"{name} on {fmt} handed back no model"
        for measured in result.models:
            assert _finite_outputs(measured.repaired.model, data["clean_valid"].x), (name, fmt)
    else:
        assert "\n" not in str(refusal)


@pytest.mark.parametrize("name", sorted(BUILT_IN - set(TORCHSCRIPT_REFUSALS)))
def test_torchscript_b_prime_is_the_pytorch_class_b_prime(formats, name):
    """Faithful, not merely running: B' of the TorchScript file is B' of the same weights loaded as a
    PyTorch class (fine-tuning trains the scripted parameters; BatchNorm's running statistics are
    kept through FT-SAM's perturbed pass and unlearn-uap's perturbed images as in eager mode)."""
    _, eager, data = formats["factory"]
    _, scripted, _ = formats["torchscript"]
    repair = build_repair(name, cheap_settings(name, eager))
    given = RepairData(data["clean_valid"], data["poisoned_valid"])
    for a, b in zip(repair.run(eager, given).models, repair.run(scripted, given).models, strict=True):
        assert isinstance(b.model, torch.jit.ScriptModule) and (b.model.num_classes, b.model.input_shape) == (
            eager.num_classes,
            eager.input_shape,
        )
        mine, theirs = a.model.state_dict(), b.model.state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(theirs[key], mine[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def _options(settings):
    args = []
    for key, value in settings.items():
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(option if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, tuple):
            args += [option, *map(str, value)]
        else:
            args += [option, str(value)]
    return args


def _data_files(d, data):
    paths = {}
    for role, images in data.items():
        paths[role] = d / f"{role}.h5"
        with h5py.File(paths[role], "w") as f:
            f["data"], f["label"] = images.x, images.y
    return paths


@pytest.mark.parametrize("name", ["fine-tune", "ft-sam", "clp"])
def test_torchscript_repairs_users_reported_run_through_the_cli(formats, tmp_path, capsys, name):
    """Users saw a traceback here: a non-leaf tensor (fine-tune, ft-sam), no `num_classes` (clp).
    Now B' is saved as TorchScript, loads back and answers; it is B fine-tuned, or B pruned."""
    source, model, data = formats["torchscript"]
    files = _data_files(tmp_path, data)
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            source.path,
            "--trust-model-code",
            "--repair",
            name,
            *_options(cheap_settings(name, model)),
            "--clean-valid",
            files["clean_valid"],
            "--clean-test",
            files["clean_valid"],
            "--poisoned-test",
            files["poisoned_valid"],
            "--max-drop",
            "100",  # B' is delivered whatever it costs: the path that crashed
            "--out",
            out,
            "--force",
            "--quiet",
        ],
    )
    assert code == 0, err
    assert "Traceback" not in err
    doc = json.loads((out / "results.json").read_text())
    repaired = load_model(str(out / doc["files"]["repaired"]), trust_code=True)
    assert isinstance(repaired, torch.jit.ScriptModule)
    assert _finite_outputs(repaired, data["clean_valid"].x)
    changed = [k for k, v in repaired.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    if name == "clp":
        assert sum(len(c) for c in doc["models"][0]["pruned"].values()) > 0 and changed
    else:
        assert len(changed) > 1  # fine-tuned: every layer moved, not one


def test_torchscript_refusal_through_the_cli_is_one_line(formats, tmp_path, capsys):
    source, model, data = formats["torchscript"]
    files = _data_files(tmp_path, data)
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            source.path,
            "--trust-model-code",
            "--repair",
            "rnp",
            *_options(cheap_settings("rnp", model)),
            "--clean-valid",
            files["clean_valid"],
            "--out",
            tmp_path / "out",
            "--force",
        ],
    )
    assert_one_line_error(code, err, "the rnp repair cannot run on a TorchScript model")
    assert not (tmp_path / "out").exists()


def test_onnx_is_refused_for_every_repair(formats, tmp_path, capsys):
    """goodnet writes ONNX but never reads it: one line, whatever the repair, under any name."""
    from user_models import tiny_resnet

    model = tiny_resnet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *SHAPE),), str(tmp_path / "b.onnx"), dynamo=False)
    (tmp_path / "b_onnx.pt").write_bytes((tmp_path / "b.onnx").read_bytes())
    for path in (tmp_path / "b.onnx", tmp_path / "b_onnx.pt"):
        with pytest.raises(ModelError, match="holds an ONNX model"):
            load_model(str(path), trust_code=True)
    files = _data_files(tmp_path, formats["factory"][2])
    for name in repair_names():
        code, _, err = run_cli(
            capsys,
            [
                "defend",
                "--model",
                tmp_path / "b.onnx",
                "--repair",
                name,
                *_options(cheap_settings(name)),
                "--clean-valid",
                files["clean_valid"],
                "--poisoned-valid",
                files["poisoned_valid"],
                "--out",
                tmp_path / f"out-{name}",
                "--force",
            ],
        )
        assert_one_line_error(code, err, "holds an ONNX model")
