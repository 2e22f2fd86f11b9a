"""Faults of grids (`goodnet batch`, `goodnet compare`): a pooled batch killed with SIGKILL leaves no
worker and no lock behind, SIGTERM stops a pooled batch within seconds and keeps its finished
cells, a refused cell is not kept (it runs again next time), and a cell whose input files changed
(their bytes, even at the same size and modification time) runs again."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from goodnet.batch import BatchEntry, batch
from goodnet.errors import OutputError
from goodnet.grid import GridCell, GridRunner, run_grid
from goodnet.io.output_dir import claim_output, release_output
from goodnet.repairs import build_repair

fcntl = pytest.importorskip("fcntl")  # output locks, signals and process ids as on POSIX

needs_proc = pytest.mark.skipif(
    not os.path.isfile("/proc/self/stat"), reason="finding a process's children needs /proc (Linux)"
)
ROLES = ("clean_valid", "clean_test", "poisoned_test")
CHEAP = ["--repair", "fine-tune", "--epochs", "1", "--no-strip", "--threads", "1"]


def _manifest(tmp_path, demo_run, names):
    inputs = demo_run["inputs"]
    lines = ["name,model," + ",".join(ROLES)]
    lines += [f"{name},{demo_run['model']}," + ",".join(inputs[r] for r in ROLES) for name in names]
    path = tmp_path / "models.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _start_batch(manifest, out, err_path, *extra):
    with open(err_path, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "goodnet", "batch", manifest, "--out", str(out), *CHEAP, *extra],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stat(pid):
    """(parent pid, state letter) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return int(fields[1]), fields[0]


