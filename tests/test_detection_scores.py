"""Detection as the field measures it: AUROC and TPR at a fixed FPR of G's continuous score and of
STRIP, on clean (negative) vs poisoned (positive) test inputs."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from goodnet.errors import SettingsError
from goodnet.inspection.detection_scores import DetectionScore, as_probabilities, disagreement_scores
from goodnet.inspection.strip import StripSettings, sample, strip_scores
from goodnet.io.data import load_images
from goodnet.io.model_files import load_model


def test_auroc_and_tpr_on_known_scores():
    clean, poisoned = np.arange(100.0), np.arange(100.0) + 1000
    assert DetectionScore.of(clean, poisoned).auroc == 100 and DetectionScore.of(clean, poisoned).tpr == 100
    assert DetectionScore.of(poisoned, clean).auroc == 0 and DetectionScore.of(poisoned, clean).tpr == 0
    tied = DetectionScore.of(np.zeros(10), np.zeros(10))
    assert tied.auroc == 50 and tied.tpr == 0  # a constant score flags nothing without flagging everything
    # clean 0..99; poisoned 90..189: at most 5 of 100 clean may be flagged (scores >= 95), which
    # catches the poisoned scores 95..189: 95 of 100
    score = DetectionScore.of(np.arange(100.0), np.arange(100.0) + 90)
    assert score.tpr == pytest.approx(95.0)
    assert DetectionScore.of(np.arange(100.0), np.arange(100.0) + 90, fpr=10).tpr == pytest.approx(100.0)
    with pytest.raises(ValueError):
        DetectionScore.of(np.array([]), np.ones(3))
    with pytest.raises(ValueError):
        DetectionScore.of(np.array([np.nan]), np.ones(3))


def test_probabilities_from_logits_or_from_a_softmax_model():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(as_probabilities(logits), torch.softmax(logits, 1))
    probs = torch.softmax(logits, 1)
    assert torch.equal(as_probabilities(probs), probs)  # not softmaxed twice


def test_disagreement_is_zero_when_b_prime_is_sure_of_bs_answer():
    class Sure(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 50.0]]).repeat(len(x), 1)

    x = np.zeros((4, 1, 2, 2), np.float32)
    assert np.allclose(disagreement_scores(Sure(), x, np.array([1, 1, 1, 1])), 0.0)
    assert np.allclose(disagreement_scores(Sure(), x, np.array([0, 0, 0, 0])), 1.0)


def test_strip_scores_low_entropy_for_a_trigger_that_survives_blending():
    # class 0 wins by a margin that grows with pixel (0, 0) (the "trigger"); otherwise the
    # image's own content decides among the other classes
    torch.manual_seed(0)
    body = nn.Linear(16, 4)

    class Toy(nn.Module):
        def forward(self, x):
            out = body(x.flatten(1)).clone()
            out[:, 0] += 40 * x[:, 0, 0, 0]
            return out

    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 0.1, (50, 1, 4, 4)).astype(np.float32) * 10
    clean[:, 0, 0, 0] = 0
    poisoned = clean.copy()
    poisoned[:, 0, 0, 0] = 1.0
    with torch.no_grad():
        s_clean = strip_scores(Toy(), clean, clean, overlays=8)
        s_poisoned = strip_scores(Toy(), poisoned, clean, overlays=8)
    assert DetectionScore.of(s_clean, s_poisoned).auroc > 90
    assert np.array_equal(s_clean, strip_scores(Toy(), clean, clean, overlays=8))  # seeded
    assert np.all(s_clean <= 0)  # minus an entropy


def test_strip_samples_at_most_max_images():
    assert np.array_equal(sample(10, 20, 0), np.arange(10))
    picked = sample(1000, 100, 0)
    assert len(picked) == 100 and len(set(picked)) == 100 and np.array_equal(picked, sample(1000, 100, 0))
    with pytest.raises(SettingsError, match="overlays must be an integer of at least 1"):
        StripSettings(overlays=0)


def test_defend_reports_g_and_strip_detection(demo_run):
    with open(os.path.join(demo_run["out"], "results.json")) as f:
        doc = json.load(f)
    strip = doc["strip"]
    assert strip["auroc"] > 90 and strip["overlays"] == 20  # a white patch survives blending
    for entry in doc["models"]:
        detection = entry["detection"]
        assert 0 <= detection["auroc"] <= 100 and detection["clean_inputs"] == doc["sizes"]["clean_test"]
    with open(os.path.join(demo_run["out"], "report.md")) as f:
        assert "## Detection" in f.read()


def test_a_repair_that_removed_the_backdoor_gives_g_a_high_auroc(demo_run):
    from goodnet.measure import run_repair
    from goodnet.repairs import FineTuning

    model = load_model(demo_run["model"])
    sets = {role: load_images(path) for role, path in demo_run["inputs"].items()}
    result = run_repair(model, FineTuning(variant="goodnet", lr=0.05, epochs=15), sets, max_drop=None)
    metrics = result.models[0].metrics
    assert metrics["poisoned_test"]["repaired"] < 10  # the backdoor is (mostly) gone ...
    assert result.models[0].detection.auroc > 90  # ... so B' doubts B on poisoned inputs, not clean ones
    assert result.strip is None  # not asked for
