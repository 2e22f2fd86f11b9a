"""A repair that cannot act on a model says so in one line: in the run's result, results.json,
report.md and compare's row, never by silently handing back B."""

import json
from dataclasses import dataclass

import numpy as np
import torch

from goodnet.io.data import ImageSet
from goodnet.measure import run_repair
from goodnet.models.small_cnn import SmallCNN
from goodnet.outputs import write_outputs
from goodnet.repairs.base import Repair, RepairedModel, RepairOutcome


@dataclass(frozen=True)
class CannotAct(Repair):
    name = "cannot-act"
    description = "hands B back with a notice"
    guarded = False

    def repair(self, model, data, progress=False):
        return RepairOutcome(
            [RepairedModel(self.name, model)],
            notice="cannot-act: no channel of conv_1 (4 channels) qualifies; model unchanged",
        )


def _model_and_data():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=2, input_shape=(1, 8, 8), input_divisor=1.0, width=4).eval()
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    y = np.arange(60) % 2  # both classes (one-class validation data is refused); B is at chance: force=True below
    return model, ImageSet(x, y.astype(np.int64), "clean_valid")


def test_a_repair_that_cannot_act_says_so_in_the_result_json_and_report(tmp_path):
    model, clean = _model_and_data()
    result = run_repair(model, CannotAct(), {"clean_valid": clean}, force=True)
    assert result.notice == "cannot-act: no channel of conv_1 (4 channels) qualifies; model unchanged"
    doc = write_outputs(str(tmp_path / "out"), result, model)
    assert doc["notice"] == result.notice
    assert json.loads((tmp_path / "out" / "results.json").read_text())["notice"] == result.notice
    assert f"**{result.notice}**" in (tmp_path / "out" / "report.md").read_text()


def test_a_repair_that_acts_has_no_notice(tmp_path):
    from goodnet.repairs.fine_tuning import FineTuning

    model, clean = _model_and_data()
    result = run_repair(model, FineTuning(epochs=1), {"clean_valid": clean}, force=True, max_drop=None)
    assert result.notice is None
    assert write_outputs(str(tmp_path / "out"), result, model)["notice"] is None