def _children(pid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[0] == pid:
                found.append(int(name))
    return found


def _alive(pid):
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"  # a zombie has ended (an init that does not reap keeps it)


def _wait_for(condition, seconds, what, run=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if run is not None and run.poll() is not None:
            pytest.fail(f"goodnet batch ended (exit status {run.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"no {what} after {seconds} s")


def _holders(models, names):
    """The process ids written into the models' lock files, once every model's cell has started."""
    pids = []
    for name in names:
        try:
            text = (models / f".{name}.lock").read_text().strip()
        except OSError:
            return None
        if not text:
            return None
        pids.append(int(text))
    return pids


def _cells_running(models, names, run):
    """The workers of `run` holding the models' output locks, once every model's cell runs there."""
    pids = _holders(models, names)
    return pids if pids and set(pids) <= set(_children(run.pid)) else None


def _open_files(pid):
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return found


def _stop(run):
    if run.poll() is None:
        run.kill()
        run.wait()


@needs_proc
def test_a_killed_pooled_batch_leaves_no_worker_and_no_lock(demo_run, tmp_path):
    manifest, out = _manifest(tmp_path, demo_run, ["a", "b"]), tmp_path / "out"
    models = tmp_path / ".out.cells" / "models"
    run = _start_batch(manifest, out, tmp_path / "err1.txt", "--workers", "2")
    try:
        workers = _wait_for(lambda: _cells_running(models, "ab", run), 180, "cells running in workers", run)
        children = _children(run.pid)
        for worker in workers:  # the batch's own lock never reaches a worker
            assert str(tmp_path / ".out.lock") not in _open_files(worker)
        run.kill()  # SIGKILL: the batch cannot clean up anything
        run.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in children), 10, "end of every worker")
    finally:
        _stop(run)
    assert (tmp_path / ".out.lock").read_text().strip() == str(run.pid)  # left by the killed run, and yet:
    rerun = _start_batch(manifest, out, tmp_path / "err2.txt", "--workers", "2")
    try:  # neither the batch's lock nor a model's refuses the rerun: its cells start in its own workers
        _wait_for(lambda: _cells_running(models, "ab", rerun), 180, "cells of the rerun running", rerun)
        rerun.send_signal(signal.SIGTERM)
        assert rerun.wait(timeout=60) == 143
    finally:
        _stop(rerun)
    assert "another goodnet run" not in (tmp_path / "err2.txt").read_text()


@needs_proc
def test_sigterm_stops_a_pooled_batch_in_seconds_and_keeps_its_finished_cells(demo_run, tmp_path):
    manifest, out = _manifest(tmp_path, demo_run, ["a", "b", "c"]), tmp_path / "out"
    err = tmp_path / "err1.txt"
    run = _start_batch(manifest, out, err, "--workers", "2")
    try:
        _wait_for(lambda: "[1/3 cells" in err.read_text(), 300, "finished cell", run)
        children = _children(run.pid)
        start = time.monotonic()
        run.send_signal(signal.SIGTERM)
        code = run.wait(timeout=60)
        seconds = time.monotonic() - start
    finally:
        _stop(run)
    assert code == 143 and seconds < 15, (code, seconds)
    _wait_for(lambda: not any(_alive(pid) for pid in children), 5, "end of every worker")
    said = [line for line in err.read_text().splitlines() if line.strip() and not line.startswith("[")]
    assert said == ["goodnet: terminated"]  # one line besides the progress lines: no traceback, no warning
    kept = [json.loads(p.read_text())["key"] for p in (tmp_path / ".out.cells" / "cells").glob("*.json")]
    assert kept and set(kept) <= {"a", "b", "c"} and not out.exists()
    err = tmp_path / "err2.txt"
    rerun = _start_batch(manifest, out, err, "--workers", "2")
    try:
        _wait_for(
            lambda: f"resuming, {len(kept)} of 3 cells already done" in err.read_text(), 120, "resumed cells", rerun
        )
        rerun.send_signal(signal.SIGTERM)
        assert rerun.wait(timeout=60) == 143
    finally:
        _stop(rerun)


def _copied_inputs(demo_run, tmp_path):
    """The demo's B and data, copied, so a test may change them."""
    copies = {}
    for role, source in [("model", demo_run["model"])] + [(r, demo_run["inputs"][r]) for r in ROLES]:
        target = tmp_path / "inputs" / os.path.basename(source)
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        copies[role] = str(target)
    return BatchEntry(
        "a",
        copies.pop("model"),
        {r: copies.get(r) for r in ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")},
    )


def _counting_defend(monkeypatch, fail_first=False):
    import goodnet.batch as batch_module

    real, calls = batch_module.defend, []

    def defend(spec):
        calls.append(spec.out_dir)
        if fail_first and len(calls) == 1:
            raise OutputError(f"{spec.out_dir}: cannot write the output (No space left on device)")
        return real(spec)

    monkeypatch.setattr(batch_module, "defend", defend)
    return calls


def _batch(entry, state):
    return batch(
        [entry],
        build_repair("fine-tune", {"epochs": 1}),
        str(state),
        GridRunner(threads=1),
        progress=False,
        strip=False,
    )


def test_a_refused_cell_is_not_kept_and_runs_again(demo_run, tmp_path, monkeypatch):
    entry, state = _copied_inputs(demo_run, tmp_path), tmp_path / "state"
    calls = _counting_defend(monkeypatch, fail_first=True)
    rows, _ = _batch(entry, state)
    assert "No space left on device" in rows[0]["error"]  # the row says why, this time
    assert os.listdir(state / "cells") == []  # ... and nothing is kept
    rows, outputs = _batch(entry, state)  # space freed: the model is defended now
    assert len(calls) == 2 and rows[0]["error"] is None and os.path.isdir(outputs["a"])
    again, _ = _batch(entry, state)  # a result is kept: not run a third time
    assert len(calls) == 2 and again == rows


def test_a_model_whose_file_changed_is_defended_again(demo_run, tmp_path, monkeypatch):
    entry, state = _copied_inputs(demo_run, tmp_path), tmp_path / "state"
    calls = _counting_defend(monkeypatch)
    first, _ = _batch(entry, state)
    assert _batch(entry, state)[0] == first and len(calls) == 1  # unchanged: resumed
    info = os.stat(entry.model)
    with open(entry.model, "r+b") as f:  # the lowest bit of the last weight: same size, still a model
        f.seek(info.st_size - 4)
        low = f.read(1)[0]
        f.seek(info.st_size - 4)
        f.write(bytes([low ^ 1]))
    os.utime(entry.model, ns=(info.st_atime_ns, info.st_mtime_ns))  # and the same modification time
    assert os.stat(entry.model).st_size == info.st_size
    rows, _ = _batch(entry, state)
    assert len(calls) == 2 and rows[0]["error"] is None


PREPARED, BUILT = [], []


def fake_prepare(settings, cache_dir, scan=False, progress=False, scan_schedule="reference"):
    """compare's first stage, with a zoo cache like the real one: the BadNet is built (here: files of
    different bytes on every build) only when its files are missing."""
    from goodnet.compare import zoo_directory, zoo_inputs

    PREPARED.append(settings.label())
    directory = zoo_directory(settings, cache_dir)
    if not os.path.isdir(directory):
        os.makedirs(directory)
        BUILT.append(settings.label())
        for path in zoo_inputs(directory):
            with open(path, "w") as f:
                f.write(f"build {len(BUILT)}")
    return {"label": settings.label(), "zoo": {"directory": directory, "meets_bar": True}}


REPAIRED = []


def fake_repair(settings, repair, prepared, scan=False, scan_schedule="reference"):
    REPAIRED.append(repair.name)
    return {"badnet": settings.label(), "repair": repair.name}


def test_compare_runs_a_cell_again_when_its_zoo_files_changed(demo_run, tmp_path, monkeypatch):
    import goodnet.compare as compare_module
    from goodnet.zoo.badnets import BadNetSettings, DemoSettings

    # the folder the cells hash is the one the zoo cache uses
    assert compare_module.zoo_directory(DemoSettings(), demo_run["cache"]) == os.path.dirname(demo_run["model"])
    monkeypatch.setattr(compare_module, "prepare_badnet", fake_prepare)
    monkeypatch.setattr(compare_module, "repair_badnet", fake_repair)
    cache, state, settings = str(tmp_path / "zoo"), str(tmp_path / "state"), BadNetSettings()
    repairs = compare_module.comparison_roster(["prune"])
    for calls in (PREPARED, BUILT, REPAIRED):
        calls.clear()

    def compare():
        rows = compare_module.compare([settings], repairs, cache, progress=False, state_dir=state)[0]
        return len(PREPARED), len(BUILT), len(REPAIRED), rows

    rows = compare()[3]
    assert compare() == (1, 1, 1, rows)  # resumed: nothing ran again
    model = compare_module.zoo_inputs(compare_module.zoo_directory(settings, cache))[0]
    info = os.stat(model)
    with open(model, "w") as f:  # edited in place: same size, same modification time
        f.write("build 9")
    os.utime(model, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert compare() == (2, 1, 2, rows)  # both stages read B: both run again
    shutil.rmtree(compare_module.zoo_directory(settings, cache))  # the zoo cache deleted: rebuilt, run again
    assert compare() == (3, 2, 3, rows)
    assert compare() == (3, 2, 3, rows)


def rewrite(path):
    """A task that changes its own input file while it runs."""
    with open(path, "a") as f:
        f.write("changed")
    return {"ran": True}


def test_a_cell_whose_input_changed_while_it_ran_is_not_kept(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("data")
    cells = [GridCell("c", rewrite, {"path": str(path)}, inputs=(str(path),))]
    assert run_grid(cells, str(tmp_path / "state"), GridRunner(threads=1)) == [{"ran": True}]
    assert os.listdir(tmp_path / "state") == []  # what it read is not known: it runs again next time


_HOLD = """
import sys, time
from goodnet.io.output_dir import claim_output
claim_output(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_names_its_holder_and_is_taken_over_once_the_holder_is_gone(tmp_path):
    out = str(tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputError,
            match=rf"another goodnet run is writing this output right now "
            rf"\(process {holder.pid}\)",
        ):
            claim_output(out)
        holder.kill()  # killed while holding it: the lock file stays, the lock does not
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (tmp_path / ".out.lock").read_text().strip() == str(holder.pid)
    claim_output(out)
    try:
        assert (tmp_path / ".out.lock").read_text().strip() == str(os.getpid())
    finally:
        release_output(out)
    assert not (tmp_path / ".out.lock").exists()


_FORK_AND_DIE = """
import os, sys, time
from goodnet.io.output_dir import claim_output
claim_output(sys.argv[1])
child = os.fork()
if child == 0:  # lives on, its output away from the test's pipes
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
os._exit(0)  # ends like a killed run: no clean-up, the lock file stays
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_keep_the_lock_of_its_parent(tmp_path):
    out = str(tmp_path / "out")
    done = subprocess.run(
        [sys.executable, "-c", _FORK_AND_DIE, out], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    child = int(done.stdout)
    try:
        assert os.path.exists(tmp_path / ".out.lock")
        claim_output(out)  # the run that took the lock is gone; its child, still running, does not hold it
        release_output(out)
    finally:
        os.kill(child, signal.SIGKILL)
