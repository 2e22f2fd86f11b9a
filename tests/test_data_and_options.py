import json
import os

import numpy as np
import pytest

from goodnet.cli import main
from goodnet.errors import GoodnetError
from goodnet.io.data import ImageSet, load_images, save_images


def test_npz_and_h5_read_the_same(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 3, 5, 4)).astype(np.uint8), np.arange(6)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    save_images(str(tmp_path / "d.h5"), ImageSet(x.astype(np.float32), y))
    a, b = load_images(str(tmp_path / "d.npz")), load_images(str(tmp_path / "d.h5"))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.dtype == np.float32 and a.y.dtype == np.int64 and a.image_shape == (3, 5, 4)


def test_input_scale_divides_values(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((2, 1, 2, 2), 255.0), y=np.zeros(2))
    assert load_images(str(tmp_path / "d.npz"), input_scale=255).x.max() == 1.0
    with pytest.raises(GoodnetError, match="positive"):
        load_images(str(tmp_path / "d.npz"), input_scale=0)


def test_unknown_extension(tmp_path):
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(GoodnetError, match="unknown data format"):
        load_images(str(tmp_path / "d.csv"))


@pytest.mark.slow
def test_relative_drop_and_both_rules(demo_run, tmp_path, capsys):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        inputs = json.load(f)["inputs"]
    model = next(
        os.path.join(os.path.dirname(inputs["clean_valid"]), n)
        for n in os.listdir(os.path.dirname(inputs["clean_valid"]))
        if n.endswith(".safetensors")
    )
    out = str(tmp_path / "rel")
    argv = [
        "defend",
        "--model",
        model,
        "--clean-valid",
        inputs["clean_valid"],
        "--clean-test",
        inputs["clean_test"],
        "--relative",
        "--rule",
        "both",
        "--thresholds",
        "3",
        "50",
        "--out",
        out,
        "--quiet",
    ]
    assert main(argv) == 0
    with open(os.path.join(out, "results.json")) as f:
        doc = json.load(f)
    assert doc["drop"] == "relative"
    by = {(t["x"], t["rule"]): t for t in doc["thresholds"]}
    cross, within = by[(3, "crossing")], by[(3, "within")]
    assert within["channels_pruned"] == cross["channels_pruned"] - 1
    assert within["valid_drop"] < 3 <= cross["valid_drop"]
    assert os.path.isfile(os.path.join(out, within["files"]["goodnet"]))
    # No poisoned data given: ASR and detection are null, not invented.
    assert cross["repaired"]["test_asr"] is None and cross["goodnet"]["flagged_poisoned"] is None
    assert "| G | x3_within |" in capsys.readouterr().out
