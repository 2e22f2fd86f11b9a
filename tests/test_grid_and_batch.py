"""Grids (compare's cells, batch's models): the same numbers whichever runner runs them (in
order, a process pool, Ray), every finished cell kept so an interrupted grid resumes, progress
with an ETA, and `goodnet batch` over a manifest with one row per model."""

import json
import os
import sys
from dataclasses import replace

import pytest
from conftest import ZOO_CELL, assert_one_line_error, assert_self_contained_page, run_cli

from goodnet.errors import SettingsError
from goodnet.grid import GridCell, GridRunner, run_grid

CALLS = []


def square(x: int) -> dict:
    """A module-level task (pool workers import it by name)."""
    import torch

    return {"x": x, "square": x * x, "threads": torch.get_num_threads()}


def flaky(x: int, stop_at: int) -> dict:
    CALLS.append(x)
    if x == stop_at:
        raise KeyboardInterrupt
    return {"x": x}


def refuse(x: int) -> dict:
    if x == 1:
        raise SettingsError(f"cell {x} does not fit")
    return {"x": x}


def test_a_refusal_in_a_worker_is_the_same_one_line_error(tmp_path):
    cells = [GridCell(f"c{i}", refuse, {"x": i}) for i in range(3)]
    for runner in (GridRunner(threads=1), GridRunner(workers=2, threads=1)):
        state = str(tmp_path / str(runner.workers))
        with pytest.raises(SettingsError, match="^c1: cell 1 does not fit$"):
            run_grid(cells, state, runner)
        assert not any(name.startswith("c1-") for name in os.listdir(state))  # a refused cell is not kept


def test_runners_agree_and_threads_are_fixed(tmp_path):
    cells = [GridCell(f"c{i}", square, {"x": i}) for i in range(4)]
    sequential = run_grid(cells, str(tmp_path / "a"), GridRunner(threads=1))
    pooled = run_grid(cells, str(tmp_path / "b"), GridRunner(workers=2, threads=1))
    assert sequential == pooled == [{"x": i, "square": i * i, "threads": 1} for i in range(4)]
    with pytest.raises(SettingsError, match="--workers"):
        GridRunner(workers=0)
    with pytest.raises(SettingsError, match="with --ray"):
        GridRunner(workers=2, ray="")


def test_an_interrupted_grid_resumes_where_it_stopped(tmp_path, capsys):
    state = str(tmp_path / "state")
    cells = [GridCell(f"c{i}", flaky, {"x": i, "stop_at": 2}) for i in range(4)]
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells, state, GridRunner(threads=1), label="cells")
    assert CALLS == [0, 1, 2] and len(os.listdir(state)) == 2  # two cells finished and kept
    CALLS.clear()
    resumed = [GridCell(f"c{i}", flaky, {"x": i, "stop_at": -1}) for i in range(4)]
    # arguments changed for every cell (stop_at): nothing may be reused
    run_grid(resumed, state, GridRunner(threads=1))
    assert CALLS == [0, 1, 2, 3]
    CALLS.clear()
    assert run_grid(resumed, state, GridRunner(threads=1), label="cells") == [{"x": i} for i in range(4)]
    assert CALLS == [] and "resuming, 4 of 4 cells already done" in capsys.readouterr().err


def _compare(capsys, out, cache, *extra):
    code, _, err = run_cli(
        capsys,
        [
            "compare",
            *ZOO_CELL,
            "--repairs",
            "prune",
            "fine-tune",
            "--out",
            out,
            "--cache-dir",
            cache,
            "--threads",
            "1",
            *extra,
        ],
    )
    assert code == 0, err
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows], err


