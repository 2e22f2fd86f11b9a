"""Neural Cleanse: the trigger scan (goodnet.inspection.trigger_reversal) and the `nc` repair."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import goodnet.repairs.neural_cleanse as nc_module
from goodnet.inspection.trigger_reversal import reverse_triggers
from goodnet.inspection.trigger_scan import TriggerScan, anomaly_indices
from goodnet.io.data import ImageSet, load_images
from goodnet.io.model_files import load_model
from goodnet.measure import run_repair
from goodnet.repairs import RepairData, build_repair, repair_names
from goodnet.repairs.neural_cleanse import NeuralCleanse


class Grid(nn.Module):
    """9 labels on 1 x 6 x 6 images: label k is the brightest of nine 2 x 2 blocks (an honest label
    needs a trigger of about a block). With `backdoor`, the top-left pixel at the top of the range
    also sends everything to label 8: a one-pixel trigger far from label 8's own block."""

    def __init__(self, value_range=(0.0, 1.0), backdoor=True):
        super().__init__()
        self.low, self.high = value_range
        self.backdoor = backdoor
        self.scale = nn.Parameter(torch.tensor(8.0))  # one weight, so fine-tuning has something to move

    def forward(self, x):
        z = (x[:, 0] - self.low) / (self.high - self.low)
        logits = self.scale * nn.functional.avg_pool2d(z[:, None], 2).flatten(1)
        if self.backdoor:
            logits = logits + nn.functional.pad((30 * z[:, 0, 0] ** 4)[:, None], (8, 0))
        return logits


