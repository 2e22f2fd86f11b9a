"""Do no harm: repairs judged on held-out clean data they never fitted on, falling back (milder
settings, then B unchanged) past their budget and saying so; diverging training caught; data on
another scale than the model was trained on refused; the same repair whatever the pixel range."""

import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from goodnet.errors import TrainingDiverged
from goodnet.inference import predict
from goodnet.io.data import ImageSet, load_images, save_images
from goodnet.io.model_files import load_model, save_model
from goodnet.measure import run_repair
from goodnet.models.training import fine_tune, random_erase, random_shift
from goodnet.pruning.profiling import activation_order
from goodnet.pruning.zeroing import pruned_copy
from goodnet.repairs import FineTuning, Repair, RepairData, RepairedModel, RepairOutcome, setting
from goodnet.repairs.do_no_harm import guarded_repair


def _demo(demo_run):
    return demo_run["model"], demo_run["inputs"]


def _args(inputs):
    return sum(([f"--{role.replace('_', '-')}", path] for role, path in inputs.items()), [])


@dataclass(frozen=True)
class ZeroQuietest(Repair):  # not registered: the guard needs no registry
    name = "zero-quietest"
    description = "zero the --count channels of conv_3 that clean data uses least"
    count: int = setting(60, "channels", low=1)

    def milder(self):
        return [replace(self, count=self.count // 4), replace(self, count=2)]

    def repair(self, model, data, progress=False):
        channels = activation_order(model, data.clean_valid.x, "conv_3")[: self.count]
        return RepairOutcome([RepairedModel(self.name, pruned_copy(model, "conv_3", channels), {"conv_3": channels})])


def test_the_guard_falls_back_to_milder_settings_judged_on_held_out_data(demo_run):
    model_path, inputs = _demo(demo_run)
    model, clean = load_model(model_path), load_images(inputs["clean_valid"])
    labels = predict(model, clean.x)
    delivered, outcome, check = guarded_repair(model, ZeroQuietest(), RepairData(clean), labels)
    assert [a.status for a in check.attempts][0] == "past budget" and check.fell_back
    assert check.delivered == "milder settings" and delivered.count in (15, 2)
    assert check.attempts[-1].drop <= 2.0 and check.held_out_images == 200
    assert check.attempts[0].changed == {} and check.attempts[-1].changed == {"count": delivered.count}
    doc = check.to_json()
    assert doc["within_budget"] and not doc["requested_within_budget"] and doc["fell_back_from"]["drop"] > 2
    assert "WARNING" in check.line(ZeroQuietest()) and "milder" in check.line(ZeroQuietest())


def test_a_destructive_setting_falls_back_and_says_so(demo_run, tmp_path, capsys):
    model_path, inputs = _demo(demo_run)
    code, out, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            model_path,
            *_args(inputs),
            "--repair",
            "fine-tune",
            "--lr",
            "40",
            "--epochs",
            "2",
            "--out",
            tmp_path / "o",
            "--quiet",
        ],
    )
    assert code == 0, err
    assert "WARNING: do no harm: fine-tune" in err and "WARNING: do no harm" in out
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    harm = doc["do_no_harm"]
    assert not harm["requested_within_budget"] and harm["within_budget"] and harm["fell_back_from"]["drop"] > 2
    assert harm["delivered"] in ("milder settings", "B unchanged") and harm["delivered_drop"] <= 2
    assert len(harm["attempts"]) >= 2 and harm["held_out_images"] == 200
    assert "**WARNING: do no harm" in (tmp_path / "o" / "report.md").read_text()
    # the delivered B' keeps the budget on the clean test data too (which chose nothing)
    test = doc["metrics"]["clean_test"]
    assert test["backdoored"] - test["repaired"] <= 3.0


def test_diverging_training_is_caught_and_never_returned(demo_run):
    model_path, inputs = _demo(demo_run)
    model, clean = load_model(model_path), load_images(inputs["clean_valid"])
    with pytest.raises(TrainingDiverged, match="diverged"):
        fine_tune(model, clean.x[:128], clean.y[:128], 1, 0, value_range=(0.0, 255.0), lr=1e38)
    labels = predict(load_model(model_path), clean.x)
    _, outcome, check = guarded_repair(load_model(model_path), FineTuning(lr=1e38, epochs=1), RepairData(clean), labels)
    assert check.attempts[0].status.startswith("diverged") and check.attempts[0].held_out_accuracy is None
    for m in outcome.models:
        assert all(torch.isfinite(p).all() for p in m.model.parameters())