@pytest.mark.slow
def test_ray_and_local_give_the_same_table(zoo_cache, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    local, err = _compare(capsys, tmp_path / "local", zoo_cache)
    assert "[2/2 cells" in err and "ETA" in err  # progress: cells done / total, and the time left
    assert not os.path.exists(tmp_path / ".local.cells")  # kept only until the output is written
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local Ray of 2 CPUs
    try:
        on_ray, _ = _compare(capsys, tmp_path / "ray", zoo_cache, "--ray")
    finally:
        ray.shutdown()
    assert on_ray == local and len(local) == 2
    runner = json.loads((tmp_path / "ray" / "comparison.json").read_text())["runner"]
    assert runner["runner"] == "ray" and runner["threads_per_cell"] == 1
    assert_self_contained_page(tmp_path / "ray", "comparison.md", "comparison.html")


@pytest.mark.slow
def test_interrupted_compare_resumes(zoo_cache, tmp_path, capsys, monkeypatch):
    import goodnet.compare as compare_module

    real, calls = compare_module.repair_badnet, []

    def interrupted(settings, repair, prepared, **kwargs):
        calls.append(repair.name)
        if repair.name == "fine-tune" and calls.count("fine-tune") == 1:
            raise KeyboardInterrupt
        return real(settings, repair, prepared, **kwargs)

    monkeypatch.setattr(compare_module, "repair_badnet", interrupted)
    out = tmp_path / "cmp"
    code, _, err = run_cli(
        capsys,
        [
            "compare",
            *ZOO_CELL,
            "--repairs",
            "prune",
            "fine-tune",
            "--out",
            out,
            "--cache-dir",
            zoo_cache,
            "--threads",
            "1",
        ],
    )
    assert code == 130 and not out.exists() and os.path.isdir(tmp_path / ".cmp.cells")
    rows, err = _compare(capsys, out, zoo_cache)
    assert calls == ["prune", "fine-tune", "fine-tune"]  # prune was not run again
    assert "resuming, 1 of 2 cells already done" in err
    assert [r["repair"] for r in rows] == ["prune", "fine-tune"]


def test_unreachable_ray_and_an_exiting_factory_are_one_line(demo_run, tmp_path, capsys):
    pytest.importorskip("ray")
    code, _, err = run_cli(
        capsys, ["compare", *ZOO_CELL, "--repairs", "prune", "--out", tmp_path / "x", "--ray", "127.0.0.1:1"]
    )
    assert_one_line_error(code, err, "--ray 127.0.0.1:1: no Ray cluster answers there")
    code, _, err = run_cli(
        capsys,
        [
            "eval",
            demo_run["inputs"]["clean_test"],
            demo_run["inputs"]["poisoned_test"],
            demo_run["model"],
            "--factory",
            "sys:exit",
        ],
    )
    assert code == 2 and "goodnet: error:" in err  # refused as a goodnet file, or stopped if the code ran
    assert not (tmp_path / "x").exists()


def test_ray_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    code, _, err = run_cli(capsys, ["compare", *ZOO_CELL, "--out", tmp_path / "x", "--ray"])
    assert_one_line_error(code, err, "pip install 'goodnet[ray]'")
    code, _, err = run_cli(capsys, ["compare", *ZOO_CELL, "--out", tmp_path / "x", "--workers", "0"])
    assert_one_line_error(code, err, "argument --workers: must be an integer from 1 to")
    assert not (tmp_path / "x").exists()


def _manifest(tmp_path, text):
    path = tmp_path / "models.csv"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "lists no models"),
        ("name,clean_valid\na,b.h5\n", "no 'model' column"),
        ("model,colour\na.h5,red\n", "unknown column(s) 'colour'"),
        ("model,name\na.h5,x\nb.h5,x\n", "the name 'x' is used twice"),
        ("model,input_scale\na.h5,-3\n", "row 2: input_scale must be a positive number"),
        ("model,clean_valid\n,v.h5\n", "row 2: no model file"),
        ("model\na.h5,extra\n", "row 2 has more cells than the header"),
        ("name,model\na," + "x" * 200_000 + "\n", "not a readable CSV manifest"),
        ("model,model\na.h5,b.h5\n", "a column is named twice"),
        ("name,model\n" + "n" * 101 + ",a.h5\n", "longer than 100 characters"),
        ("name,model\nx,a.h5\nX,b.h5\n", "the name 'X' is used twice"),
    ],
)
def test_bad_manifests_get_one_line(tmp_path, capsys, text, message):
    code, _, err = run_cli(capsys, ["batch", _manifest(tmp_path, text), "--out", tmp_path / "o"])
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "o").exists()


def test_batch_defends_every_model_and_lists_refusals(demo_run, tmp_path, capsys):
    inputs = demo_run["inputs"]
    data = ",".join(inputs[r] for r in ("clean_valid", "clean_test", "poisoned_test"))
    path = _manifest(
        tmp_path,
        "\ufeff# two copies of the demo's B and one file that is not a model (and the "
        "byte-order mark a spreadsheet writes)\n"
        "name,model,clean_valid,clean_test,poisoned_test,input_scale\n"
        f"first,{demo_run['model']},{data},\n"
        f"second,{demo_run['model']},{data},1\n"
        f"broken,{path_of(tmp_path)},{data},\n",
    )
    code, out, err = run_cli(
        capsys,
        [
            "batch",
            path,
            "--repair",
            "fine-tune",
            "--epochs",
            "2",
            "--no-strip",
            "--out",
            tmp_path / "b",
            "--threads",
            "1",
        ],
    )
    assert code == 2 and "1 of 3 models were refused (first: broken" in err, err
    doc = json.loads((tmp_path / "b" / "batch.json").read_text())
    first, second, broken = doc["rows"]
    assert first["status"] == "repaired" and first["measured_on"] == "test" and first["error"] is None
    assert {k: v for k, v in first.items() if k not in ("name", "seconds")} == {
        k: v for k, v in second.items() if k not in ("name", "seconds")
    }  # the same model, the same numbers
    assert broken["status"] == "refused" and "unknown model format" in broken["error"]
    for name in ("first", "second"):
        assert_self_contained_page(tmp_path / "b" / "models" / name)
    page = assert_self_contained_page(tmp_path / "b", "batch.md", "batch.html")
    assert "Refused" in page and "| first | repaired |" in (tmp_path / "b" / "batch.md").read_text()
    assert not os.path.exists(tmp_path / ".b.cells")