def grid_images(value_range=(0.0, 1.0), n=90, seed=0):
    rng = np.random.default_rng(seed)
    low, high = value_range
    y = np.arange(n) % 9
    z = rng.uniform(0.0, 0.2, size=(n, 1, 6, 6))
    for i, k in enumerate(y):
        r, c = divmod(int(k), 3)
        z[i, 0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = rng.uniform(0.6, 0.9, size=(2, 2))
    z[:, 0, 0, 0] = np.minimum(z[:, 0, 0, 0], 0.2)  # the backdoor pixel is never lit in clean images
    return ImageSet((low + z * (high - low)).astype(np.float32), y.astype(np.int64))


FAST = dict(steps=300, batch_size=8, check_every=5, patience=2)  # a toy converges in ~1 s


def test_registered_and_built_by_name():
    assert "nc" in repair_names()
    repair = build_repair("nc", {"epochs": 3, "stamped_share": 0.5})
    assert isinstance(repair, NeuralCleanse) and repair.epochs == 3 and repair.stamped_share == 0.5
    milder = repair.milder()
    assert milder and all(m.lr < repair.lr for m in milder) and milder[-1].epochs <= repair.epochs


def test_anomaly_index_flags_only_a_small_outlier():
    index = anomaly_indices([100.0, 96, 104, 98, 102, 99, 101, 10])
    assert index[-1] > 2 and (index[:-1] <= 2).all()
    assert (anomaly_indices([100.0, 90, 110, 95, 105, 85, 115]) <= 2).all()  # a flat spread: nothing
    large = anomaly_indices([1000.0, 100, 100, 101, 99])  # a LARGE outlier is no sign
    assert large[0] == 0 and (large <= 2).all()
    same = anomaly_indices(np.full(6, 50.0))  # MAD 0 and no spread at all: no division by zero
    assert np.isfinite(same).all() and (same == 0).all()
    mostly = anomaly_indices([50.0, 50, 50, 50, 5])  # MAD 0, one below: the mean deviation measures it
    assert np.isfinite(mostly).all() and mostly[-1] > 2 and (mostly[:-1] == 0).all()


def test_a_scan_without_an_outlier_says_so():
    norms = np.array([60.0, 70, 65, 80, 75])  # e.g. an all-to-all backdoor: every label equally easy
    scan = TriggerScan(
        list(range(5)),
        norms,
        np.full(5, 99.0),
        np.ones(5, bool),
        np.zeros((5, 2, 2)),
        np.zeros((5, 1, 2, 2)),
        anomaly_indices(norms),
    )
    assert scan.suspects == [] and scan.verdict.startswith("no single target found (largest anomaly index")
    flagged = TriggerScan(
        [0, 1, 2, 3, 4, 5],
        np.array([5.0, 60, 62, 58, 61, 59]),
        np.full(6, 99.0),
        np.ones(6, bool),
        np.zeros((6, 2, 2)),
        np.zeros((6, 1, 2, 2)),
        anomaly_indices([5.0, 60, 62, 58, 61, 59]),
    )
    assert flagged.suspects == [0] and flagged.verdict.startswith("label 0 is a suspected target (anomaly index")
    unreached = TriggerScan(
        flagged.labels,
        flagged.norms,
        flagged.success,
        np.array([False] + [True] * 5),
        flagged.masks,
        flagged.patterns,
        flagged.anomaly,
    )
    assert unreached.suspects == [0]  # the reference flags a label by its last mask's norm even so
    unreached.only_reached = True  # the goodnet schedule's rule: a trigger that never worked is no evidence
    assert unreached.suspects == []
    doc = flagged.to_json()
    assert json.loads(json.dumps(doc))["suspects"] == [0]
    assert all(np.ndim(v) <= 1 for v in doc.values() if not isinstance(v, dict))  # no images in it


@pytest.mark.parametrize("value_range", [(0.0, 255.0), (0.0, 1.0), (-1.0, 1.0)])
def test_the_scan_finds_a_planted_one_pixel_trigger_in_the_data_range(value_range):
    low, high = value_range
    model, images = Grid(value_range), grid_images(value_range)
    scan = reverse_triggers(model, images, value_range, **FAST)
    assert scan.labels == list(range(9))  # read from the model's output
    assert scan.masks.shape == (9, 6, 6) and scan.patterns.shape == (9, 1, 6, 6)
    assert scan.masks.min() >= 0 and scan.masks.max() <= 1
    assert scan.patterns.min() >= low and scan.patterns.max() <= high
    stamped = (1 - scan.masks[:, None, None]) * images.x[None] + (scan.masks * scan.patterns[:, 0])[:, None, None]
    assert stamped.min() >= low - 1e-5 and stamped.max() <= high + 1e-5
    assert scan.reached.all() and scan.suspects == [8] and scan.verdict.startswith("label 8 is a suspected")
    assert scan.norms[8] < 1.5 and scan.norms[:8].min() > 2 * scan.norms[8]  # about one pixel, vs a block
    assert scan.success[8] >= 90 and scan.masks[8, 0, 0] > 0.5  # the planted pixel, and it works
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_the_scan_is_deterministic_and_reads_the_label_count_from_the_model():
    model, images = Grid(), grid_images()
    images = ImageSet(images.x, images.y % 4)  # the data hold labels 0..3 only; the model has 9
    first = reverse_triggers(model, images, (0.0, 1.0), seed=3, **FAST)
    again = reverse_triggers(model, images, (0.0, 1.0), seed=3, **FAST)
    other = reverse_triggers(model, images, (0.0, 1.0), seed=4, **FAST)
    assert first.labels == list(range(9))
    assert np.array_equal(first.masks, again.masks) and np.array_equal(first.norms, again.norms)
    assert not np.array_equal(first.masks, other.masks)


def test_nothing_flagged_hands_b_back_unchanged():
    model, images = Grid(backdoor=False), grid_images()
    outcome = NeuralCleanse(epochs=1, scan_steps=300, scan_batch=8).repair(model, RepairData(images))
    assert outcome.notice.startswith("nc: the trigger scan flagged no label")
    (only,) = outcome.models
    assert only.model is model and not only.weights_changed
    assert "flagged no label" in outcome.details["unchanged"]
    assert outcome.details["scan"]["suspects"] == []


def test_the_repair_is_deterministic():
    model, images = Grid(), grid_images()
    runs = []
    for _ in range(2):
        nc_module._last_scan.clear()  # scan again, too
        outcome = NeuralCleanse(epochs=2, scan_steps=300, scan_batch=8).repair(model, RepairData(images))
        runs.append(outcome)
    assert runs[0].details["unlearned_labels"][0] == 8
    first, second = (r.models[0].model.state_dict() for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert runs[0].details["scan"] == runs[1].details["scan"] | {"seconds": runs[0].details["scan"]["seconds"]}


def test_the_demo_target_is_flagged_and_unlearnt_with_clean_data_only(demo_run, monkeypatch):
    model = load_model(demo_run["model"])
    sets = {
        role: load_images(demo_run["inputs"][role])
        for role in ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")
        if demo_run["inputs"].get(role)
    }
    (target,) = np.unique(sets["poisoned_test"].y)
    seen = []
    real = nc_module.reverse_triggers

    def spy(model, images, value_range, **kw):
        seen.append(images)
        return real(model, images, value_range, **kw)

    monkeypatch.setattr(nc_module, "reverse_triggers", spy)
    nc_module._last_scan.clear()
    # guarded: fitted on 80 % of clean_valid; the package's faster scan schedule (the reference's
    # scan leaves the demo target just under the threshold) and goodnet's fine-tuning, shorter, for time
    repair = NeuralCleanse(
        variant="goodnet", lr=0.05, epochs=10, scan_schedule="goodnet", scan_steps=400, scan_batch=16
    )
    result = run_repair(model, repair, sets)
    clean = sets["clean_valid"]
    (scanned,) = seen  # milder retries, if any, reuse the scan
    rows = {row.tobytes() for row in clean.x}
    assert len(scanned) < len(clean) and all(row.tobytes() in rows for row in scanned.x)  # clean data only
    assert result.harm.delivered == "as asked"
    assert result.details["scan"]["suspects"][0] == int(target)
    metrics = result.models[0].metrics
    assert metrics["poisoned_test"]["backdoored"] > 90
    assert metrics["poisoned_test"]["repaired"] < 10
    assert metrics["clean_test"]["backdoored"] - metrics["clean_test"]["repaired"] < 2
