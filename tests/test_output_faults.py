"""Faults while writing: a kill, a stale staging area, two runs on one --out, the umask."""

import os
import subprocess
import sys

import pytest

from goodnet.errors import OutputError
from goodnet.io.output_dir import (
    STAGING_MARK,
    atomic_directory,
    claim_output,
    release_output,
    remove_stale_staging,
    write_file_atomically,
)

fcntl = pytest.importorskip("fcntl")


def _leftovers(parent, base):
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{base}."))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_respect_the_umask(tmp_path, umask_022):
    out = tmp_path / "out"
    with atomic_directory(str(out)) as stage:
        with open(os.path.join(stage, "results.json"), "w") as f:
            f.write("{}")
    assert (out.stat().st_mode & 0o777) == 0o755
    assert ((out / "results.json").stat().st_mode & 0o777) == 0o644
    target = tmp_path / "model.bin"
    write_file_atomically(str(target), lambda tmp: open(tmp, "wb").write(b"x"))
    assert (target.stat().st_mode & 0o777) == 0o644
    assert _leftovers(tmp_path, "out") == []


def test_staging_left_by_a_killed_run_is_removed_by_the_next(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()

    def staging(name, marked=True):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text("{}")
        if marked:
            (folder / STAGING_MARK).write_text(dead)
        return folder

    stale = staging(f".out.partial-{dead}-abcd1234")
    stale_old = staging(f".out.old-{dead}-x_9y8z7w")
    alive = staging(f".out.partial-{os.getppid()}-defg5678")  # a live writer's: kept
    other = staging(f".other.partial-{dead}-abcd1234")  # another output's: not ours to touch
    # a user's folders named like staging, without goodnet's mark or with a name goodnet never makes
    users = [
        staging(f".out.partial-{dead}-mine1234", marked=False),
        staging(".out.old-backup"),
        staging(".out.old-2023"),
        staging(f".out.partial-{dead}-my-notes"),
    ]
    removed = remove_stale_staging(str(tmp_path / "out"))
    assert sorted(os.path.basename(p) for p in removed) == sorted([stale.name, stale_old.name])
    assert alive.exists() and other.exists() and all(u.exists() for u in users)


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    out = str(tmp_path / "out")
    lock = os.open(str(tmp_path / ".out.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
    try:
        with pytest.raises(OutputError, match="another goodnet run is writing this output"):
            with atomic_directory(out):
                pass
    finally:
        os.close(lock)
    claim_output(out)  # free again: this run gets it, and gives it back without a trace
    release_output(out)
    with atomic_directory(out) as stage:
        open(os.path.join(stage, "results.json"), "w").close()
    assert _leftovers(tmp_path, "out") == []


_KILL_WHILE_WRITING = """
import os, signal, sys
from goodnet import cli
from goodnet.io import output_dir
original = output_dir.respect_umask
def kill_once_staged(path, directory=False):
    original(path, directory)
    if directory:
        os.kill(os.getpid(), signal.SIGTERM)
output_dir.respect_umask = kill_once_staged
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_while_writing_leaves_nothing_and_exits_143(demo_run, tmp_path):
    inputs, model = demo_run["inputs"], demo_run["model"]
    out = tmp_path / "out"
    argv = ["defend", "--model", model, "--clean-valid", inputs["clean_valid"], "--out", str(out), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", _KILL_WHILE_WRITING, *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 143, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "goodnet: terminated"
    assert "Traceback" not in done.stderr
    assert not out.exists() and _leftovers(tmp_path, "out") == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    import errno

    def full(_tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match="No space left on device"):
        with atomic_directory(str(tmp_path / "out")):
            full(None)
    with pytest.raises(OutputError, match="No space left on device"):
        write_file_atomically(str(tmp_path / "model.h5"), full)
    assert os.listdir(tmp_path) == []


def test_export_onto_a_directory_or_a_missing_folder_is_refused(demo_run, tmp_path, capsys):
    from goodnet.cli import main

    models = os.path.join(demo_run["base"], "out", "models")
    model = os.path.join(
        models, next(n for n in sorted(os.listdir(models)) if n.startswith("repaired_") and n.endswith(".safetensors"))
    )
    (tmp_path / "taken").mkdir()
    for out, message in ((tmp_path / "taken", "is a directory"), (tmp_path / "no" / "m.h5", "does not exist")):
        assert main(["export", model, "--to", "keras", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and "Traceback" not in err
    assert os.listdir(tmp_path / "taken") == []


def test_a_second_cli_run_on_a_claimed_output_is_refused_before_work(demo_run, tmp_path, capsys):
    from goodnet.cli import main

    inputs, model = demo_run["inputs"], demo_run["model"]
    lock = os.open(str(tmp_path / ".out.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        code = main(
            [
                "defend",
                "--model",
                model,
                "--clean-valid",
                inputs["clean_valid"],
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
    finally:
        os.close(lock)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "another goodnet run is writing this output" in err
    assert not (tmp_path / "out").exists()