def path_of(tmp_path):
    bad = tmp_path / "not_a_model.txt"
    bad.write_text("hello")
    return str(bad)


def started(x: int, log: str) -> dict:
    """A module-level task that records when it started, then takes a moment."""
    import time

    with open(os.path.join(log, f"{x}"), "w") as f:
        f.write(str(time.time_ns()))
    time.sleep(0.4)
    return {"x": x}


def test_a_pool_starts_the_costliest_cells_first_and_keeps_their_order(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    costs = [1.0, 9.0, 3.0, 7.0, 5.0]
    cells = [GridCell(f"c{i}", started, {"x": i, "log": str(log)}, cost=c) for i, c in enumerate(costs)]
    results = run_grid(cells, str(tmp_path / "state"), GridRunner(workers=2, threads=1))
    assert results == [{"x": i} for i in range(5)]  # in the cells' order
    begun = sorted(range(5), key=lambda i: int((log / str(i)).read_text()))
    assert set(begun[:2]) == {1, 3} and begun[-1] == 0  # 9 and 7 first, 1 last
    # the cost is a scheduling hint only: the same cells at other costs are the cells already run
    again = [GridCell(c.key, started, c.arguments, cost=1.0) for c in cells]
    for f in log.iterdir():
        f.unlink()
    assert run_grid(again, str(tmp_path / "state"), GridRunner(workers=2, threads=1)) == results
    assert not list(log.iterdir())


def test_a_cells_cost_is_its_repairs_relative_cost_times_the_models_arithmetic():
    from goodnet.models import build_model
    from goodnet.models.cost import multiply_adds
    from goodnet.repairs import REPAIRS

    model = build_model("small_cnn", num_classes=10, input_shape=(1, 28, 28))  # width 16
    convs = 28 * 28 * 16 * (1 * 9) + 14 * 14 * 32 * (16 * 9) + 7 * 7 * 64 * (32 * 9)
    assert multiply_adds(model, (1, 28, 28)) == convs + 64 * 3 * 3 * 128 + 128 * 10
    assert multiply_adds(model, (1, 4, 4)) == 0  # cannot run such an image: no estimate, no error
    assert all(r.relative_cost > 0 for r in REPAIRS.values())
    assert REPAIRS["anp"].relative_cost > REPAIRS["fine-tune"].relative_cost == 1.0 > REPAIRS["prune"].relative_cost


def test_the_eta_plays_the_rest_of_the_grid_forward_by_cost_on_its_workers(monkeypatch, capsys):
    from goodnet import grid as grid_module

    now = [0.0]
    monkeypatch.setattr(grid_module.time, "perf_counter", lambda: now[0])
    cells = [GridCell(f"c{i}", square, {"x": i}, cost=c) for i, c in enumerate([6.0, 3.0, 1.0])]
    weighed = grid_module._Progress("cells", 3, 0, cells, workers=1)
    counted = grid_module._Progress("cells", 3, 0, [replace(c, cost=1.0) for c in cells], workers=1)
    now[0] = 60.0  # the costliest cell, 6 of 10 units, took a minute: 4 units, 40 s, are left
    weighed.finished(cells[0], {}, None)
    counted.finished(cells[0], {}, None)  # every cell counts as one: 2 more minutes
    # two workers, cells of 6, 3, 2 and 1 units started costliest first: c1 (3 units) takes 30 s, so a
    # unit is 10 s; c0 ends at 60 s, c2 (started at 30 s) at 50 s, then c3 on that worker at 60 s
    pair = [GridCell(f"p{i}", square, {"x": i}, cost=c) for i, c in enumerate([6.0, 3.0, 2.0, 1.0])]
    now[0] = 0.0
    two = grid_module._Progress("cells", 4, 0, pair, workers=2)
    now[0] = 30.0
    two.finished(pair[1], {}, None)
    now[0] = 50.0
    two.finished(pair[2], {}, None)  # as foreseen: c0 ends in 10 s, c3 (started now) in 10 s
    now[0] = 70.0
    two.finished(pair[0], {}, None)  # 10 s late: c3 has had its 10 s, foreseen done now
    now[0] = 71.0
    two.finished(pair[3], {}, None)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[1/3 cells, 1 min 0 s, ETA 40 s] c0")
    assert err[1].startswith("[1/3 cells, 1 min 0 s, ETA 2 min 0 s] c0")
    assert [line.split("] ")[0] for line in err[2:]] == [
        "[1/4 cells, 30 s, ETA 30 s",
        "[2/4 cells, 50 s, ETA 10 s",
        "[3/4 cells, 1 min 10 s, ETA 0 s",
        "[4/4 cells, 1 min 11 s, done",
    ]
