"""The demo end to end: BadNet quality, the output directory, saved models, determinism."""

import csv
import json
import os

import pytest

from goodnet.cli import main
from goodnet.evaluation import evaluate_files
from goodnet.zoo.badnets import DemoSettings, cached_badnet, shipped_weights

pytestmark = pytest.mark.slow


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_badnet_meets_the_bar(demo_run):
    directory, manifest, reused = cached_badnet(DemoSettings(), demo_run["cache"])
    assert reused
    assert manifest["badnet"]["clean_test_accuracy"] >= 95
    assert manifest["badnet"]["poisoned_test_asr"] >= 95
    assert manifest["sizes"]["poisoned_in_train"] == 300


def test_output_directory(demo_run):
    out = demo_run["out"]
    for name in (
        "results.json",
        "curve.csv",
        "curve.png",
        "activations.png",
        "report.md",
        "clean_samples.png",
        "poisoned_samples.png",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    doc = _results(out)
    assert doc["layer"] == "conv_3" and doc["cut"] == "pool_3" and doc["order"] == "ascending"
    assert doc["drop"] == "absolute" and doc["num_channels"] == 64 and doc["num_classes"] == 10
    assert set(doc["baseline"]) == {"valid_accuracy", "test_accuracy", "valid_asr", "test_asr"}
    crossing = [t for t in doc["thresholds"] if t["rule"] == "crossing"]
    assert [t["x"] for t in crossing] == [2, 4, 10, 30]
    for t in crossing:
        assert len(t["pruned"]) == t["channels_pruned"] == len(set(t["pruned"]))
        assert t["valid_drop"] >= t["x"]
        assert set(t["goodnet"]) == {"test_accuracy", "test_asr", "flagged_poisoned", "flagged_clean"}
        for f in t["files"].values():
            assert os.path.isfile(os.path.join(out, f))
    for t in doc["thresholds"]:
        if t["rule"] == "within":
            assert t["valid_drop"] < t["x"] and t["files"] is None
    with open(os.path.join(out, "curve.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 65 and rows[0]["channels_pruned"] == "0"
    assert float(rows[0]["valid_accuracy"]) == doc["baseline"]["valid_accuracy"]
    report = open(os.path.join(out, "report.md")).read()
    assert "| G | x2_crossing |" in report and "curve.png" in report
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".partial-" in p]


def test_saved_models_reproduce_the_reported_numbers(demo_run):
    out, doc = demo_run["out"], _results(demo_run["out"])
    data = {role: path for role, path in doc["inputs"].items()}
    for t in doc["thresholds"]:
        if not t["files"]:
            continue
        acc, asr = evaluate_files(data["clean_test"], data["poisoned_test"], os.path.join(out, t["files"]["repaired"]))
        assert (round(acc, 4), round(asr, 4)) == (t["repaired"]["test_accuracy"], t["repaired"]["test_asr"])
        acc, asr = evaluate_files(data["clean_test"], data["poisoned_test"], os.path.join(out, t["files"]["goodnet"]))
        assert (round(acc, 4), round(asr, 4)) == (t["goodnet"]["test_accuracy"], t["goodnet"]["test_asr"])


def test_eval_prints_the_labs_two_lines(demo_run, capsys):
    doc = _results(demo_run["out"])
    model = os.path.join(demo_run["out"], doc["thresholds"][0]["files"]["goodnet"])
    assert main(["eval", doc["inputs"]["clean_test"], doc["inputs"]["poisoned_test"], model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Clean Classification accuracy: ") and lines[1].startswith("Attack Success Rate: ")
    assert float(lines[0].split(": ")[1]) == pytest.approx(doc["thresholds"][0]["goodnet"]["test_accuracy"], abs=1e-4)


def test_the_demo_ships_its_badnet_and_training_is_deterministic(demo_run, capsys):
    # the package holds the demo BadNet's weights for the current settings (stale ones would be ignored)
    assert shipped_weights(DemoSettings()) is not None
    # two trainings from scratch (--retrain, fresh caches) give the same numbers on one machine
    outs = []
    for k in (2, 3):
        outs.append(str(demo_run["base"] / f"out{k}"))
        assert (
            main(
                ["demo", "--out", outs[-1], "--cache-dir", str(demo_run["base"] / f"cache{k}"), "--retrain", "--quiet"]
            )
            == 0
        )
        assert "trained BadNet" in capsys.readouterr().out
    first, second = _results(outs[0]), _results(outs[1])
    first.pop("inputs"), second.pop("inputs")  # paths differ, numbers must not
    runs = first.pop("provenance"), second.pop("provenance")
    assert first == second
    # the same BadNet and data (by hash) from two trainings; only where they were written differs
    for part in ("model", "data"):
        assert [_without_paths(run[part]) for run in runs] == [_without_paths(runs[0][part])] * 2
    assert runs[0]["model"]["sha256"] and runs[0]["options"] == runs[1]["options"]


def _without_paths(record):
    if isinstance(record, dict):
        return {k: _without_paths(v) for k, v in record.items() if k != "path"}
    return record


def test_second_run_reuses_the_cached_badnet(demo_run, capsys):
    out3 = str(demo_run["base"] / "out_reused")
    assert main(["demo", "--out", out3, "--cache-dir", demo_run["cache"], "--quiet"]) == 0
    assert "reused cached BadNet" in capsys.readouterr().out
    assert _results(out3) == _results(demo_run["out"])
