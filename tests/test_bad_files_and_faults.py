"""Bad input and faults, table-driven: every case is one CLI call that must end in one
`goodnet: error:` line naming the problem, exit status 2, no traceback, and nothing written.

The cases are grouped by class (model files, data files, numbers and options, model headers,
Keras descriptions, images, outputs); each class is what a hostile user tried, and more of the
same class must fail the same way. The BadNet and data are the demo's (shipped weights: no training).
"""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli_captured
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file


class Payload:  # pickles as a call to print: loading it must never run it
    def __reduce__(self):
        return (print, ("this must never run",))


def _rewrite_header(src, dst, change):
    with safe_open(src, framework="pt") as f:
        meta = json.loads(f.metadata()["goodnet"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    save_file(tensors, dst, metadata={"goodnet": json.dumps(meta)})
    return dst


def _keras(path, config):
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.create_group("model_weights")
    return path


def _sequential(*layers):
    first = {"class_name": "InputLayer", "config": {"name": "input", "batch_input_shape": [None, 28, 28, 1]}}
    return {"class_name": "Sequential", "config": {"name": "m", "layers": [first, *layers]}}


def _conv(kernel, name="c"):
    return {
        "class_name": "Conv2D",
        "config": {"name": name, "filters": 2, "kernel_size": kernel, "activation": "relu", "padding": "valid"},
    }


def _h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, label
    return path


@pytest.fixture(scope="module")
def files(demo_run, tmp_path_factory):
    """Every bad file once, beside the demo's good ones."""
    d = tmp_path_factory.mktemp("hostile")
    inputs, model = demo_run["inputs"], demo_run["model"]
    goodnet = os.path.join(demo_run["out"], "models", "goodnet_x2_crossing.safetensors")
    x = np.zeros((4, 1, 28, 28), dtype=np.float32)
    p = {
        "model": model,
        "goodnet": goodnet,
        "clean": inputs["clean_valid"],
        "poisoned": inputs["poisoned_valid"],
        "dir": str(d),
        "out": str(d / "out"),
    }

    def put(name, data: bytes):
        (d / name).write_bytes(data)
        return str(d / name)

    blob = open(model, "rb").read()
    p["cut_model"] = put("cut.safetensors", blob[: len(blob) // 2])
    p["empty_model"] = put("empty.safetensors", b"")
    p["text_h5"] = put("text.h5", b"not an hdf5 file at all\n")
    p["pickle_pt"] = put("model.pt", b"\x80\x04pickle")
    torch.save({"w": Payload()}, d / "evil.pt")
    p["evil_pt"] = str(d / "evil.pt")
    p["onnx"] = put("model.onnx", b"onnx")
    from safetensors.numpy import save_file as save_np

    save_np({"w": np.zeros(2, dtype=np.float32)}, str(d / "foreign.safetensors"))
    p["foreign"] = str(d / "foreign.safetensors")
    (d / "a_dir.safetensors").mkdir()
    p["model_dir"] = str(d / "a_dir.safetensors")
    (d / "a_dir.h5").mkdir()
    p["data_dir"] = str(d / "a_dir.h5")

    # data files
    p["d3"] = _h5(d / "d3.h5", np.zeros((4, 28, 28)), np.zeros(4))
    p["wide"] = _h5(d / "wide.h5", np.zeros((4, 3, 28, 28)), np.zeros(4))
    p["count"] = _h5(d / "count.h5", x, np.zeros(3))
    p["empty_data"] = _h5(d / "none.h5", np.zeros((0, 1, 28, 28)), np.zeros(0))
    with h5py.File(d / "nolabel.h5", "w") as f:
        f["data"] = x
    p["nolabel"] = str(d / "nolabel.h5")
    with h5py.File(d / "group.h5", "w") as f:
        f["data"] = x
        f.create_group("label")
    p["label_group"] = str(d / "group.h5")
    nan = x.copy()
    nan[1, 0, 2, 2] = np.nan
    p["nan"] = _h5(d / "nan.h5", nan, np.zeros(4))
    inf = x.copy()
    inf[0, 0, 0, 0] = np.inf
    p["inf"] = _h5(d / "inf.h5", inf, np.zeros(4))
    p["label_big"] = _h5(d / "big.h5", x, np.array([0, 1, 2, 10]))
    p["label_frac"] = _h5(d / "frac.h5", x, np.array([0, 1, 2.5, 1]))
    p["label_neg"] = _h5(d / "neg.h5", x, np.array([0, -1, 2, 1]))
    p["label_huge"] = _h5(d / "huge.h5", x, np.array([0, 1e20, 2, 1]))
    p["label_bool"] = _h5(d / "bool.h5", x, np.array([True, False, True, False]))
    p["label_nan"] = _h5(d / "lnan.h5", x, np.array([0, np.nan, 1, 1]))
    p["complex"] = _h5(d / "complex.h5", x.astype(np.complex64), np.zeros(4))
    with h5py.File(d / "declared.h5", "w") as f:  # a tiny file declaring 200 million images
        f.create_dataset("data", shape=(200_000_000, 1, 28, 28), dtype="uint8")
        f.create_dataset("label", shape=(200_000_000,), dtype="int64")
    p["declared"] = str(d / "declared.h5")
    p["text_npz"] = put("text.npz", b"x,y\n1,2\n")
    p["zip_header_npz"] = put("bad.npz", b"PK\x03\x04")  # a zip's magic and nothing else
    np.savez(d / "pickled.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    p["pickled_npz"] = str(d / "pickled.npz")
    np.savez(d / "noy.npz", x=x)
    p["noy_npz"] = str(d / "noy.npz")
    # few images, all right: refused for resolution, not for chance
    with h5py.File(inputs["clean_valid"], "r") as f:
        few_x, few_y = f["data"][:12], f["label"][:12]
    p["few"] = _h5(d / "few.h5", few_x, few_y)

    # model headers
    def divisor(v):
        return lambda m: m["config"].__setitem__("input_divisor", v)

    p["div0"] = _rewrite_header(model, str(d / "div0.safetensors"), divisor(0))
    p["divneg"] = _rewrite_header(model, str(d / "divneg.safetensors"), divisor(-255))
    p["divnan"] = _rewrite_header(model, str(d / "divnan.safetensors"), divisor(float("nan")))
    p["divtext"] = _rewrite_header(model, str(d / "divtext.safetensors"), divisor("255"))
    p["classes0"] = _rewrite_header(
        model, str(d / "classes0.safetensors"), lambda m: m["config"].__setitem__("num_classes", 0)
    )
    p["shape_bad"] = _rewrite_header(
        model, str(d / "shape.safetensors"), lambda m: m["config"].__setitem__("input_shape", [1, -28, 28])
    )
    p["width_absurd"] = _rewrite_header(
        model, str(d / "width.safetensors"), lambda m: m["config"].__setitem__("width", 10**7)
    )
    p["arch_not_text"] = _rewrite_header(model, str(d / "archlist.safetensors"), lambda m: m.__setitem__("arch", []))
    p["arch_unknown"] = _rewrite_header(model, str(d / "arch.safetensors"), lambda m: m.__setitem__("arch", "vgg99"))
    p["kind_unknown"] = _rewrite_header(model, str(d / "kind.safetensors"), lambda m: m.__setitem__("kind", "zip"))
    p["range_bad"] = _rewrite_header(
        model, str(d / "range.safetensors"), lambda m: m.__setitem__("input_range", [255, 0])
    )

    def pruned(v):
        return lambda m: m.__setitem__("pruned", v)

    p["pruned_neg"] = _rewrite_header(goodnet, str(d / "pneg.safetensors"), pruned([-1, 2]))
    p["pruned_bool"] = _rewrite_header(goodnet, str(d / "pbool.safetensors"), pruned([True, 2]))
    p["pruned_dup"] = _rewrite_header(goodnet, str(d / "pdup.safetensors"), pruned([3, 3]))
    p["pruned_range"] = _rewrite_header(goodnet, str(d / "prange.safetensors"), pruned([0, 10**6]))
    p["pruned_layer"] = _rewrite_header(
        goodnet, str(d / "player.safetensors"), lambda m: m.__setitem__("layer", "fc_1")
    )

    # Keras descriptions
    p["k_layers_text"] = _keras(str(d / "k1.h5"), {"class_name": "Sequential", "config": {"layers": "conv"}})
    p["k_neg_kernel"] = _keras(str(d / "k2.h5"), _sequential(_conv([-1, 3])))
    p["k_bool_kernel"] = _keras(str(d / "k3.h5"), _sequential(_conv(True)))
    p["k_huge_kernel"] = _keras(str(d / "k4.h5"), _sequential(_conv([10**9, 3])))
    p["k_lambda"] = _keras(
        str(d / "k5.h5"),
        _sequential(
            {"class_name": "Lambda", "config": {"name": "l", "function": ["gANjYnVpbHRpbnMKcHJpbnQKcQAu", None, None]}}
        ),
    )
    conv = _conv([3, 3])
    conv["config"]["filters"] = 10**9
    p["k_huge_filters"] = _keras(
        str(d / "k8.h5"), _sequential(conv, {"class_name": "Flatten", "config": {"name": "f"}})
    )
    p["k_class"] = _keras(str(d / "k6.h5"), {"class_name": "Pipeline", "config": {}})
    p["k_not_json"] = str(d / "k7.h5")
    with h5py.File(p["k_not_json"], "w") as f:
        f.attrs["model_config"] = "{not json"

    # images
    Image.fromarray(np.zeros((8, 8), dtype=np.float32), mode="F").save(d / "float.tiff")
    p["img_float"] = str(d / "float.tiff")
    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8), mode="RGBA").save(d / "rgba.png")
    p["img_rgba"] = str(d / "rgba.png")
    p["img_text"] = put("text.png", b"this is not a png")
    (d / "img_dir.png").mkdir()
    p["img_dir"] = str(d / "img_dir.png")
    Image.fromarray(np.zeros((120, 120), dtype=np.uint8)).save(d / "big.png")
    p["img_big"] = str(d / "big.png")
    Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(d / "grey.png")
    p["img_28"] = str(d / "grey.png")

    # outputs
    (d / "unrelated").mkdir()
    (d / "unrelated" / "thesis.tex").write_text("precious")
    p["unrelated"] = str(d / "unrelated")
    p["a_file"] = put("a_file.txt", b"text")
    (d / "taken").mkdir()
    p["taken"] = str(d / "taken")
    p["repaired"] = os.path.join(
        demo_run["out"],
        "models",
        next(
            n
            for n in sorted(os.listdir(os.path.join(demo_run["out"], "models")))
            if n.startswith("repaired_") and n.endswith(".safetensors")
        ),
    )
    return p


def _defend(model="{model}", clean="{clean}", *extra):
    return ["defend", "--model", model, "--clean-valid", clean, "--out", "{out}", "--quiet", *extra]


def _eval(model="{model}", clean="{clean}", poisoned="{poisoned}"):
    return ["eval", clean, poisoned, model]


# (id, argv, message fragment); every one must exit 2 with that fragment on one line
CASES = [
    # model files
    ("model-missing", _defend("{dir}/absent.safetensors"), "no such file"),
    ("model-directory", _defend("{model_dir}"), "is a directory, not a model file"),
    ("model-truncated", _defend("{cut_model}"), "not a readable safetensors"),
    ("model-empty", _defend("{empty_model}"), "not a readable safetensors"),
    ("model-text-as-h5", _defend("{text_h5}"), "not a readable HDF5"),
    ("model-pickle-pt", _defend("{pickle_pt}"), "pass --factory"),
    (
        "model-pickle-pt-factory",
        _defend("{evil_pt}", "{clean}", "--factory", "user_models:tiny_resnet"),
        "holds pickled Python objects",
    ),
    ("model-unknown-suffix", _defend("{onnx}"), "unknown model format"),
    ("model-foreign-safetensors", _defend("{foreign}"), "without a goodnet header"),
    ("model-arch-on-ours", _defend("{model}", "{clean}", "--arch", "deepid"), "--arch goes with a Keras"),
    (
        "model-factory-on-keras",
        _defend("{k_neg_kernel}", "{clean}", "--factory", "os:getcwd"),
        "--factory goes with a PyTorch",
    ),
    ("model-goodnet-as-b", _defend("{goodnet}"), "is a GoodNet"),
    ("model-factory-on-ours", _eval("{model}") + ["--factory", "user_models:tiny_resnet"], "drop --factory"),
    ("eval-model-directory", _eval("{model_dir}"), "is a directory, not a model file"),
    # data files
    ("data-missing", _defend("{model}", "{dir}/absent.h5"), "no such file"),
    ("data-directory", _defend("{model}", "{data_dir}"), "a folder with no class sub-folders"),
    ("data-3d", _defend("{model}", "{d3}"), "expected 4 dimensions"),
    ("data-wrong-size", _defend("{model}", "{wide}"), "the model takes 1x28x28"),
    ("data-count-mismatch", _defend("{model}", "{count}"), "4 images but 3 labels"),
    ("data-no-images", _defend("{model}", "{empty_data}"), "contains no images"),
    ("data-no-label", _defend("{model}", "{nolabel}"), "no 'label' dataset"),
    ("data-label-group", _defend("{model}", "{label_group}"), "no 'label' dataset"),
    ("data-nan", _defend("{model}", "{nan}"), "NaN or infinite"),
    ("data-inf", _defend("{model}", "{inf}"), "NaN or infinite"),
    ("data-label-out-of-range", _defend("{model}", "{label_big}"), "label 10 is out of range"),
    ("data-label-fraction", _defend("{model}", "{label_frac}"), "whole numbers"),
    ("data-label-negative", _defend("{model}", "{label_neg}"), "negative label -1"),
    ("data-label-huge", _defend("{model}", "{label_huge}"), "label 1e+20 is too large"),
    ("data-label-bool", _defend("{model}", "{label_bool}"), "labels have dtype bool"),
    ("data-label-nan", _defend("{model}", "{label_nan}"), "whole numbers"),
    ("data-complex", _defend("{model}", "{complex}"), "expected real numbers"),
    ("data-declares-too-much", _defend("{model}", "{declared}"), "more than the"),
    ("data-text-npz", _defend("{model}", "{text_npz}"), "not a .npz file"),
    ("data-pickled-npz", _defend("{model}", "{pickled_npz}"), "without pickle"),
    ("data-npz-truncated-zip", _defend("{model}", "{zip_header_npz}"), "not a readable .npz"),
    ("data-npz-no-y", _defend("{model}", "{noy_npz}"), "no 'y' array"),
    ("data-too-few", _defend("{model}", "{few}"), "give at least 50"),
    ("data-unknown-suffix", _defend("{model}", "{a_file}"), "unknown data format"),
    ("eval-poisoned-missing", _eval(poisoned="{dir}/absent.h5"), "no such file"),
    # numbers and options
    ("scale-zero", _defend("{model}", "{clean}", "--input-scale", "0"), "must be a positive number"),
    ("scale-negative", _defend("{model}", "{clean}", "--input-scale", "-1"), "must be a positive number"),
    ("scale-nan", _defend("{model}", "{clean}", "--input-scale", "nan"), "must be a positive number"),
    ("scale-overflow", _defend("{model}", "{clean}", "--input-scale", "1e-40"), "overflow"),
    ("scale-wrong-range", _defend("{model}", "{clean}", "--input-scale", "255"), "trained on"),
    ("max-drop-negative", _defend("{model}", "{clean}", "--max-drop", "-1"), "--max-drop"),
    ("max-drop-over-100", _defend("{model}", "{clean}", "--max-drop", "101"), "--max-drop"),
    ("holdout-zero", _defend("{model}", "{clean}", "--holdout", "0"), "--holdout"),
    ("holdout-one", _defend("{model}", "{clean}", "--holdout", "1"), "--holdout"),
    ("repair-unknown", _defend("{model}", "{clean}", "--repair", "magic"), "invalid choice"),
    ("option-unknown", _defend("{model}", "{clean}", "--bogus"), "unrecognized arguments"),
    ("number-not-a-number", _defend("{model}", "{clean}", "--max-drop", "two"), "--max-drop"),
    (
        "setting-not-taken",
        _defend("{model}", "{clean}", "--repair", "rnp", "--thresholds", "2"),
        "does not take --thresholds",
    ),
    ("setting-epochs-zero", _defend("{model}", "{clean}", "--repair", "fine-tune", "--epochs", "0"), "epochs"),
    ("setting-lr-zero", _defend("{model}", "{clean}", "--repair", "fine-tune", "--lr", "0"), "lr"),
    ("channels-empty", _defend("{model}", "{clean}", "--channels", ""), "channels"),
    ("channels-negative", _defend("{model}", "{clean}", "--channels", "-1"), "channels"),
    ("channels-twice", _defend("{model}", "{clean}", "--channels", "1,1"), "lists a channel twice"),
    ("channels-huge", _defend("{model}", "{clean}", "--channels", "99999999999999999999999"), "too large"),
    ("layer-unknown", _defend("{model}", "{clean}", "--layer", "conv_9"), "no layer named 'conv_9'"),
    ("layer-not-conv", _defend("{model}", "{clean}", "--layer", "fc_1"), "not a Conv2d"),
    ("thresholds-zero", _defend("{model}", "{clean}", "--thresholds", "0"), "thresholds"),
    ("guard-option-on-prune", _defend("{model}", "{clean}", "--max-drop", "5"), "does not use"),
    ("guard-option-on-channels", _defend("{model}", "{clean}", "--channels", "1", "--holdout", "0.3"), "does not use"),
    ("oracle-without-poisoned", _defend("{model}", "{clean}", "--repair", "attack-aware"), "poisoned"),
    # model headers (data, never code)
    ("header-divisor-zero", _defend("{div0}"), "input_divisor must be a finite positive"),
    ("header-divisor-negative", _defend("{divneg}"), "input_divisor must be a finite positive"),
    ("header-divisor-nan", _defend("{divnan}"), "input_divisor must be a finite positive"),
    ("header-divisor-text", _defend("{divtext}"), "input_divisor must be a finite positive"),
    ("header-classes-zero", _defend("{classes0}"), "num_classes must be"),
    ("header-shape-negative", _defend("{shape_bad}"), "input_shape must be"),
    ("header-arch-unknown", _defend("{arch_unknown}"), "unknown architecture 'vgg99'"),
    ("header-arch-not-text", _defend("{arch_not_text}"), "malformed goodnet header"),
    ("header-width-absurd", _defend("{width_absurd}"), "expects (10000000,"),
    ("header-kind-unknown", _defend("{kind_unknown}"), "unknown model kind"),
    ("header-range-reversed", _defend("{range_bad}"), "malformed input_range"),
    ("header-pruned-negative", _eval("{pruned_neg}"), "prunes channel -1"),
    ("header-pruned-bool", _eval("{pruned_bool}"), "malformed GoodNet header"),
    ("header-pruned-twice", _eval("{pruned_dup}"), "lists a pruned channel twice"),
    ("header-pruned-out-of-range", _eval("{pruned_range}"), "prunes channel 1000000"),
    ("header-pruned-layer-not-conv", _eval("{pruned_layer}"), "not a conv layer"),
    # Keras descriptions
    ("keras-layers-text", _eval("{k_layers_text}"), "malformed model_config"),
    ("keras-negative-kernel", _eval("{k_neg_kernel}"), "cannot read kernel_size"),
    ("keras-bool-kernel", _eval("{k_bool_kernel}"), "cannot read kernel_size"),
    ("keras-huge-kernel", _eval("{k_huge_kernel}"), "cannot read kernel_size"),
    ("keras-huge-filters", _eval("{k_huge_filters}"), "GiB of weights, more than the"),
    ("keras-lambda", _eval("{k_lambda}"), "Lambda"),
    ("keras-unknown-class", _eval("{k_class}"), "is not supported"),
    ("keras-not-json", _eval("{k_not_json}"), "not a Keras model description"),
    # images
    ("image-float", ["classify", "{model}", "{img_float}"], "cannot be read faithfully"),
    ("image-rgba", ["classify", "{model}", "{img_rgba}"], "cannot be read faithfully"),
    ("image-text", ["classify", "{model}", "{img_text}"], "not a readable image"),
    ("image-directory", ["classify", "{model}", "{img_dir}"], "is a directory, not an image"),
    ("image-missing", ["classify", "{model}", "{dir}/absent.png"], "no such file"),
    ("image-scale-overflow", ["classify", "{model}", "{img_28}", "--input-scale", "1e-40"], "overflow"),
    # outputs
    (
        "out-unrelated-directory",
        ["defend", "--model", "{model}", "--clean-valid", "{clean}", "--out", "{unrelated}", "--quiet"],
        "not a goodnet output directory",
    ),
    (
        "out-is-a-file",
        ["defend", "--model", "{model}", "--clean-valid", "{clean}", "--out", "{a_file}", "--quiet"],
        "exists and is not a directory",
    ),
    ("export-onto-directory", ["export", "{repaired}", "--to", "keras", "--out", "{taken}"], "is a directory"),
    ("export-missing-folder", ["export", "{repaired}", "--to", "keras", "--out", "{dir}/no/m.h5"], "does not exist"),
    ("export-goodnet-to-keras", ["export", "{goodnet}", "--to", "keras", "--out", "{dir}/g.h5"], "no Keras form"),
]


@pytest.mark.parametrize("case_id, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(files, case_id, argv, fragment, capsys):
    before = set(os.listdir(files["dir"]))
    code, captured = run_cli_captured(capsys, [a.format(**files) for a in argv])
    assert_one_line_error(code, captured.err, fragment)
    assert "Traceback" not in captured.err and "weights_only=False" not in captured.err
    assert "this must never run" not in captured.out
    assert set(os.listdir(files["dir"])) == before, "something was left behind"
    assert os.listdir(files["unrelated"]) == ["thesis.tex"] and os.listdir(files["taken"]) == []


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


def test_a_16_bit_png_is_scaled_by_bit_depth_not_clipped(files, tmp_path, capsys):
    with h5py.File(files["clean"], "r") as f:
        digits = f["data"][:6, 0]
    eight, sixteen = [], []
    for i, digit in enumerate(digits):
        level = np.clip(np.round(digit), 0, 255).astype(np.uint8)
        Image.fromarray(level).save(tmp_path / f"d{i}_8.png")
        Image.fromarray(level.astype(np.uint16) * 257).save(tmp_path / f"d{i}_16.png")  # same grey, 16 bits
        eight.append(str(tmp_path / f"d{i}_8.png"))
        sixteen.append(str(tmp_path / f"d{i}_16.png"))
    code, out8 = run_cli_captured(capsys, ["classify", files["model"], *eight])
    assert code == 0, out8.err
    code, out16 = run_cli_captured(capsys, ["classify", files["model"], *sixteen])
    assert code == 0, out16.err
    labels = lambda out: [line.split()[-1] for line in out.out.splitlines()]  # noqa: E731
    assert labels(out16) == labels(out8)
    assert len(set(labels(out8))) > 1  # not all sent to one class, as a clipped 16-bit image was


def test_an_image_past_the_pixel_limit_is_refused(files, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 120x120 image is past twice this
    code, captured = run_cli_captured(capsys, ["classify", files["model"], files["img_big"]])
    assert code == 2 and "too large to read safely" in captured.err and captured.err.count("\n") == 1


def test_relative_budgets_need_a_model_that_is_right_somewhere(files, tmp_path, capsys):
    with h5py.File(files["clean"], "r") as f:
        x = f["data"][:100]
    pred = torch.from_numpy(x)
    from goodnet.inference import predict
    from goodnet.io.model_files import load_model

    wrong = (predict(load_model(files["model"]), pred.numpy()) + 1) % 10  # labels B never gives
    bad = _h5(tmp_path / "wrong.h5", x, wrong)
    code, captured = run_cli_captured(
        capsys,
        [
            "defend",
            "--model",
            files["model"],
            "--clean-valid",
            str(bad),
            "--relative",
            "--force",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
    )
    assert code == 2 and "--relative measures drops" in captured.err, captured.err
    assert not (tmp_path / "out").exists()
