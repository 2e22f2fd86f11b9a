"""The attack zoo's poisoning, the repairs' contracts, and the comparison table against a re-run."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import ZOO_CELL, assert_one_line_error, assert_self_contained_page, run_cli

from goodnet.errors import GoodnetError
from goodnet.io.data import ImageSet, load_images
from goodnet.io.model_files import load_model
from goodnet.metrics import model_accuracy
from goodnet.pruning.graph_split import conv_layers
from goodnet.repairs import AttackAwarePruning, FinePruning, ReconstructiveNeuronPruning, RepairData
from goodnet.zoo.attacks import KINDS, Attack
from goodnet.zoo.badnets import DATA_FILES, MODEL_FILE
from goodnet.zoo.mnist import mnist_subset
from goodnet.zoo.triggers import BlendTrigger, PatchTrigger, SunglassesTrigger


@pytest.fixture(scope="module")
def digits():
    x, y = mnist_subset()
    return ImageSet(x[::10].copy(), y[::10].copy(), "digits")  # 500 images, 50 per class


def _changed(before, after):
    return (before != after).any(axis=(0, 1))  # (H, W): pixels changed in any image


@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_evaluation_sets(kind, digits):
    attack = Attack(kind, target=3)
    poisoned = attack.poisoned_set(digits, 10, "p")
    eligible = digits.y != 3 if kind != "all-to-all" else np.ones(len(digits.y), bool)
    assert len(poisoned.y) == eligible.sum()
    if kind == "all-to-all":
        np.testing.assert_array_equal(poisoned.y, (digits.y + 1) % 10)
    else:
        assert (poisoned.y == 3).all()
    before = digits.x[eligible]
    changed = _changed(before, poisoned.x)
    if kind in ("patch", "all-to-all"):
        rows, cols = PatchTrigger().region(28, 28)
        allowed = np.zeros((28, 28), bool)
        allowed[rows, cols] = True
        assert (poisoned.x[:, :, allowed] == 255).all() and not changed[~allowed].any()
    elif kind == "sunglasses":
        mask = SunglassesTrigger().mask(28, 28)
        assert mask.sum() > 3 * 16  # larger than the 4x4 patch
        assert (poisoned.x[:, :, mask] == 255).all() and not changed[~mask].any()
    elif kind != "blended":  # wanet, sig, moving-patch: tests/test_triggers.py checks them in detail
        np.testing.assert_array_equal(poisoned.x, attack.trigger.apply(before))
        assert (poisoned.x != before).any(axis=(1, 2, 3)).all()
    else:
        trigger = BlendTrigger()
        expected = (0.9 * before + 0.1 * trigger.pattern(before.shape[1:])[None]).astype(np.float32)
        np.testing.assert_allclose(poisoned.x, expected, rtol=1e-6)
        assert changed.mean() > 0.99  # a full-image pattern


@pytest.mark.parametrize("kind", KINDS)
def test_training_set_poisoning_rate_and_labels(kind, digits):
    attack = Attack(kind, target=0)
    x, y, chosen = attack.poison_training_set(digits.x, digits.y, 0.1, 10, np.random.default_rng(1))
    assert len(chosen) == 50 == len(set(chosen.tolist()))
    untouched = np.setdiff1d(np.arange(len(y)), chosen)
    np.testing.assert_array_equal(x[untouched], digits.x[untouched])
    np.testing.assert_array_equal(y[untouched], digits.y[untouched])
    replay = np.random.default_rng(1)  # the same draws: the choice, then the trigger's own (moving patch)
    np.testing.assert_array_equal(chosen, replay.choice(np.flatnonzero(attack.eligible(digits.y)), 50, replace=False))
    np.testing.assert_array_equal(x[chosen], attack.trigger.apply(digits.x[chosen], rng=replay))
    if kind == "all-to-all":
        np.testing.assert_array_equal(y[chosen], (digits.y[chosen] + 1) % 10)
    else:
        assert (digits.y[chosen] != 0).all() and (y[chosen] == 0).all()
    with pytest.raises(GoodnetError, match="poison rate"):
        attack.poison_training_set(digits.x, digits.y, 1.5, 10, np.random.default_rng(1))


def _demo(demo_run):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        inputs = json.load(f)["inputs"]
    sets = {role: load_images(path) for role, path in inputs.items()}
    directory = os.path.dirname(inputs["clean_valid"])
    return load_model(os.path.join(directory, MODEL_FILE)), sets, directory


def score(model, images):
    return model_accuracy(model, images.x, images.y)


class Tripwire(ImageSet):
    """Poisoned data that fails the test the moment anything reads it."""

    def __getattribute__(self, name):
        if name in ("x", "y"):
            raise AssertionError("a clean-data repair read poisoned data")
        return object.__getattribute__(self, name)


@pytest.mark.slow
def test_fine_pruning_uses_clean_data_only_and_keeps_pruned_channels(demo_run):
    model, sets, _ = _demo(demo_run)
    trap = Tripwire(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, np.int64), "trap")
    repair = FinePruning(epochs=2, budgets=(4.0,))
    outcome = repair.run(model, RepairData(sets["clean_valid"], trap))
    again = repair.run(model, RepairData(sets["clean_valid"]))
    for a, b in zip(outcome.models[0].model.state_dict().values(), again.models[0].model.state_dict().values()):
        assert torch.equal(a, b)  # deterministic, and poisoned data changes nothing
    pruned = outcome.details["pruned"]["conv_3"]
    assert (
        pruned
        and not outcome.models[0].model.conv_3.weight[pruned].any()
        and not outcome.models[0].model.conv_3.bias[pruned].any()
    )
    assert outcome.models[0].model.conv_3.weight.abs().sum() != model.conv_3.weight.abs().sum()  # it was fine-tuned
    by_fraction = FinePruning(epochs=1, budgets=(), fractions=(0.5,)).run(model, RepairData(sets["clean_valid"]))
    assert len(by_fraction.details["pruned"]["conv_3"]) == 32 and by_fraction.details["chosen"] == "fraction=0.5"
    rnp = ReconstructiveNeuronPruning(unlearn_epochs=2, recover_epochs=2).run(
        model, RepairData(sets["clean_valid"], trap)
    )
    # no BatchNorm in the demo CNN: RNP masks and prunes conv kernels, keeping their biases
    assert rnp.details["masked"] == "conv"
    expected = {layer: [c for c, v in enumerate(m) if v <= 0.2] for layer, m in rnp.details["masks"].items()}
    assert rnp.details["pruned"] == {layer: c for layer, c in expected.items() if c}
    repaired = dict(rnp.models[0].model.named_modules())
    for layer, channels in rnp.details["pruned"].items():
        assert not repaired[layer].weight[channels].any()
        assert torch.equal(repaired[layer].bias, dict(model.named_modules())[layer].bias)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [0.5, 2.0])
def test_attack_aware_oracle_keeps_budget_and_tries_channel_0(demo_run, budget):
    model, sets, _ = _demo(demo_run)
    with pytest.raises(GoodnetError, match="oracle"):
        AttackAwarePruning(budget=budget).run(model, RepairData(sets["clean_valid"]))
    outcome = AttackAwarePruning(budget=budget).run(model, RepairData(sets["clean_valid"], sets["poisoned_valid"]))
    drop = score(model, sets["clean_valid"]) - score(outcome.models[0].model, sets["clean_valid"])
    assert drop < budget and abs(drop - outcome.details["valid_drop"]) < 1e-9
    last_three = conv_layers(model)[-3:]
    assert outcome.details["trials"] == sum(dict(model.named_modules())[layer].out_channels for layer in last_three)
    assert score(outcome.models[0].model, sets["poisoned_valid"]) <= score(model, sets["poisoned_valid"])
    assert outcome.details["oracle"] is True


@pytest.mark.slow
def test_comparison_cell_equals_a_rerun(zoo_cache, tmp_path, capsys):
    out = tmp_path / "compare"
    code, _, err = run_cli(
        capsys, ["compare", *ZOO_CELL, "--repairs", "fine-prune", "--out", out, "--cache-dir", zoo_cache, "--quiet"]
    )
    assert code == 0, err
    doc = json.loads((out / "comparison.json").read_text())
    (row,) = doc["rows"]
    (label,) = doc["badnets"]
    directory = doc["zoo"][label]["directory"]
    assert doc["zoo"][label]["meets_bar"] and doc["zoo"][label]["part"] == "dev" and row["badnet"] == label
    paths = {role: os.path.join(directory, name) for role, name in DATA_FILES.items()}
    code, _, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            os.path.join(directory, MODEL_FILE),
            "--repair",
            "fine-prune",
            *sum(([f"--{r.replace('_', '-')}", p] for r, p in paths.items()), []),
            "--out",
            tmp_path / "cell",
            "--quiet",
        ],
    )
    assert code == 0, err
    cell = json.loads((tmp_path / "cell" / "results.json").read_text())["metrics"]
    assert abs(cell["clean_test"]["repaired"] - row["clean_acc"]) < 1e-3
    assert abs(cell["poisoned_test"]["repaired"] - row["asr"]) < 1e-3
    assert abs(cell["poisoned_test"]["flagged"] - row["detection"]) < 1e-3
    assert abs(cell["clean_test"]["flagged"] - row["false_alarm"]) < 1e-3
    assert abs(cell["clean_test"]["goodnet"] - row["g_clean_acc"]) < 1e-3
    table = (out / "comparison.md").read_text()
    assert f"| {label} | fine-prune | no | {row['b_clean_acc']:.2f} |" in table
    assert "| fine-prune | no | " in table.split("## Every BadNet")[0]  # the per-repair summary
    assert (out / "comparison.png").stat().st_size > 0 and (out / "comparison.csv").read_text().count("\n") == 2
    page = assert_self_contained_page(out, "comparison.md", "comparison.html")
    assert label in page and "<table>" in page


def test_attack_command_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, ["attack", "--kind", "patch", "--target", "12", "--out", tmp_path / "x"])
    assert_one_line_error(code, err, "target 12 is not a class (0..9)")
    code, _, err = run_cli(capsys, ["attack", "--kind", "blended", "--poison-rate", "1.5", "--out", tmp_path / "x"])
    assert_one_line_error(code, err, "argument --poison-rate: must be a share between 0 and 1")
    assert not (tmp_path / "x").exists()
