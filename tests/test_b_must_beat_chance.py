"""Sanity before work: a B at chance on its clean validation data stops before any repair runs,
with one line naming the likely causes; --force goes on and every output says so."""

import json
import math
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from goodnet.io.data import ImageSet, load_images, save_images
from goodnet.metrics import binomial_tail


def test_binomial_tail_matches_the_exact_sum():
    def exact(k, n, p):
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))

    for k, n, p in ((13, 100, 0.1), (110, 1000, 0.1), (5, 5, 0.5), (30, 40, 0.25)):
        assert binomial_tail(k, n, p) == pytest.approx(exact(k, n, p), rel=1e-9)
    assert binomial_tail(5, 100, 0.1) == 1.0 and binomial_tail(960, 1000, 0.1) < 1e-300


def test_a_model_at_chance_is_refused_unless_forced(demo_run, tmp_path, capsys):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        doc = json.load(f)
    assert doc["sanity"]["above_chance"] and doc["sanity"]["chance"] == 10.0
    assert doc["value_range"]["clean_valid"] == [0.0, 255.0] and doc["input_scale"] == 1.0
    inputs = doc["inputs"]
    model = os.path.join(os.path.dirname(inputs["clean_valid"]), "badnet.safetensors")
    # labels that do not belong to the images (shuffled): the model cannot beat chance on them
    clean = load_images(inputs["clean_valid"])
    shuffled = str(tmp_path / "shuffled.h5")
    save_images(shuffled, ImageSet(clean.x, np.random.default_rng(0).permutation(clean.y), "shuffled"))
    argv = [
        "defend",
        "--model",
        model,
        "--clean-valid",
        shuffled,
        "--clean-test",
        inputs["clean_test"],
        "--thresholds",
        "2",
        "--out",
        tmp_path / "out",
        "--quiet",
    ]
    code, _, err = run_cli(capsys, argv)
    assert_one_line_error(code, err, "B is not clearly better than chance on the clean validation data")
    assert "--input-scale" in err and "labels" in err and "--force" in err and not (tmp_path / "out").exists()
    code, out, err = run_cli(capsys, argv + ["--force"])
    assert code == 0, err
    assert out.startswith("FORCED: B was not clearly better than chance")
    forced = json.loads((tmp_path / "out" / "results.json").read_text())
    assert forced["sanity"]["forced"] and not forced["sanity"]["above_chance"]
    assert "**FORCED:" in (tmp_path / "out" / "report.md").read_text()
