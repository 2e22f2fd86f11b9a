"""The re-learning test (does a repair hold?): each B' and a clean reference are tuned on the clean
validation images with a few replaced by poisoned ones, as the Retuning Attack of Min et al.
(NeurIPS 2024) tunes them, and a B' that re-learns the backdoor far past the clean model is flagged.
Tiny models on scikit-learn's 8x8 digits, trained in the test."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, poisoned_training_set, run_cli, shuffled_digits, stamp_corner

from goodnet.errors import DataError, ModelError, SettingsError
from goodnet.io.data import ImageSet
from goodnet.measure.relearning import (
    DORMANT,
    HOLDS,
    NOT_REMOVED,
    Relearned,
    RelearnSettings,
    RelearnTest,
    judge,
    relearn,
    tuning_set,
)
from goodnet.metrics import proportion_interval
from goodnet.models import SmallCNN
from goodnet.models.training import fine_tune, train_classifier


@pytest.fixture(scope="module")
def digits():
    x, y = shuffled_digits()
    parts = {"train": slice(0, 1000), "valid": slice(1000, 1400), "test": slice(1400, None)}

    def poisoned(part: str) -> ImageSet:
        keep = y[parts[part]] != 0  # ASR on images whose true label is not the target
        return ImageSet(stamp_corner(x[parts[part]][keep]), np.zeros(int(keep.sum()), np.int64), f"poisoned {part}")

    data = {
        "clean_valid": ImageSet(x[parts["valid"]], y[parts["valid"]], "clean valid"),
        "poisoned_valid": poisoned("valid"),
        "clean_test": ImageSet(x[parts["test"]], y[parts["test"]], "clean test"),
        "poisoned_test": poisoned("test"),
    }

    def model(seed: int, x_train: np.ndarray, y_train: np.ndarray) -> SmallCNN:
        torch.manual_seed(seed)
        net = SmallCNN(num_classes=10, input_shape=(1, 8, 8), input_divisor=16.0, width=8)
        return train_classifier(net, x_train, y_train, 25, seed, progress=False).eval()

    train_x, train_y = x[parts["train"]], y[parts["train"]]
    poisoned_x, poisoned_y = poisoned_training_set(train_x, train_y)
    backdoored = model(1, poisoned_x, poisoned_y)
    # a repair that only hides the backdoor: plain fine-tuning on the clean validation images
    hidden = fine_tune(
        copy.deepcopy(backdoored),
        *(data["clean_valid"].x, data["clean_valid"].y),
        10,
        0,
        value_range=(0.0, 16.0),
        augment=False,
    )
    return {
        "data": data,
        "clean": model(0, train_x, train_y),
        "other_clean": model(2, train_x, train_y),
        "backdoored": backdoored,
        "hidden": hidden,
    }


def test_a_clean_model_holds_and_a_hidden_backdoor_relearns_far_faster_than_the_clean_reference(digits):
    result = relearn(
        {"clean": digits["other_clean"], "hidden": digits["hidden"], "B": digits["backdoored"]},
        digits["data"],
        RelearnSettings(poisoned=10),  # 10 of 400 images: 2.5 %, on these tiny sets
        reference=digits["clean"],
        reference_name="clean model, seed 0",
    )
    by_name = {entry.model: entry for entry in result.models}
    reference = result.reference.asr_after.value
    assert by_name["clean"].state == HOLDS and by_name["clean"].asr_after.value < 10
    hidden = by_name["hidden"]
    assert hidden.asr_before.value < hidden.asr_after.value - 20  # the tuning brought it back
    assert hidden.asr_after.value > reference + 20 and hidden.state == DORMANT and hidden.dormant
    assert by_name["B"].state == NOT_REMOVED  # never removed: not "dormant"
    assert "DORMANT BACKDOOR" in result.line(hidden) and "holds" in result.line(by_name["clean"])
    assert len(hidden.asr_by_epoch) == 5 and hidden.epochs_to_half is not None
    # the same seed gives the same numbers
    again = relearn(
        {"hidden": digits["hidden"]}, digits["data"], RelearnSettings(poisoned=10), reference=digits["clean"]
    )
    assert again.models[0].asr_by_epoch == hidden.asr_by_epoch
    # the models handed in are not changed: the test tunes copies
    before = proportion_interval(
        int((digits["hidden"](torch.from_numpy(digits["data"]["poisoned_test"].x)).argmax(1) == 0).sum()),
        len(digits["data"]["poisoned_test"]),
    )
    assert before.value == pytest.approx(hidden.asr_before.value)


def test_a_reference_that_is_not_clean_judges_nothing(digits):
    result = relearn(
        {"hidden": digits["hidden"]}, digits["data"], RelearnSettings(epochs=1), reference=digits["backdoored"]
    )
    assert "not a clean model" in result.reference_problem and result.models[0].state is None
    assert "NOT JUDGED" in result.line(result.models[0])


def test_without_a_reference_the_asrs_are_reported_but_not_judged(digits):
    result = relearn({"hidden": digits["hidden"]}, digits["data"], RelearnSettings(epochs=1))
    entry = result.models[0]
    assert entry.state is None and entry.dormant is None and result.reference is None
    assert "no clean reference to judge by" in result.line(entry)
    doc = result.to_json()
    assert doc["reference"] is None and doc["models"][0]["dormant_backdoor"] is None
    assert doc["settings"]["poisoned"] == 5 and doc["settings"]["lr"] == 0.01 and doc["settings"]["momentum"] == 0.9


def test_the_tuning_set_replaces_clean_images_by_poisoned_ones_as_the_authors_code_does():
    clean = ImageSet(np.zeros((20, 1, 2, 2), np.float32), np.arange(20) % 5 + 1, "c")
    poisoned = ImageSet(np.ones((10, 1, 2, 2), np.float32), np.zeros(10, np.int64), "p")
    x, y = tuning_set(clean, poisoned, 5, seed=3)
    assert len(x) == 20 and (y == 0).sum() == 5 and (x.reshape(20, -1).max(1) == 1).sum() == 5
    assert np.array_equal(tuning_set(clean, poisoned, 5, seed=3)[1], y)  # seeded
    with pytest.raises(DataError, match="only 20 clean and 10 poisoned"):
        tuning_set(clean, poisoned, 11, seed=0)
    # at most `size` clean images (the authors' 1,000 by default), drawn with the seed
    x, y = tuning_set(clean, poisoned, 5, seed=3, size=8)
    assert len(x) == 8 and (y == 0).sum() == 5


def _entry(before: float, after: float, n: int = 900) -> Relearned:
    return Relearned(
        "m",
        proportion_interval(round(before * n / 100), n),
        (after,),
        proportion_interval(round(after * n / 100), n),
        None,
        None,
    )


def test_judgement_holds_dormant_and_not_removed():
    reference = _entry(0.2, 1.0)
    assert judge(_entry(0.5, 15.0), reference, 20) == HOLDS  # past it, but by less than the margin
    assert judge(_entry(0.5, 80.0), reference, 20) == DORMANT
    assert judge(_entry(20.0, 70.0), reference, 20) == DORMANT  # partly removed, then back
    assert judge(_entry(95.0, 96.0), reference, 20) == NOT_REMOVED
    assert judge(_entry(17.5, 21.8), reference, 20) == NOT_REMOVED  # partly removed, and tuning did not raise it
    assert judge(_entry(0.0, 25.0, n=20), _entry(0.0, 0.0, n=20), 20) == HOLDS  # 20 images: within the noise


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"poisoned": 0}, "poisoned must be an integer of at least 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"lr": float("nan")}, "lr must be a number above 0"),
        ({"momentum": 1.0}, "momentum must be a number at least 0 and below 1"),
        ({"margin": 101}, "margin must be a number between 0 and 100"),
    ],
)
def test_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(SettingsError, match=message):
        RelearnSettings(**settings)


def test_run_repair_refuses_a_reference_of_another_kind_and_missing_data(digits):
    from goodnet.measure.runner import run_repair

    data = dict(digits["data"])
    other = SmallCNN(num_classes=7, input_shape=(1, 8, 8), input_divisor=16.0, width=8)
    with pytest.raises(ModelError, match="must be a model of B's kind"):
        run_repair(digits["backdoored"], "fine-tune", data, relearn=RelearnTest(reference=other))
    narrower = SmallCNN(num_classes=10, input_shape=(1, 8, 8), input_divisor=16.0, width=4)
    with pytest.raises(ModelError, match="must be B's architecture"):
        run_repair(digits["backdoored"], "fine-tune", data, relearn=RelearnTest(reference=narrower))
    # too few validation images for the poisoned ones: refused before the repair runs
    with pytest.raises(DataError, match="only 400 clean and 365 poisoned"):
        run_repair(digits["backdoored"], "fine-tune", data, relearn=RelearnTest(RelearnSettings(poisoned=380)))
    del data["poisoned_valid"]
    with pytest.raises(DataError, match="missing: poisoned-valid"):
        run_repair(digits["backdoored"], "fine-tune", data, relearn=RelearnTest())


def test_defend_reports_the_relearning_test_in_results_report_and_cli(demo_run, tmp_path, capsys):
    inputs = demo_run["inputs"]
    argv = ["defend", "--model", demo_run["model"], "--repair", "channels", "--layer", "conv_3", "--channels", "0"]
    for role in ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test"):
        argv += [f"--{role.replace('_', '-')}", inputs[role]]
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        argv
        + [
            "--relearn",
            "--relearn-epochs",
            "1",
            "--relearn-reference",
            demo_run["model"],
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert code == 0, err
    with open(out / "results.json") as f:
        doc = json.load(f)
    relearning = doc["relearning"]
    assert relearning["settings"]["epochs"] == 1 and relearning["tuning_images"] == doc["sizes"]["clean_valid"]
    assert (
        relearning["models"][0]["model"] == "channels" and relearning["reference_model"]["model"] == "clean reference"
    )
    assert doc["provenance"]["options"]["relearn"]["epochs"] == 1
    assert doc["provenance"]["options"]["relearn_reference"]["sha256"] == doc["provenance"]["model"]["sha256"]
    with open(out / "report.md") as f:
        assert "## Does the repair hold? (re-learning)" in f.read()
    # B is no clean reference: its own ASR is past the margin before tuning, so nothing is judged
    assert "not a clean model" in relearning["reference_problem"] and relearning["models"][0]["state"] is None
    lines = [line for line in stdout.splitlines() if line.startswith("re-learning: channels: ASR ")]
    assert len(lines) == 1 and "after 1 epoch on" in lines[0] and "NOT JUDGED" in lines[0]
    # the options are refused without --relearn, and --relearn without the data it needs
    code, _, err = run_cli(capsys, argv + ["--relearn-epochs", "2", "--out", str(tmp_path / "x"), "--quiet"])
    assert_one_line_error(code, err, "--relearn-epochs sets the re-learning test: add --relearn")
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            demo_run["model"],
            "--clean-valid",
            inputs["clean_valid"],
            "--relearn",
            "--out",
            str(tmp_path / "y"),
            "--quiet",
        ],
    )
    assert_one_line_error(code, err, "give --poisoned-valid, --poisoned-test")
    for reference, message in ((tmp_path / "missing.safetensors", "missing.safetensors"), (tmp_path, "a model file")):
        code, _, err = run_cli(
            capsys,
            argv + ["--relearn", "--relearn-reference", str(reference), "--out", str(tmp_path / "z"), "--quiet"],
        )
        assert_one_line_error(code, err, message)
    code, _, err = run_cli(
        capsys, argv + ["--relearn", "--relearn-poisoned", "5000", "--out", str(tmp_path / "w"), "--quiet"]
    )
    assert_one_line_error(code, err, "cannot replace clean ones in a tuning set of 1000")
    for name in ("x", "y", "z", "w"):
        assert not (tmp_path / name).exists()


def test_a_zoo_folder_can_carry_its_clean_reference_for_relearning(tmp_path):
    from goodnet.zoo.badnets import MANIFEST, REFERENCE_FILE, DemoSettings, build_badnet, shipped_weights

    weights = shipped_weights(DemoSettings())  # no training: the demo's shipped BadNet
    out = tmp_path / "badnet"
    manifest = build_badnet(DemoSettings(), str(out), progress=False, weights=weights, reference_model=weights)
    assert manifest["files"]["clean_reference"] == REFERENCE_FILE
    assert (out / REFERENCE_FILE).read_bytes() == open(weights, "rb").read()
    assert json.loads((out / MANIFEST).read_text())["files"]["clean_reference"] == REFERENCE_FILE


def test_compare_relearn_judges_each_repair_by_the_zoo_badnets_clean_reference(zoo_cache, tmp_path, capsys):
    from conftest import ZOO_CELL

    out = tmp_path / "compare"
    argv = ["compare", *ZOO_CELL, "--repairs", "prune", "--relearn", "--relearn-epochs", "2"]
    code, stdout, err = run_cli(capsys, [*argv, "--out", out, "--cache-dir", zoo_cache, "--quiet"])
    assert code == 0, err
    doc = json.loads((out / "comparison.json").read_text())
    (row,) = doc["rows"]
    assert doc["relearn"]["epochs"] == 2 and doc["relearn"]["poisoned"] == 5
    # the lab's pruning leaves the patch backdoor in place: not removed, far past the clean reference
    assert row["relearn_state"] == NOT_REMOVED and row["relearn_asr"] > 80
    assert row["relearn_reference_asr"] < 20  # the judge is a clean model
    table = (out / "comparison.md").read_text()
    assert (
        "## Does the repair hold? (re-learning)" in table and "| prune | 0 of 1 | 0 of 1 | 1 of 1 | 0 of 1 |" in table
    )
    assert "re-learning (does the repair hold?):" in stdout
    assert "relearn_state" in (out / "comparison.csv").read_text().splitlines()[0]
    # defend's reference option is not compare's: the zoo supplies the reference
    code, _, err = run_cli(capsys, [*argv, "--relearn-reference", "ref.safetensors", "--out", tmp_path / "x"])
    assert code == 2 and "unrecognized arguments: --relearn-reference" in err and not (tmp_path / "x").exists()
