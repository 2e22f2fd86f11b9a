"""The public API (what `goodnet` exports) refuses bad arguments as the CLI refuses bad input: a
GoodnetError subclass with a one-line message, never a plain TypeError/ValueError/AttributeError,
and never nonsense accepted silently. Paths may be str or os.PathLike, and a refused call leaves
its output directory free for the next call in the same process."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from torch import nn

import goodnet
from goodnet import (
    DataError,
    GoodnetError,
    ImageSet,
    ModelError,
    ModelSource,
    OutputError,
    SettingsError,
    build_repair,
    defend_files,
    evaluate_files,
    load_images,
    run_repair,
    save_images,
)
from goodnet.io import output_dir
from goodnet.models import build_goodnet
from goodnet.scan import scan_files

N, CLASSES, SHAPE = 60, 3, (1, 8, 8)


def _images(x=None, y=None, name="mem"):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (N, *SHAPE)).astype(np.float32) if x is None else x
    y = rng.integers(0, CLASSES, N) if y is None else y
    return ImageSet(x, y, name)


def _with(**changes):
    """The in-memory clean set with one array changed."""
    good = _images()
    x, y = changes.get("x", good.x).copy(), changes.get("y", good.y).copy()
    for (array, index), value in changes.get("set", {}).items():
        (x if array == "x" else y)[index] = value
    return ImageSet(x, y, "mem")


@pytest.fixture
def c(tmp_path):
    """What the cases use: an untrained model of the data's shape, good in-memory data, a folder."""
    model = goodnet.build_model("small_cnn", num_classes=CLASSES, input_shape=SHAPE)
    return SimpleNamespace(
        model=model,
        clean={"clean_valid": _images()},
        tmp=tmp_path,
        out=str(tmp_path / "out"),
        missing=str(tmp_path / "missing.h5"),
    )


def _repair(c, **kw):
    return run_repair(c.model, "prune", c.clean, **kw)


