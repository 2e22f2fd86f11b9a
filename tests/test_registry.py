"""One registry: repairs, their settings and the CLI built from them; a user's repair shows up in
`defend --help`, runs through `defend`, and joins `compare` without any change to goodnet."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import toy_repair  # noqa: F401  (registers toy-zero-quietest)
from conftest import ZOO_CELL, assert_one_line_error, run_cli

from goodnet.errors import SettingsError
from goodnet.repairs import REPAIRS, Repair, build_repair, register_repair, setting
from goodnet.repairs.fine_pruning import FinePruning
from goodnet.repairs.lab_pruning import LabPruning

TESTS = os.path.dirname(__file__)


def _demo_paths(demo_run):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        inputs = json.load(f)["inputs"]
    model = os.path.join(os.path.dirname(inputs["clean_valid"]), "badnet.safetensors")
    return model, inputs


def test_every_repair_declares_itself():
    assert {"prune", "fine-prune", "fine-tune", "rnp", "attack-aware", "channels"} <= set(REPAIRS)
    for name, cls in REPAIRS.items():
        assert cls.name == name and cls.description and cls.data in ("none", "clean", "oracle")
        for spec in cls.setting_specs():
            assert spec.help, (name, spec.name)
        cls.comparison and build_repair(name, comparison=True)
    assert REPAIRS["attack-aware"].data == "oracle" and REPAIRS["channels"].data == "none"
    # the plain baseline is in compare's roster, and every repair but the sweep and explicit channels is guarded
    from goodnet.compare import comparison_roster

    assert "fine-tune" in [r.name for r in comparison_roster()]
    # the oracle runs only when named (it costs most and can never meet the clean-data bar)
    assert "attack-aware" not in [r.name for r in comparison_roster()]
    assert [r.name for r in comparison_roster(["attack-aware"])] == ["attack-aware"]
    assert {n for n, cls in REPAIRS.items() if not cls.guarded} == {"prune", "channels"}


def test_settings_are_checked_once_when_built():
    with pytest.raises(SettingsError, match="epochs must be in"):
        FinePruning(epochs=0)
    with pytest.raises(SettingsError, match="thresholds must be in"):
        LabPruning(thresholds=(0.0,))
    with pytest.raises(SettingsError, match="thresholds needs at least one value"):
        LabPruning(thresholds=())
    with pytest.raises(SettingsError, match="rule must be one of"):
        LabPruning(rule="sideways")
    with pytest.raises(SettingsError, match="at least one budget or fraction"):
        FinePruning(budgets=(), fractions=())
    with pytest.raises(dataclasses.FrozenInstanceError):
        LabPruning().layer = "conv_2"
    assert LabPruning(thresholds=[2, 4]).thresholds == (2.0, 4.0)  # typed: ints become floats
    with pytest.raises(SettingsError, match="does not take --epochs"):
        build_repair("prune", {"epochs": 3})


def test_one_setting_name_has_one_type():
    with pytest.raises(TypeError, match="one name, one meaning"):

        @register_repair
        @dataclasses.dataclass(frozen=True)
        class Confused(Repair):
            name = "confused"
            description = "a repair whose `layer` is a number"
            layer: int = setting(3, "not a layer name")

    assert "confused" not in REPAIRS


def test_options_a_repair_does_not_take_are_refused(demo_run, tmp_path, capsys):
    model, inputs = _demo_paths(demo_run)
    base = ["defend", "--model", model, "--clean-valid", inputs["clean_valid"], "--out", tmp_path / "o", "--quiet"]
    for extra, message in (
        (["--repair", "rnp", "--thresholds", "2"], "the rnp repair does not take --thresholds"),
        (["--epochs", "3"], "the prune repair does not take --epochs"),
        (["--repair", "fine-prune", "--channels", "1,2"], "does not take --channels"),
        (["--repair", "fine-prune", "--epochs", "0"], "fine-prune: epochs must be in [1, inf)"),
        (["--repair", "rnp", "--budget", "x"], "--budget: not a number"),
        (["--channels", ""], "channels needs at least one value"),
    ):
        code, _, err = run_cli(capsys, base + extra)
        assert_one_line_error(code, err, message)
    assert not (tmp_path / "o").exists()


def test_a_users_repair_appears_in_help_defend_and_compare(demo_run, zoo_cache, tmp_path, capsys):
    code, text, _ = run_cli(capsys, ["defend", "--help"])
    assert code == 0
    assert "toy-zero-quietest" in text and "--count" in text and "that clean data uses least" in text

    model, inputs = _demo_paths(demo_run)
    code, out, err = run_cli(
        capsys,
        [
            "defend",
            "--model",
            model,
            "--repair",
            "toy-zero-quietest",
            "--count",
            "5",
            *sum(([f"--{r.replace('_', '-')}", p] for r, p in inputs.items()), []),
            "--out",
            tmp_path / "toy",
            "--quiet",
        ],
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert doc["repair"] == "toy-zero-quietest" and doc["settings"] == {"layer": "conv_3", "count": 5}
    assert len(doc["details"]) == 0 and len(doc["models"][0]["pruned"]["conv_3"]) == 5
    assert (tmp_path / "toy" / doc["files"]["goodnet"]).is_file() and "| G | toy-zero-quietest |" in out

    code, out, err = run_cli(
        capsys,
        [
            "compare",
            *ZOO_CELL,
            "--repairs",
            "toy-zero-quietest",
            "--out",
            tmp_path / "cmp",
            "--cache-dir",
            zoo_cache,
            "--quiet",
        ],
    )
    assert code == 0, err
    (row,) = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert row["repair"] == "toy-zero-quietest" and row["badnet"].startswith("patch/small_cnn/")
    assert row["delivered"] in ("as asked", "milder settings", "B unchanged")


def test_plugins_named_in_the_environment_reach_the_command_line():
    env = {**os.environ, "GOODNET_PLUGINS": "toy_repair", "PYTHONPATH": TESTS}
    out = subprocess.run(
        [sys.executable, "-m", "goodnet", "defend", "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "toy-zero-quietest" in out and "--count" in out
    env["GOODNET_PLUGINS"] = "no_such_plugin_module"
    done = subprocess.run(
        [sys.executable, "-m", "goodnet", "defend", "--help"], env=env, capture_output=True, text=True
    )
    assert (
        done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot import 'no_such_plugin_module'" in done.stderr
    )


def test_layers_and_cycles_are_enforced():
    """The import-linter contracts in pyproject.toml: layers, independent repairs, no cycles."""
    root = os.path.dirname(TESTS)
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "lint-imports"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_settings_take_numpy_values_and_refuse_huge_or_reserved_ones():
    import numpy as np

    from goodnet.repairs.channels import ExplicitChannels

    assert ExplicitChannels(channels=np.array([3, 1])).channels == (3, 1)
    assert LabPruning(thresholds=[np.float32(2)]).thresholds == (2.0,)
    with pytest.raises(SettingsError, match="too large"):
        FinePruning(epochs=10**400)
    with pytest.raises(SettingsError, match="must be an integer"):
        FinePruning(epochs=2.5)
    with pytest.raises(TypeError, match="command line's own"):

        @register_repair
        @dataclasses.dataclass(frozen=True)
        class Clash(Repair):
            name = "clash"
            description = "a repair with a setting named like --out"
            out: str = setting("x", "collides with --out")


def test_rnp_is_deterministic_whatever_the_global_random_state(demo_run):
    import torch

    from goodnet.io.data import load_images
    from goodnet.io.model_files import load_model
    from goodnet.repairs import RepairData

    model_path, inputs = _demo_paths(demo_run)
    data = RepairData(load_images(inputs["clean_valid"]))
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outcome = REPAIRS["rnp"](unlearn_epochs=2, recover_epochs=2).run(load_model(model_path), data)
        runs.append(outcome.details["masks"])
    assert runs[0] == runs[1]
