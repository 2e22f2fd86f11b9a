"""Numbers out of range and input files of the wrong kind, table-driven: every case is one CLI call
that must end in one `goodnet: error:` line naming the problem, exit status 2, no traceback, and
nothing written.

Numbers: every numeric option of every subcommand is checked when the command line is read, with
its range in the message (seeds, workers and threads, epochs, targets, shares, shapes, scales,
budgets) and so is every number given to a repair setting (too large, NaN or infinite).
Files: model files, data files and images are refused for what they are: missing, a directory, a
named pipe or a device (never opened, so nothing blocks), a symbolic link loop, a link to a missing
file, an ONNX model under a PyTorch name; clean validation data of one class only is named as
such; a path with a newline in it still gives one line. The model and data are the demo's.
"""

import os
import threading

import h5py
import pytest
import torch
from conftest import assert_one_line_error, run_cli_captured

from goodnet.errors import DataError
from goodnet.io.data import check_input_range, load_images
from goodnet.io.file_checks import check_input_file, holds_onnx, input_file_problem, shown_path

BIG = "1" + "0" * 30  # past every integer a library takes


def _h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, label
    return str(path)


@pytest.fixture(scope="module")
def files(demo_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("numbers_and_files")
    inputs, model = demo_run["inputs"], demo_run["model"]
    p = {
        "model": model,
        "clean": inputs["clean_valid"],
        "poisoned": inputs["poisoned_valid"],
        "dir": str(d),
        "out": str(d / "out"),
    }
    for name in ("pipe.safetensors", "pipe.h5", "pipe.png"):
        os.mkfifo(d / name)
        p[name.replace(".", "_")] = str(d / name)
    os.symlink("loop_b.safetensors", d / "loop_a.safetensors")
    os.symlink("loop_a.safetensors", d / "loop_b.safetensors")
    p["model_loop"] = str(d / "loop_a.safetensors")
    os.symlink("loop_b.h5", d / "loop_a.h5")
    os.symlink("loop_a.h5", d / "loop_b.h5")
    p["data_loop"] = str(d / "loop_a.h5")
    os.symlink("gone.safetensors", d / "dangling.safetensors")
    p["model_dangling"] = str(d / "dangling.safetensors")
    os.symlink("gone.h5", d / "dangling.h5")
    p["data_dangling"] = str(d / "dangling.h5")
    os.symlink("gone.png", d / "dangling.png")
    p["image_dangling"] = str(d / "dangling.png")

    # B exported to ONNX (which goodnet writes but does not read), then named as PyTorch files
    from goodnet.io.model_files import load_model
    from goodnet.io.onnx_export import export_onnx

    export_onnx(load_model(model), str(d / "b.onnx"))
    blob = (d / "b.onnx").read_bytes()
    for name in ("b_onnx.pt", "b_onnx.pth", "b_onnx.safetensors"):
        (d / name).write_bytes(blob)
        p[name.replace(".", "_")] = str(d / name)
    p["onnx"] = str(d / "b.onnx")

    with h5py.File(inputs["clean_valid"], "r") as f:
        x, y = f["data"][:], f["label"][:]
    p["one_class"] = _h5(d / "threes.h5", x[y == 3], y[y == 3])
    (d / "new\nline.safetensors").mkdir()
    p["a_file"] = str(d / "a_file.txt")
    (d / "a_file.txt").write_text("text")
    p["manifest"] = str(d / "manifest.csv")
    (d / "manifest.csv").write_text("model\nm.safetensors\n")
    return p


def _defend(*extra, model="{model}", clean="{clean}"):
    return ["defend", "--model", model, "--clean-valid", clean, "--out", "{out}", "--quiet", *extra]


def _fine_tune(*extra):
    return _defend("--repair", "fine-tune", *extra)


def _scan(*extra):
    return ["scan", "--model", "{model}", "--clean-valid", "{clean}", "--out", "{out}", "--quiet", *extra]


def _attack(*extra):
    return ["attack", "--kind", "patch", "--out", "{out}", "--cache-dir", "{dir}/cache", "--quiet", *extra]


def _eval(model="{model}", clean="{clean}", poisoned="{poisoned}", *extra):
    return ["eval", clean, poisoned, model, *extra]


def _compare(*extra):
    return ["compare", "--out", "{out}", "--cache-dir", "{dir}/cache", "--quiet", *extra]


def _batch(*extra):
    return ["batch", "{manifest}", "--out", "{out}", "--quiet", *extra]


def _export(*extra):
    return ["export", "{model}", "--to", "onnx", "--out", "{dir}/e.onnx", *extra]


SEED_RANGE = "must be an integer from 0 to 9223372036854775807"
CORES = "must be an integer from 1 to 1024"

# (id, argv, message fragment); every one must exit 2 with that fragment on one line
CASES = [
    # seeds: what numpy's and torch's generators take
    ("scan-seed-huge", _scan("--seed", "1" + "0" * 23), f"argument --seed: {SEED_RANGE}, not '1000"),
    ("scan-seed-negative", _scan("--seed", "-1"), f"argument --seed: {SEED_RANGE}, not '-1'"),
    ("demo-seed-negative", ["demo", "--out", "{out}", "--seed", "-1"], f"argument --seed: {SEED_RANGE}"),
    ("demo-seed-fraction", ["demo", "--out", "{out}", "--seed", "1.5"], "not '1.5'"),
    ("demo-seed-huge", ["demo", "--out", "{out}", "--seed", BIG], f"argument --seed: {SEED_RANGE}"),
    ("attack-seed-negative", _attack("--seed", "-1"), f"argument --seed: {SEED_RANGE}"),
    ("attack-seed-text", _attack("--seed", "lucky"), "not 'lucky'"),
    # attack's training
    ("attack-epochs-zero", _attack("--epochs", "0"), "argument --epochs: must be an integer from 1 to"),
    ("attack-epochs-huge", _attack("--epochs", BIG), "argument --epochs: must be an integer from 1 to"),
    ("attack-target-ten", _attack("--target", "10"), "target 10 is not a class (0..9)"),
    ("attack-target-negative", _attack("--target", "-1"), f"argument --target: {SEED_RANGE}"),
    ("attack-rate-zero", _attack("--poison-rate", "0"), "argument --poison-rate: must be a share between 0 and 1"),
    ("attack-rate-one", _attack("--poison-rate", "1"), "argument --poison-rate: must be a share between 0 and 1"),
    ("attack-rate-nan", _attack("--poison-rate", "nan"), "argument --poison-rate: must be a share"),
    ("attack-rate-text", _attack("--poison-rate", "ten%"), "argument --poison-rate: not a number: 'ten%'"),
    ("attack-scale-other", _attack("--scale", "2"), "argument --scale: invalid choice"),
    # grids: cells at once and threads per cell
    ("compare-workers-zero", _compare("--workers", "0"), f"argument --workers: {CORES}, not '0'"),
    ("compare-workers-huge", _compare("--workers", BIG), f"argument --workers: {CORES}"),
    ("compare-threads-zero", _compare("--threads", "0"), f"argument --threads: {CORES}"),
    ("compare-threads-too-many", _compare("--threads", "2000"), f"argument --threads: {CORES}, not '2000'"),
    ("batch-workers-negative", _batch("--workers", "-3"), f"argument --workers: {CORES}, not '-3'"),
    ("batch-threads-text", _batch("--threads", "all"), f"argument --threads: {CORES}, not 'all'"),
    ("batch-holdout-one", _batch("--holdout", "1"), "argument --holdout: must be a share between 0 and 1"),
    ("batch-max-drop-nan", _batch("--max-drop", "nan"), "argument --max-drop: must be between 0 and 100"),
    # export's image size
    ("export-shape-two", _export("--input-shape", "1,28"), "argument --input-shape: must be C,H,W"),
    ("export-shape-zero", _export("--input-shape", "1,0,28"), "three integers from 1 to 65536, not '1,0,28'"),
    ("export-shape-text", _export("--input-shape", "one,28,28"), "argument --input-shape: must be C,H,W"),
    ("export-shape-huge", _export("--input-shape", "3,65536,65536"), "values per image, more than the"),
    # pixel scales and budgets
    ("defend-scale-inf", _defend("--input-scale", "inf"), "argument --input-scale: must be a positive number"),
    (
        "eval-scale-negative-zero",
        _eval("{model}", "{clean}", "{poisoned}", "--input-scale", "-0"),
        "must be a positive number, not '-0'",
    ),
    ("classify-scale-nan", ["classify", "{model}", "{a_file}", "--input-scale", "nan"], "must be a positive number"),
    ("scan-scale-zero", _scan("--input-scale", "0"), "argument --input-scale: must be a positive number"),
    ("defend-max-drop-inf", _defend("--max-drop", "inf"), "argument --max-drop: must be between 0 and 100"),
    ("defend-holdout-nan", _defend("--holdout", "nan"), "argument --holdout: must be a share"),
    # repair settings: as given, then in each repair's own range
    ("setting-epochs-huge", _fine_tune("--epochs", BIG), f"--epochs: '{BIG}' is too large"),
    ("setting-epochs-exponent", _fine_tune("--epochs", "1e30"), "--epochs: not an integer: '1e30'"),
    ("setting-epochs-many-digits", _fine_tune("--epochs", "9" * 5000), "is too large"),
    ("setting-lr-nan", _fine_tune("--lr", "nan"), "--lr: must be a finite number, not 'nan'"),
    ("setting-lr-inf", _fine_tune("--lr", "1e999"), "--lr: must be a finite number, not '1e999'"),
    ("setting-thresholds-nan", _defend("--thresholds", "1,nan"), "--thresholds: must be a finite number"),
    ("setting-schedule-huge", _defend("--repair", "rnp", "--unlearn-schedule", "10," + BIG), "is too large"),
    ("setting-channels-inf", _defend("--channels", "inf"), "--channels: not an integer: 'inf'"),
    # model files
    ("model-fifo", _defend(model="{pipe_safetensors}"), "is not a regular file (a named pipe); goodnet reads only"),
    ("model-dev-zero", _eval("/dev/zero"), "'/dev/zero': is not a regular file (a character device)"),
    ("model-symlink-loop", _defend(model="{model_loop}"), "loop_a.safetensors': is a symbolic link loop"),
    ("model-dangling-link", _eval("{model_dangling}"), "is a symbolic link to a missing file 'gone.safetensors'"),
    ("model-onnx-as-pt", _eval("{b_onnx_pt}"), "b_onnx.pt': holds an ONNX model"),
    (
        "model-onnx-as-pth-factory",
        _eval("{b_onnx_pth}", "{clean}", "{poisoned}", "--factory", "user_models:tiny_resnet"),
        "holds an ONNX model",
    ),
    ("model-onnx-as-safetensors", _eval("{b_onnx_safetensors}"), "holds an ONNX model"),
    ("model-onnx", _defend(model="{onnx}"), "holds an ONNX model, which goodnet writes"),
    ("model-under-a-file", _eval("{a_file}/m.safetensors"), "no such file"),
    (
        "model-newline-directory",
        _eval("{dir}/new\nline.safetensors"),
        "new\\nline.safetensors': is a directory, not a model file",
    ),
    ("model-escape-missing", _eval("{dir}/\x1b[2Jgone.safetensors"), "\\x1b[2Jgone.safetensors': no such file"),
    # data files
    ("data-fifo", _defend(clean="{pipe_h5}"), "pipe.h5': is not a regular file (a named pipe)"),
    ("data-dev-zero", _eval("{model}", "/dev/zero"), "is not a regular file (a character device)"),
    ("data-symlink-loop", _defend(clean="{data_loop}"), "is a symbolic link loop"),
    (
        "data-dangling-link",
        _eval("{model}", "{clean}", "{data_dangling}"),
        "is a symbolic link to a missing file 'gone.h5'",
    ),
    ("data-newline-missing", _defend(clean="{dir}/new\nline.h5"), "new\\nline.h5': no such file"),
    ("data-one-class", _defend(clean="{one_class}"), "holds images of one class only (label 3, 100 images)"),
    ("data-one-class-forced", _defend("--force", clean="{one_class}"), "holds images of one class only"),
    # images
    ("image-fifo", ["classify", "{model}", "{pipe_png}"], "is not a regular file (a named pipe)"),
    ("image-dev-null", ["classify", "{model}", "/dev/null"], "is not a regular file (a character device)"),
    ("image-dangling-link", ["classify", "{model}", "{image_dangling}"], "symbolic link to a missing file 'gone.png'"),
    ("image-newline-missing", ["classify", "{model}", "{dir}/new\nline.png"], "new\\nline.png': no such file"),
]


@pytest.mark.parametrize("case_id, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_leaving_nothing(files, case_id, argv, fragment, capsys):
    before = set(os.listdir(files["dir"]))
    code, captured = run_cli_captured(capsys, [a.format(**files) for a in argv])
    assert_one_line_error(code, captured.err, fragment)
    assert "Traceback" not in captured.err
    assert set(os.listdir(files["dir"])) == before, "something was left behind"


def test_there_are_enough_distinct_cases():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def test_a_named_pipe_is_never_opened(files, capsys):
    """A reader opening a pipe waits for a writer that never comes; goodnet must answer at once."""
    argv = ["eval", files["pipe_h5"], files["pipe_h5"], files["pipe_safetensors"]]
    result = {}
    worker = threading.Thread(target=lambda: result.update(code=run_cli_captured(capsys, argv)[0]), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "goodnet blocked on a named pipe"
    assert result["code"] == 2


def test_permission_denied_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.h5"
    path.write_bytes(b"\x89HDF")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as for a file this user may not read
    assert input_file_problem(str(path), "a data file") == "permission denied (goodnet may not read this file)"
    with pytest.raises(DataError, match=r"^'.*locked\.h5': permission denied"):
        check_input_file(str(path), "a data file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_refused_for_permission(files, tmp_path, capsys):
    locked = tmp_path / "locked.h5"
    locked.write_bytes(open(files["clean"], "rb").read())
    locked.chmod(0)
    code, captured = run_cli_captured(capsys, ["eval", str(locked), files["poisoned"], files["model"]])
    assert code == 2 and "permission denied" in captured.err and captured.err.count("\n") == 1


@pytest.mark.parametrize(
    "path, shown",
    [
        ("/data/valid.h5", "'/data/valid.h5'"),
        ("new\nline.h5", "'new\\nline.h5'"),
        ("cr\rtab\t.h5", "'cr\\rtab\\t.h5'"),
        ("\x1b[31mred.h5", "'\\x1b[31mred.h5'"),
        ("sep\u2028arator.h5", "'sep\\u2028arator.h5'"),
    ],
)
def test_shown_path_is_one_quoted_line(path, shown):
    assert shown_path(path) == shown
    assert len(f"goodnet: error: {shown_path(path)}: no such file".splitlines()) == 1


def test_onnx_is_told_by_content_not_by_name(files, tmp_path):
    assert holds_onnx(files["b_onnx_pt"]) and holds_onnx(files["onnx"])
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")  # a zip archive
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02}q\x00.")  # a pickle
    (tmp_path / "short.pt").write_bytes(b"\x08\x08")  # ir_version and nothing more: no graph
    (tmp_path / "cut.pt").write_bytes(open(files["onnx"], "rb").read()[:200])  # the graph cut off
    for name in ("state.pt", "legacy.pt", "short.pt", "cut.pt"):
        assert not holds_onnx(str(tmp_path / name)), name
    for path in (files["model"], files["clean"]):
        assert not holds_onnx(path), path


def test_one_class_is_refused_only_for_clean_validation(files):
    threes = load_images(files["one_class"])
    with pytest.raises(DataError, match=r"^clean-valid \('.*threes\.h5'\): holds images of one class only"):
        check_input_range(threes, (0.0, 255.0), "clean-valid")
    # poisoned data hold the attacker's target, one label, by design; test data may be one class
    for role in ("poisoned-valid", "clean-test", "poisoned-test", "clean data", "images"):
        check_input_range(threes, (0.0, 255.0), role)