CASES = [
    # load_images / save_images
    (
        "load-images-none",
        lambda c: load_images(None),
        DataError,
        "path must be a file path (str or os.PathLike), not None",
    ),
    ("load-images-int", lambda c: load_images(3), DataError, "path must be a file path"),
    ("load-images-bytes", lambda c: load_images(b"data.h5"), DataError, "not b'data.h5'"),
    ("load-images-empty", lambda c: load_images(""), DataError, "not an empty string"),
    (
        "load-images-scale-negative",
        lambda c: load_images(c.missing, -1),
        DataError,
        "input scale must be a positive number, got -1",
    ),
    ("load-images-scale-text", lambda c: load_images(c.missing, "255"), DataError, "got '255'"),
    ("load-images-scale-nan", lambda c: load_images(c.missing, float("nan")), DataError, "got nan"),
    ("load-images-name-int", lambda c: load_images(c.missing, name=5), DataError, "name must be text or None"),
    ("load-images-missing", lambda c: load_images(c.missing), DataError, "no such file"),
    ("save-images-path-none", lambda c: save_images(None, _images()), OutputError, "path must be a file path"),
    (
        "save-images-not-imageset",
        lambda c: save_images(c.tmp / "d.h5", (_images().x, _images().y)),
        DataError,
        "images must be an ImageSet",
    ),
    (
        "save-images-float-labels",
        lambda c: save_images(c.tmp / "d.h5", _with(set={("y", 3): 2.5}, y=np.zeros(N))),
        DataError,
        "labels must be whole numbers",
    ),
    ("save-images-no-folder", lambda c: save_images(c.tmp / "no" / "d.h5", _images()), OutputError, "cannot write"),
    # run_repair: the model and the repair
    (
        "run-repair-model-path",
        lambda c: run_repair("b.safetensors", "prune", c.clean),
        ModelError,
        "model must be a torch.nn.Module",
    ),
    (
        "run-repair-model-plain-module",
        lambda c: run_repair(nn.Linear(2, 2), "prune", c.clean),
        ModelError,
        "does not say its input_shape and num_classes",
    ),
    (
        "run-repair-model-goodnet",
        lambda c: run_repair(build_goodnet(c.model, c.model, None), "prune", c.clean),
        ModelError,
        "is a GoodNet; this needs the backdoored model B",
    ),
    (
        "run-repair-unknown-name",
        lambda c: run_repair(c.model, "no-such-repair", c.clean),
        SettingsError,
        "unknown repair 'no-such-repair' (known: prune, ",
    ),
    (
        "run-repair-repair-int",
        lambda c: run_repair(c.model, 3, c.clean),
        SettingsError,
        "repair must be a Repair or a repair name (prune, ",
    ),
    (
        "run-repair-negative-seed",
        lambda c: run_repair(c.model, build_repair("fine-tune", {"seed": -1}), c.clean),
        SettingsError,
        "fine-tune: seed must be an integer from 0 to 9223372036854775807, not -1",
    ),
    # run_repair: the data, held to the same checks as data files
    (
        "run-repair-data-list",
        lambda c: run_repair(c.model, "prune", [_images()]),
        DataError,
        "data must be a dict of role -> ImageSet",
    ),
    (
        "run-repair-unknown-role",
        lambda c: run_repair(c.model, "prune", {"clean_validation": _images()}),
        SettingsError,
        "unknown data roles ['clean_validation'] (known: clean_valid, poisoned_valid, clean_test, poisoned_test)",
    ),
    (
        "run-repair-arrays-not-imageset",
        lambda c: run_repair(c.model, "prune", {"clean_valid": (_images().x, _images().y)}),
        DataError,
        "clean-valid must be an ImageSet",
    ),
    (
        "run-repair-float-labels",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(y=np.full(N, 2.5))}),
        DataError,
        "clean-valid (mem): labels must be whole numbers",
    ),
    (
        "run-repair-nan-pixels",
        lambda c: run_repair(c.model, "prune", {"clean_test": _with(set={("x", 4): np.nan})}),
        DataError,
        "clean-test (mem): 1 image(s) contain NaN or infinite values",
    ),
    (
        "run-repair-inf-pixels",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(set={("x", 0): np.inf})}),
        DataError,
        "NaN or infinite",
    ),
    (
        "run-repair-negative-label",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(set={("y", 1): -1})}),
        DataError,
        "negative label -1",
    ),
    (
        "run-repair-label-out-of-range",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(set={("y", 1): 7})}),
        DataError,
        "label 7 is out of range for a model with 3 classes",
    ),
    (
        "run-repair-3d-images",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(x=np.zeros((N, 8, 8)))}),
        DataError,
        "expected 4 dimensions (N, C, H, W)",
    ),
    (
        "run-repair-count-mismatch",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(y=np.zeros(N - 1))}),
        DataError,
        "60 images but 59 labels",
    ),
    (
        "run-repair-no-images",
        lambda c: run_repair(c.model, "prune", {"clean_valid": ImageSet(np.zeros((0, *SHAPE)), np.zeros(0), "mem")}),
        DataError,
        "contains no images",
    ),
    (
        "run-repair-text-pixels",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(x=np.full((N, *SHAPE), "a"))}),
        DataError,
        "expected real numbers",
    ),
    (
        "run-repair-wrong-size",
        lambda c: run_repair(c.model, "prune", {"clean_valid": _with(x=np.zeros((N, 3, 8, 8)))}),
        DataError,
        "images are 3x8x8 (C x H x W) but the model takes 1x8x8",
    ),
    # run_repair: the options, in the ranges of the CLI's
    (
        "run-repair-max-drop-negative",
        lambda c: _repair(c, max_drop=-1),
        SettingsError,
        "max_drop must be between 0 and 100 points",
    ),
    ("run-repair-max-drop-over", lambda c: _repair(c, max_drop=101), SettingsError, "not 101"),
    ("run-repair-max-drop-text", lambda c: _repair(c, max_drop="2"), SettingsError, "not '2'"),
    (
        "run-repair-holdout-zero",
        lambda c: _repair(c, holdout=0),
        SettingsError,
        "holdout must be a share between 0 and 1",
    ),
    ("run-repair-holdout-one", lambda c: _repair(c, holdout=1.0), SettingsError, "not 1.0"),
    (
        "run-repair-batch-size-zero",
        lambda c: _repair(c, batch_size=0),
        SettingsError,
        "batch_size must be a positive integer, not 0",
    ),
    ("run-repair-batch-size-float", lambda c: _repair(c, batch_size=2.5), SettingsError, "not 2.5"),
    ("run-repair-force-text", lambda c: _repair(c, force="no"), SettingsError, "force must be True or False, not 'no'"),
    (
        "run-repair-strip-text",
        lambda c: _repair(c, strip="yes"),
        SettingsError,
        "strip must be a StripSettings or None",
    ),
    # defend_files: all checked before the output is claimed
    (
        "defend-source-none",
        lambda c: defend_files(None, {}, c.out, "prune"),
        ModelError,
        "source must be a model file path (str or os.PathLike) or a ModelSource, not None",
    ),
    (
        "defend-source-path-int",
        lambda c: defend_files(ModelSource(5), {}, c.out, "prune"),
        ModelError,
        "source.path must be a file path",
    ),
    (
        "defend-data-paths-list",
        lambda c: defend_files("b.safetensors", [c.missing], c.out, "prune"),
        DataError,
        "data_paths must be a dict of role -> file path",
    ),
    (
        "defend-unknown-role",
        lambda c: defend_files("b.safetensors", {"clean": c.missing}, c.out, "prune"),
        SettingsError,
        "unknown data roles ['clean']",
    ),
    (
        "defend-data-path-int",
        lambda c: defend_files("b.safetensors", {"clean_valid": 5}, c.out, "prune"),
        DataError,
        "data_paths['clean_valid'] must be a file path (str or os.PathLike) or None, not 5",
    ),
    (
        "defend-out-none",
        lambda c: defend_files("b.safetensors", {}, None, "prune"),
        OutputError,
        "out_dir must be a directory path (str or os.PathLike), not None",
    ),
    (
        "defend-unknown-repair",
        lambda c: defend_files("b.safetensors", {}, c.out, "prunes"),
        SettingsError,
        "unknown repair 'prunes'",
    ),
    (
        "defend-max-drop-negative",
        lambda c: defend_files("b.safetensors", {}, c.out, "prune", max_drop=-1),
        SettingsError,
        "max_drop must be between 0 and 100 points",
    ),
    (
        "defend-holdout-over",
        lambda c: defend_files("b.safetensors", {}, c.out, "prune", holdout=1.5),
        SettingsError,
        "holdout must be a share between 0 and 1 (both excluded), not 1.5",
    ),
    (
        "defend-input-scale-zero",
        lambda c: defend_files("b.safetensors", {}, c.out, "prune", input_scale=0),
        DataError,
        "input scale must be a positive number, got 0",
    ),
    (
        "defend-onnx-text",
        lambda c: defend_files("b.safetensors", {}, c.out, "prune", onnx="no"),
        SettingsError,
        "onnx must be True or False",
    ),
    (
        "defend-scan-without-clean",
        lambda c: defend_files("b.safetensors", {"clean_test": c.missing}, c.out, "prune", scan=True),
        SettingsError,
        "--scan reverses triggers on clean validation data: give --clean-valid",
    ),
    (
        "defend-scan-schedule",
        lambda c: defend_files(
            "b.safetensors", {"clean_valid": c.missing}, c.out, "prune", scan=True, scan_schedule="fast"
        ),
        SettingsError,
        "schedule must be one of reference, goodnet, not 'fast'",
    ),
    # evaluate_files
    (
        "evaluate-clean-none",
        lambda c: evaluate_files(None, c.missing, "b.safetensors"),
        DataError,
        "clean_path must be a file path",
    ),
    ("evaluate-source-int", lambda c: evaluate_files(c.missing, c.missing, 7), ModelError, "source must be a model"),
    (
        "evaluate-batch-size",
        lambda c: evaluate_files(c.missing, c.missing, "b.safetensors", batch_size=-2),
        SettingsError,
        "batch_size must be a positive integer, not -2",
    ),
    (
        "evaluate-input-scale",
        lambda c: evaluate_files(c.missing, c.missing, "b.safetensors", input_scale=True),
        DataError,
        "input scale must be a positive number, got True",
    ),
    # scan_files
    (
        "scan-seed-negative",
        lambda c: scan_files("b.safetensors", c.missing, c.out, seed=-1),
        SettingsError,
        "seed must be an integer from 0 to 9223372036854775807, not -1",
    ),
    (
        "scan-seed-too-large",
        lambda c: scan_files("b.safetensors", c.missing, c.out, seed=2**64),
        SettingsError,
        "seed must be an integer from 0 to 9223372036854775807, not 18446744073709551616",
    ),
    (
        "scan-unknown-setting",
        lambda c: scan_files("b.safetensors", c.missing, c.out, stepz=3),
        SettingsError,
        "unknown setting(s) stepz",
    ),
    (
        "scan-out-int",
        lambda c: scan_files("b.safetensors", c.missing, 3),
        OutputError,
        "out_dir must be a directory path",
    ),
]


