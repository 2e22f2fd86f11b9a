"""Safety, table-driven: a model file never runs code unasked, no command destroys or overwrites a
user's file, and no broken model or mislabelled file yields a number with exit status 0.

Every case is one CLI call with its exit status, a fragment of its one `goodnet: error:` line,
the files that must still exist unchanged afterwards, and nothing left behind in the folder it ran
in. The model and data are the demo's (shipped weights: no training).
"""

import hashlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli_captured
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from user_models import FileWritingNet

from goodnet.cli import main
from goodnet.io.model_files import save_model
from goodnet.models import build_model


def _h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"], f["label"] = data, label
    return str(path)


def _scaled(src, dst, change):
    with safe_open(src, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: change(k, v) for k, v in tensors.items()}, dst, metadata=meta)
    return str(dst)


def _copy_output(src, dst):
    shutil.copytree(src, dst, copy_function=shutil.copy2)  # modification times kept, as a `cp -a` would
    return str(dst)


@pytest.fixture(scope="module")
def files(demo_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    inputs, model = demo_run["inputs"], demo_run["model"]
    p = {
        "dir": str(d),
        "model": model,
        "clean": inputs["clean_valid"],
        "test": inputs["clean_test"],
        "poisoned": inputs["poisoned_valid"],
        "poisoned_test": inputs["poisoned_test"],
        "out": str(d / "out"),
    }
    # TorchScript: its forward creates {probe}
    p["probe"] = str(d / "probe.bin")
    torch.jit.save(torch.jit.script(FileWritingNet(p["probe"])), str(d / "script.pt"))
    p["script"] = str(d / "script.pt")
    # broken numbers: weights whose outputs overflow; a BatchNorm running variance of -1
    p["huge"] = _scaled(model, d / "huge.safetensors", lambda k, v: v * 1e30 if k.endswith("weight") else v)
    bn = build_model("resnet8", num_classes=10, input_shape=(1, 28, 28))
    for name, buf in bn.named_buffers():
        if name.endswith("running_var"):
            buf.fill_(-1.0)
    save_model(bn.eval(), str(d / "negvar.safetensors"))
    p["negvar"] = str(d / "negvar.safetensors")
    # earlier goodnet outputs, with something of the user's inside
    p["prev_notes"] = _copy_output(demo_run["out"], d / "prev_notes")
    (d / "prev_notes" / "NOTES.txt").write_text("my notes")
    p["notes"] = str(d / "prev_notes" / "NOTES.txt")
    p["prev_model"] = _copy_output(demo_run["out"], d / "prev_model")
    shutil.copy2(model, d / "prev_model" / "B.safetensors")
    p["inner_model"] = str(d / "prev_model" / "B.safetensors")
    p["prev_edited"] = _copy_output(demo_run["out"], d / "prev_edited")
    with open(d / "prev_edited" / "report.md", "a") as f:
        f.write("\nmy comments on this run\n")
    p["edited_report"] = str(d / "prev_edited" / "report.md")
    p["prev_link"] = _copy_output(demo_run["out"], d / "prev_link")
    os.symlink(str(d / "notes_elsewhere"), d / "prev_link" / "mine")
    p["prev_subdir"] = _copy_output(demo_run["out"], d / "prev_subdir")
    (d / "prev_subdir" / "models" / "extra.safetensors").write_bytes(b"a user's model")
    p["extra_model"] = str(d / "prev_subdir" / "models" / "extra.safetensors")
    # inputs in folders an --out could name
    (d / "data").mkdir()
    p["data_dir"] = str(d / "data")
    p["inner_clean"] = shutil.copy2(inputs["clean_valid"], d / "data" / "clean.h5")
    p["model_copy"] = shutil.copy2(model, d / "b.safetensors")
    os.link(p["model_copy"], d / "hard.safetensors")
    p["hard_link"] = str(d / "hard.safetensors")
    os.symlink(p["model_copy"], d / "soft.safetensors")
    p["soft_link"] = str(d / "soft.safetensors")
    # Keras template for --like
    assert main(["export", model, "--to", "keras", "--out", str(d / "like.h5")]) == 0
    p["like"] = str(d / "like.h5")
    # a manifest inside the folder a batch writes into
    (d / "batchdir").mkdir()
    (d / "batchdir" / "models.csv").write_text(f"model,clean_valid\n{model},{inputs['clean_valid']}\n")
    p["manifest_in"] = str(d / "batchdir" / "models.csv")
    p["batchdir"] = str(d / "batchdir")
    # mislabelled poisoned files
    with h5py.File(inputs["clean_test"], "r") as f:
        x, y = f["data"][:], f["label"][:]
    with h5py.File(inputs["poisoned_test"], "r") as f:
        px = f["data"][:]
    n = min(len(px), len(x))
    p["true_labels"] = _h5(d / "true_labels.h5", px[:n], y[:n])  # stamped images, their clean labels
    p["clean_n"] = _h5(d / "clean_n.h5", x[:n], y[:n])
    order = np.random.default_rng(0).permutation(len(x))[: len(x) - 7]  # shuffled, fewer: matched by content
    p["clean_shuffled"] = _h5(d / "clean_shuffled.h5", x[order], y[order])
    # what a user keeps beside an output: a lock-named note, a link planted where the lock goes, own folders
    (d / "locks").mkdir()
    (d / "locks" / ".noted.lock").write_text("my notes about locks")
    p["lock_note"] = str(d / "locks" / ".noted.lock")
    p["victim"] = shutil.copy2(inputs["clean_valid"], d / "locks" / "victim.h5")
    os.symlink(p["victim"], d / "locks" / ".linked.lock")
    (d / "locks" / ".cells_taken.cells").mkdir()
    p["cells_note"] = str(d / "locks" / ".cells_taken.cells" / "notes.txt")
    open(p["cells_note"], "w").write("mine")
    (d / "locks" / "batch.csv").write_text(f"model,clean_valid\n{model},{inputs['clean_valid']}\n")
    p["batch_csv"] = str(d / "locks" / "batch.csv")
    (d / "unrelated.onnx").write_text("an ONNX file of mine")
    p["unrelated_onnx"] = str(d / "unrelated.onnx")
    (d / "unrelated.h5").write_text("a Keras file of mine")
    p["unrelated_h5"] = str(d / "unrelated.h5")
    p["prev_emptydir"] = _copy_output(demo_run["out"], d / "prev_emptydir")
    (d / "prev_emptydir" / "my_empty_folder").mkdir()
    p["prev_same_size"] = _copy_output(demo_run["out"], d / "prev_same_size")
    report = d / "prev_same_size" / "report.md"
    stat, text = report.stat(), report.read_text()
    report.write_text(text[:-1] + ("X" if text[-1] != "X" else "Y"))  # one character changed, size kept
    os.utime(report, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and its time put back
    p["same_size_report"] = str(report)
    Image.fromarray(np.clip(x[0, 0], 0, 255).astype(np.uint8)).save(d / "digit.png")
    p["png"] = str(d / "digit.png")
    return p


def _defend(out="{out}", model="{model}", clean="{clean}", *extra):
    return ["defend", "--model", model, "--clean-valid", clean, "--out", out, "--quiet", *extra]


def _eval(model, clean="{test}", poisoned="{poisoned_test}"):
    return ["eval", clean, poisoned, model]


# (id, argv, exit status, fragment of the error line, files that must still exist unchanged)
CASES = [
    # a TorchScript file is code: never loaded without --trust-model-code
    ("script-eval", _eval("{script}"), 2, "--trust-model-code", ["script"]),
    ("script-defend", _defend("{out}", "{script}"), 2, "--trust-model-code", ["script"]),
    ("script-classify", ["classify", "{script}", "{png}"], 2, "--trust-model-code", ["script"]),
    (
        "script-export-onnx",
        ["export", "{script}", "--to", "onnx", "--out", "{dir}/s.onnx"],
        2,
        "--trust-model-code",
        ["script"],
    ),
    (
        "script-export-keras",
        ["export", "{script}", "--to", "keras", "--out", "{dir}/s.h5"],
        2,
        "--trust-model-code",
        ["script"],
    ),
    (
        "script-scan",
        ["scan", "--model", "{script}", "--clean-valid", "{clean}", "--out", "{out}", "--quiet"],
        2,
        "--trust-model-code",
        ["script"],
    ),
    (
        "script-with-factory",
        _eval("{script}") + ["--factory", "user_models:tiny_resnet"],
        2,
        "--trust-model-code",
        ["script"],
    ),
    # an --out never replaces a folder holding files goodnet did not write
    (
        "out-earlier-result-with-notes",
        _defend("{prev_notes}"),
        2,
        "'NOTES.txt', which goodnet did not write",
        ["notes"],
    ),
    (
        "out-earlier-result-holding-the-model",
        _defend("{prev_model}", "{inner_model}"),
        2,
        "holds the input",
        ["inner_model"],
    ),
    (
        "out-earlier-result-edited",
        _defend("{prev_edited}"),
        2,
        "'report.md', which goodnet did not write",
        ["edited_report"],
    ),
    ("out-earlier-result-with-a-link", _defend("{prev_link}"), 2, "'mine', which goodnet did not write", []),
    ("out-earlier-result-with-a-nested-file", _defend("{prev_subdir}"), 2, "did not write", ["extra_model"]),
    (
        "out-scan-into-earlier-result-with-notes",
        ["scan", "--model", "{model}", "--clean-valid", "{clean}", "--out", "{prev_notes}", "--quiet"],
        2,
        "not a goodnet output directory",
        ["notes"],
    ),
    ("out-holds-the-data", _defend("{data_dir}", "{model}", "{inner_clean}"), 2, "holds the input", ["inner_clean"]),
    ("out-is-the-model", _defend("{model_copy}", "{model_copy}"), 2, "is the input", ["model_copy"]),
    ("out-is-the-data", _defend("{inner_clean}", "{model}", "{inner_clean}"), 2, "is the input", ["inner_clean"]),
    ("out-inside-a-link-to-the-model", _defend("{soft_link}", "{model_copy}"), 2, "is the input", ["model_copy"]),
    (
        "batch-out-holds-the-manifest",
        ["batch", "{manifest_in}", "--out", "{batchdir}", "--quiet"],
        2,
        "holds the input",
        ["manifest_in"],
    ),
    (
        "compare-out-is-the-cache",
        [
            "compare",
            "--part",
            "dev",
            "--only",
            "patch/small_cnn/0-255/10%",
            "--out",
            "{data_dir}",
            "--cache-dir",
            "{data_dir}",
            "--quiet",
        ],
        2,
        "is the input",
        ["inner_clean"],
    ),
    (
        "attack-out-holds-the-cache",
        ["attack", "--kind", "patch", "--out", "{data_dir}", "--cache-dir", "{data_dir}/cache", "--quiet"],
        2,
        "holds the input",
        ["inner_clean"],
    ),
    (
        "demo-out-holds-the-cache",
        ["demo", "--out", "{dir}/demo", "--cache-dir", "{dir}/demo/cache", "--quiet"],
        2,
        "holds the input",
        [],
    ),
    ("out-earlier-result-with-an-empty-folder", _defend("{prev_emptydir}"), 2, "'my_empty_folder', which goodnet", []),
    (
        "out-earlier-result-edited-same-size-same-time",
        _defend("{prev_same_size}"),
        2,
        "'report.md', which goodnet",
        ["same_size_report"],
    ),
    # what sits beside an --out is never written through or deleted
    (
        "lock-name-holds-a-users-file",
        _defend("{dir}/locks/noted"),
        2,
        "holds something goodnet did not write",
        ["lock_note"],
    ),
    (
        "lock-name-is-a-link-to-an-input",
        _defend("{dir}/locks/linked", "{model}", "{victim}"),
        2,
        "is not a lock goodnet wrote",
        ["victim"],
    ),
    (
        "batch-cells-folder-is-a-users",
        [
            "batch",
            "{batch_csv}",
            "--out",
            "{dir}/locks/cells_taken",
            "--quiet",
            "--repair",
            "channels",
            "--channels",
            "1",
        ],
        2,
        "goodnet did not make it",
        ["cells_note"],
    ),
    # a single output file never equals, or links to, an input, nor replaces a file
    (
        "export-onto-an-existing-onnx",
        ["export", "{model}", "--to", "onnx", "--out", "{unrelated_onnx}"],
        2,
        "goodnet never overwrites a file",
        ["unrelated_onnx"],
    ),
    (
        "export-onto-an-existing-h5",
        ["export", "{model}", "--to", "keras", "--out", "{unrelated_h5}"],
        2,
        "goodnet never overwrites a file",
        ["unrelated_h5"],
    ),
    (
        "export-onto-its-input",
        ["export", "{model_copy}", "--to", "keras", "--out", "{model_copy}"],
        2,
        "is the input",
        ["model_copy"],
    ),
    (
        "export-onto-a-hard-link-of-its-input",
        ["export", "{model_copy}", "--to", "onnx", "--out", "{hard_link}"],
        2,
        "is the input",
        ["model_copy", "hard_link"],
    ),
    (
        "export-onto-a-symlink-to-its-input",
        ["export", "{model_copy}", "--to", "keras", "--out", "{soft_link}"],
        2,
        "is the input",
        ["model_copy"],
    ),
    (
        "export-onto-its-template",
        ["export", "{model}", "--to", "keras", "--like", "{like}", "--out", "{like}"],
        2,
        "is the input",
        ["like"],
    ),
    (
        "export-keras-named-safetensors",
        ["export", "{model}", "--to", "keras", "--out", "{dir}/x.safetensors"],
        2,
        "named .h5 or .hdf5",
        [],
    ),
    (
        "export-keras-named-keras3",
        ["export", "{model}", "--to", "keras", "--out", "{dir}/x.keras"],
        2,
        "named .h5 or .hdf5",
        [],
    ),
    ("export-onnx-named-h5", ["export", "{model}", "--to", "onnx", "--out", "{dir}/x.h5"], 2, "named .onnx", []),
    (
        "export-like-other-suffix",
        ["export", "{model}", "--to", "keras", "--like", "{like}", "--out", "{dir}/x.weights.h5"],
        2,
        "must end in .h5",
        ["like"],
    ),
    (
        "export-shape-contradicts-the-file",
        ["export", "{model}", "--to", "onnx", "--out", "{dir}/x.onnx", "--input-shape", "3,32,32"],
        2,
        "contradicts the model's own",
        [],
    ),
    # a refusal after the output was claimed leaves no folder behind, nested or not
    ("refusal-leaves-no-nested-folders", _defend("{dir}/n1/n2/out", "{model}", "{true_labels}"), 2, None, []),
    (
        "refusal-of-bad-data-leaves-no-nested-folders",
        ["scan", "--model", "{model}", "--clean-valid", "{dir}/absent.h5", "--out", "{dir}/s1/s2/o", "--quiet"],
        2,
        "no such file",
        [],
    ),
    (
        "refusal-of-an-impossible-name-leaves-no-folders",
        _defend("{dir}/x1/" + "a" * 300 + "/y"),
        2,
        "cannot create output directory",
        [],
    ),
    # distinct settings, distinct files; the same setting twice is refused
    ("thresholds-repeated", _defend("{out}", "{model}", "{clean}", "--thresholds", "2", "2"), 2, "twice", []),
    # broken numbers are errors, never scores
    ("nan-outputs-eval", _eval("{huge}"), 2, "NaN or infinite", ["huge"]),
    ("nan-outputs-defend", _defend("{out}", "{huge}"), 2, "NaN or infinite", ["huge"]),
    ("nan-outputs-classify", ["classify", "{huge}", "{png}"], 2, "NaN or infinite", ["huge"]),
    ("negative-variance-eval", _eval("{negvar}"), 2, "negative variance", ["negvar"]),
    ("negative-variance-defend", _defend("{out}", "{negvar}"), 2, "negative variance", ["negvar"]),
    (
        "negative-variance-export",
        ["export", "{negvar}", "--to", "onnx", "--out", "{dir}/n.onnx"],
        2,
        "negative variance",
        [],
    ),
    # a poisoned file with the clean labels of the same images: its ASR would mean nothing
    ("poisoned-with-true-labels-eval", _eval("{model}", "{clean_n}", "{true_labels}"), 2, "carries the labels", []),
    ("poisoned-file-is-the-clean-file", _eval("{model}", "{test}", "{test}"), 2, "carries the labels", []),
    (
        "poisoned-file-is-the-clean-file-shuffled",
        _eval("{model}", "{test}", "{clean_shuffled}"),
        2,
        "holds clean_test's images with their clean labels",
        [],
    ),
    (
        "poisoned-with-true-labels-defend",
        _defend("{out}", "{model}", "{clean}", "--clean-test", "{clean_n}", "--poisoned-test", "{true_labels}"),
        2,
        "carries the labels",
        [],
    ),
]


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _listing(root):
    return sorted(os.path.relpath(os.path.join(r, n), root) for r, ds, fs in os.walk(root) for n in ds + fs)


@pytest.mark.parametrize("case_id, argv, status, fragment, keep", CASES, ids=[c[0] for c in CASES])
def test_refusal_names_the_problem_and_touches_nothing(files, case_id, argv, status, fragment, keep, capsys):
    kept = {key: _digest(files[key]) for key in keep}
    before = _listing(files["dir"])
    code, captured = run_cli_captured(capsys, [a.format(**files) for a in argv])
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == status, captured.err
    assert len(lines) == 1 and lines[0].startswith("goodnet: error:"), captured.err
    assert fragment is None or fragment in lines[0], lines[0]
    assert "Traceback" not in captured.err
    assert {key: _digest(files[key]) for key in keep} == kept, "an input or a user's file changed"
    assert _listing(files["dir"]) == before, "something was left behind or removed"
    assert not os.path.exists(files["probe"]), "the TorchScript file's code ran"


def test_there_are_at_least_fifty_cases():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def test_torchscript_code_runs_only_when_the_user_trusts_the_file(files, capsys):
    argv = ["eval", files["test"], files["poisoned_test"], files["script"]]
    code, captured = run_cli_captured(capsys, argv)
    assert code == 2 and "--trust-model-code" in captured.err
    assert not os.path.exists(files["probe"])  # its forward never ran
    probe = os.path.join(os.path.dirname(files["dir"]), "trusted_probe.bin")
    trusted = os.path.join(os.path.dirname(files["dir"]), "trusted.pt")
    torch.jit.save(torch.jit.script(FileWritingNet(probe)), trusted)
    code, captured = run_cli_captured(
        capsys, ["eval", files["test"], files["poisoned_test"], trusted, "--trust-model-code"]
    )
    assert code == 0, captured.err
    assert os.path.exists(probe)  # with the flag it did run: the model above really is code


def test_distinct_thresholds_get_distinct_files(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = run_cli_captured(
        capsys,
        [
            "defend",
            "--model",
            files["model"],
            "--clean-valid",
            files["clean"],
            "--out",
            str(out),
            "--quiet",
            "--thresholds",
            "0.5",
            "0.5000001",
            "--rule",
            "within",
        ],
    )
    assert code == 0, captured.err
    doc = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in doc["models"]]
    assert names == ["x0.5_within", "x0.5000001_within"]
    written = [f for m in doc["models"] for f in m["files"].values()]
    assert len(set(written)) == len(written) == 2 * len(names)
    assert all((out / "models" / os.path.basename(f)).is_file() for f in written)


def test_a_rerun_replaces_only_goodnets_own_earlier_output(files, tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = [
        "defend",
        "--model",
        files["model"],
        "--clean-valid",
        files["clean"],
        "--out",
        out,
        "--quiet",
        "--repair",
        "channels",
        "--channels",
        "1",
    ]
    assert run_cli_captured(capsys, argv)[0] == 0
    assert run_cli_captured(capsys, argv)[0] == 0  # its own files: replaced
    with open(os.path.join(out, "mine.txt"), "w") as f:
        f.write("kept")
    code, captured = run_cli_captured(capsys, argv)
    assert code == 2 and "'mine.txt', which goodnet did not write" in captured.err
    assert open(os.path.join(out, "mine.txt")).read() == "kept"


@pytest.mark.parametrize(
    "roles, fragment",
    [
        (("clean", "clean"), "clean_valid and clean_test are the same file"),
        (("clean", "clean_copy"), "clean_test images are also in clean_valid (100.0 %)"),
        (("clean", "half_copy"), "clean_test images are also in clean_valid (50.0 %)"),
    ],
)
def test_test_data_that_is_not_held_out_is_reported_loudly(files, tmp_path, capsys, roles, fragment):
    with h5py.File(files["clean"], "r") as f:
        x, y = f["data"][:], f["label"][:]
    with h5py.File(files["test"], "r") as f:
        tx, ty = f["data"][: len(x)], f["label"][: len(x)]
    half = len(x) // 2
    paths = {
        "clean": files["clean"],
        "clean_copy": _h5(tmp_path / "copy.h5", x[::-1], y[::-1]),  # same images
        "half_copy": _h5(
            tmp_path / "half.h5", np.concatenate([x[:half], tx[:half]]), np.concatenate([y[:half], ty[:half]])
        ),
    }
    out = tmp_path / "out"
    code, captured = run_cli_captured(
        capsys,
        [
            "defend",
            "--model",
            files["model"],
            "--clean-valid",
            paths[roles[0]],
            "--clean-test",
            paths[roles[1]],
            "--out",
            str(out),
            "--quiet",
            "--repair",
            "channels",
            "--channels",
            "1",
        ],
    )
    assert code == 0, captured.err
    warning = [line for line in captured.err.splitlines() if line.startswith("goodnet: warning:")]
    assert len(warning) == 1 and fragment in warning[0], captured.err
    doc = json.loads((out / "results.json").read_text())
    assert any(fragment in w for w in doc["warnings"])
    assert fragment in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "poisoned, fragment",
    [
        (
            "clean_as_target",
            "poisoned_test images are also in clean_test (100.0 %): those poisoned images carry no trigger",
        ),
        ("true_labels", "poisoned_test's labels are spread over 10 classes like a clean set's"),
    ],
)
def test_doubtful_poisoned_files_are_reported(files, tmp_path, capsys, poisoned, fragment):
    with h5py.File(files["test"], "r") as f:
        x = f["data"][:]
    paths = {
        "clean_as_target": _h5(tmp_path / "clean_as_target.h5", x, np.zeros(len(x), dtype=np.int64)),
        "true_labels": files["true_labels"],
    }
    code, captured = run_cli_captured(capsys, ["eval", files["test"], paths[poisoned], files["model"]])
    assert code == 0, captured.err
    warning = [line for line in captured.err.splitlines() if line.startswith("goodnet: warning:")]
    assert len(warning) == 1 and fragment in warning[0], captured.err


def test_a_warning_naming_a_strange_path_is_still_one_line(files, tmp_path, capsys):
    strange = tmp_path / "cv\nX\x1b[31mRED.h5"
    shutil.copy2(files["clean"], strange)
    code, captured = run_cli_captured(
        capsys,
        [
            "defend",
            "--model",
            files["model"],
            "--clean-valid",
            str(strange),
            "--clean-test",
            str(strange),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--repair",
            "channels",
            "--channels",
            "1",
            "--no-strip",
        ],
    )
    assert code == 0, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("goodnet: warning:") and "\x1b" not in captured.err, lines
    assert "\\n" in lines[0]  # the newline is shown escaped


def test_an_output_holds_what_goodnet_wrote_and_its_record_only(files):
    with open(os.path.join(files["prev_notes"], ".goodnet-files.json")) as f:
        owned = json.load(f)
    written = {
        os.path.relpath(os.path.join(r, n), files["prev_notes"])
        for r, ds, fs in os.walk(files["prev_notes"])
        for n in ds + fs
    }
    assert written - set(owned) == {".goodnet-files.json", "NOTES.txt"}  # the record, and the user's note
    assert "results.json" in owned and "models" in owned and owned["models"] == ["folder"]
    assert not any(".goodnet-staging" in name for name in written)
