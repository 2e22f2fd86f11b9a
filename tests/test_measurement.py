"""Repair -> Measurement -> Report: the guard is a Repair wrapping a Repair; run_repair returns one
frozen Measurement whose every number is the one function of goodnet.measure.scores applied to the
predictions; the report renders it without building or saving a model."""

import dataclasses
import os

import numpy as np
import pytest
from test_do_no_harm import ZeroQuietest

from goodnet.errors import SettingsError
from goodnet.inference import predict
from goodnet.io.data import load_images
from goodnet.io.model_files import load_model
from goodnet.measure import Measurement, RunInputs, run_repair
from goodnet.measure.scores import goodnet_scores, model_scores, role_metrics
from goodnet.metrics import accuracy
from goodnet.repairs import FineTuning, Guarded, Repair, RepairData
from goodnet.repairs.do_no_harm import guarded_repair
from goodnet.report.writer import write_report


def _b_and_sets(demo_run):
    return load_model(demo_run["model"]), {role: load_images(path) for role, path in demo_run["inputs"].items()}


def test_guarded_is_a_repair_with_its_inner_repairs_name_settings_and_contract():
    guarded = Guarded(FineTuning(epochs=3))
    assert isinstance(guarded, Repair) and not guarded.guarded
    assert guarded.name == "fine-tune" and guarded.settings() == FineTuning(epochs=3).settings()
    assert guarded.data == "clean" and not guarded.oracle
    with pytest.raises(SettingsError, match="Guarded wraps one repair"):
        Guarded(guarded)
    with pytest.raises(SettingsError, match="Guarded wraps one repair"):
        Guarded("fine-tune")


def test_guarded_run_decides_as_the_guard_function_and_carries_its_check(demo_run):
    model, sets = _b_and_sets(demo_run)
    clean = sets["clean_valid"]
    outcome = Guarded(ZeroQuietest()).run(model, RepairData(clean))
    delivered, expected, check = guarded_repair(model, ZeroQuietest(), RepairData(clean), predict(model, clean.x))
    assert outcome.delivered == delivered and outcome.guard.delivered == check.delivered == "milder settings"
    assert [a.drop for a in outcome.guard.attempts] == [a.drop for a in check.attempts]
    assert [m.pruned for m in outcome.models] == [m.pruned for m in expected.models]


def test_run_repair_returns_a_frozen_measurement_of_numbers_defined_once(demo_run, tmp_path):
    model, sets = _b_and_sets(demo_run)
    result = run_repair(model, ZeroQuietest(count=8), sets, inputs=RunInputs({"clean_valid": "c.h5"}, 1.0, ()))
    assert isinstance(result, Measurement) and result.inputs == {"clean_valid": "c.h5"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.warnings = ("patched",)
    assert (
        result.harm is not None
        and isinstance(result.delivered, ZeroQuietest)
        and result.repair == ZeroQuietest(count=8)
    )
    b_labels = {role: predict(model, images.x) for role, images in sets.items()}
    for role in sets:
        np.testing.assert_array_equal(result.backdoored[role], b_labels[role])
    m = result.models[0]
    for role, images in sets.items():
        assert m.metrics[role] == role_metrics(b_labels[role], m.labels[role], images.y, 10)
        assert m.metrics[role]["repaired"] == accuracy(predict(m.repaired.model, images.x), images.y)
    assert result.baseline == model_scores(sets, b_labels) and m.scores == model_scores(sets, m.labels)
    assert m.goodnet_test == goodnet_scores(sets, b_labels, m.labels, 10, "test")
    assert m.test_drop == m.metrics["clean_test"]["backdoored"] - m.metrics["clean_test"]["repaired"]

    doc = write_report(str(tmp_path), result, {m.name: {"repaired": "models/x.safetensors"}})
    assert doc["metrics"]["clean_test"]["repaired"] == round(m.metrics["clean_test"]["repaired"], 4)
    assert not os.path.exists(tmp_path / "models")  # rendering never saves a model
    assert {"results.json", "report.md", "report.html", "metrics.csv"} <= set(os.listdir(tmp_path))