@pytest.mark.parametrize("call, error, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_argument_is_one_goodnet_error_line(c, call, error, fragment):
    with pytest.raises(GoodnetError) as caught:
        call(c)
    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message and message, message
    assert fragment in message, message
    assert output_dir._CLAIMS == {}  # nothing refused before (or after) its claim holds an output
    assert not os.path.exists(c.out)


def test_there_are_many_cases():
    assert len(CASES) >= 20 and len({case[0] for case in CASES}) == len(CASES)


def test_a_repair_class_or_name_is_built_with_its_defaults(c):
    from goodnet.repairs import FinePruning
    from goodnet.repairs.registry import checked_repair

    assert checked_repair("fine-prune") == FinePruning()
    assert checked_repair(FinePruning) == FinePruning()
    given = FinePruning(seed=3)
    assert checked_repair(given) is given


def test_in_memory_arrays_of_other_number_types_are_taken_as_files_are(c):
    """float64 images and float labels that are whole numbers, as a file may hold them."""
    from goodnet.measure.runner import check_data

    good = _images()
    checked = check_data(
        c.model, {"clean_valid": ImageSet(good.x.astype(np.float64), good.y.astype(np.float64)), "clean_test": None}
    )
    assert list(checked) == ["clean_valid"]
    assert checked["clean_valid"].x.dtype == np.float32 and checked["clean_valid"].y.dtype == np.int64
    np.testing.assert_array_equal(checked["clean_valid"].y, good.y)
    assert check_data(c.model, {"clean_valid": good})["clean_valid"] is good  # nothing copied when nothing changes


def _bad_labels_file(path):
    with h5py.File(path, "w") as f:  # what save_images refuses to write
        f["data"] = np.zeros((4, 1, 28, 28))
        f["label"] = np.array([0, 1, 2.5, 1])
    return path


def test_paths_may_be_pathlib_paths(demo_run, tmp_path):
    inputs = {role: Path(path) for role, path in demo_run["inputs"].items()}
    model = Path(demo_run["model"])
    clean = load_images(inputs["clean_valid"])
    assert clean.name == os.path.basename(demo_run["inputs"]["clean_valid"])
    np.testing.assert_array_equal(clean.x, load_images(str(inputs["clean_valid"])).x)
    save_images(tmp_path / "copy.h5", clean)
    np.testing.assert_array_equal(load_images(tmp_path / "copy.h5").y, clean.y)
    by_path = evaluate_files(inputs["clean_test"], inputs["poisoned_test"], model)
    by_source = evaluate_files(inputs["clean_test"], inputs["poisoned_test"], ModelSource(model))
    assert by_path == by_source == evaluate_files(str(inputs["clean_test"]), str(inputs["poisoned_test"]), str(model))


def test_a_refused_defend_leaves_its_output_free(demo_run, tmp_path):
    """Refused after the output was claimed (the data are read after the claim), the output is free
    again: the next call in this process writes it; str and pathlib paths and a repair's name alike."""
    inputs = {role: Path(path) for role, path in demo_run["inputs"].items()}
    out = tmp_path / "out"
    bad = {**inputs, "clean_valid": _bad_labels_file(tmp_path / "bad.h5")}
    with pytest.raises(DataError, match="labels must be whole numbers"):
        defend_files(Path(demo_run["model"]), bad, out, "prune", progress=False)
    assert output_dir._CLAIMS == {}
    assert not os.path.exists(out) and not os.path.exists(tmp_path / ".out.lock")
    with pytest.raises(ModelError):  # refused later: a model file that is no model
        defend_files(tmp_path / "bad.h5", inputs, out, "prune", progress=False)
    assert output_dir._CLAIMS == {}
    run = defend_files(Path(demo_run["model"]), inputs, out, "prune", progress=False)
    assert output_dir._CLAIMS == {}
    document = json.loads((out / "results.json").read_text())
    assert document == run.document and document["inputs"]["clean_valid"] == str(inputs["clean_valid"])


def test_a_refused_scan_leaves_its_output_free(demo_run, tmp_path):
    out = tmp_path / "scan"
    with pytest.raises(DataError, match="labels must be whole numbers"):
        scan_files(demo_run["model"], _bad_labels_file(tmp_path / "bad.h5"), out, progress=False)
    assert output_dir._CLAIMS == {}
    assert not os.path.exists(out) and not os.path.exists(tmp_path / ".scan.lock")


def test_a_callers_claim_is_left_to_the_caller(demo_run, tmp_path):
    """A caller that claimed the output itself (a batch) keeps its claim after a refusal."""
    out = str(tmp_path / "out")
    output_dir.claim_output(out)
    try:
        with pytest.raises(DataError):
            defend_files(
                demo_run["model"], {"clean_valid": _bad_labels_file(tmp_path / "bad.h5")}, out, "prune", progress=False
            )
        assert os.path.abspath(out) in output_dir._CLAIMS
    finally:
        output_dir.release_output(out)