def test_data_on_another_scale_than_the_model_is_refused(demo_run, tmp_path, capsys):
    model_path, inputs = _demo(demo_run)
    assert load_model(model_path).input_range == (0.0, 255.0)  # recorded in the file at training
    code, _, err = run_cli(
        capsys,
        ["defend", "--model", model_path, *_args(inputs), "--input-scale", "255", "--out", tmp_path / "o", "--quiet"],
    )
    assert_one_line_error(code, err, "values lie in 0..1 but the model was trained on 0..255")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(
        capsys, ["eval", inputs["clean_test"], inputs["poisoned_test"], model_path, "--input-scale", "255"]
    )
    assert_one_line_error(code, err, "trained on 0..255")


def test_eval_warns_when_a_model_without_a_recorded_range_scores_like_chance(demo_run, tmp_path, capsys):
    model_path, inputs = _demo(demo_run)
    b = load_model(model_path)
    b.input_range = None  # as a file from elsewhere: nothing says what scale it takes
    save_model(b, str(tmp_path / "norange.safetensors"))
    argv = ["eval", inputs["clean_test"], inputs["poisoned_test"], tmp_path / "norange.safetensors"]
    code, out, err = run_cli(capsys, [*argv, "--input-scale", "255"])
    assert code == 0 and "Clean Classification accuracy:" in out  # the lab's two numbers, as asked
    assert "goodnet: warning: the model is not clearly better than chance on the clean data" in err
    assert "the data hold 0..1, the model file records none; --input-scale divides the data" in err
    code, out, err = run_cli(capsys, argv)  # on its own scale: no warning
    assert code == 0 and "not clearly better than chance" not in err


def test_the_same_repair_whatever_the_pixel_range(demo_run, tmp_path):
    """The demo BadNet divides raw pixels by 255 itself; the same network taking [0, 1] data (its
    divisor set to 1) must get the same repair on the same images given in [0, 1]."""
    model_path, inputs = _demo(demo_run)
    raw = {role: load_images(path) for role, path in inputs.items()}
    unit = {role: ImageSet(s.x / np.float32(255), s.y, s.name) for role, s in raw.items()}
    b255 = load_model(model_path)
    b1 = load_model(model_path)
    b1.input_divisor, b1.input_range = 1.0, (0.0, 1.0)
    save_model(b1, str(tmp_path / "b1.safetensors"))
    b1 = load_model(str(tmp_path / "b1.safetensors"))
    np.testing.assert_array_equal(predict(b255, raw["clean_test"].x), predict(b1, unit["clean_test"].x))
    repair = FineTuning(epochs=8)
    results = [run_repair(b, repair, sets) for b, sets in ((b255, raw), (b1, unit))]
    scores = [r.models[0].metrics for r in results]
    for role in ("clean_test", "poisoned_test"):
        assert abs(scores[0][role]["repaired"] - scores[1][role]["repaired"]) <= 1.0, role
    assert all(r.harm.delivered == "as asked" for r in results)
    assert scores[1]["clean_test"]["repaired"] >= scores[1]["clean_test"]["backdoored"] - 2
    # given as 0..255 files with --input-scale 255 the [0, 1] model gets exactly the same repair
    files = {}
    for role, s in raw.items():
        files[role] = str(tmp_path / f"{role}.h5")
        save_images(files[role], s)
    from goodnet.io.data import load_sets

    scaled = run_repair(b1, repair, load_sets(files, input_scale=255.0))
    for role in scaled.data:
        np.testing.assert_array_equal(scaled.models[0].labels[role], results[1].models[0].labels[role])


def _shift_loop(x, dy, dx, pixels, fill=0.0):
    padded = torch.nn.functional.pad(x, (pixels,) * 4, value=fill)
    h, w = x.shape[2:]
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(x))])


def test_vectorised_augmentation_matches_its_definition():
    x = torch.rand(32, 3, 11, 9) * 255
    shifted = random_shift(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 5, (32,), generator=g), torch.randint(0, 5, (32,), generator=g)
    torch.testing.assert_close(shifted, _shift_loop(x, dy, dx, 2), rtol=0, atol=0)
    cropped = random_shift(x[:, :1], torch.Generator().manual_seed(6), pixels=4, fill=-1.0)  # crops, grey
    g = torch.Generator().manual_seed(6)
    dy, dx = torch.randint(0, 9, (32,), generator=g), torch.randint(0, 9, (32,), generator=g)
    torch.testing.assert_close(cropped, _shift_loop(x[:, :1], dy, dx, 4, fill=-1.0), rtol=0, atol=0)
    for low, high in ((0.0, 1.0), (0.0, 255.0), (-1.0, 1.0)):
        data = torch.rand(200, 3, 20, 20) * (high - low) + low
        erased = random_erase(data, torch.Generator().manual_seed(1), (low, high), p=0.5)
        assert erased.min() >= low and erased.max() <= high
        changed = (erased != data).flatten(1).any(1)
        assert 0.3 < changed.float().mean() < 0.7  # about half the images, p = 0.5
        share = (erased != data).flatten(1).float().mean(1)[changed]
        assert share.max() <= 0.16 * 1.3 and share.min() > 0  # a rectangle of 2-15 % of the image
