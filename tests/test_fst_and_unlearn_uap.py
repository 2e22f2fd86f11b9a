"""The tuning repairs beyond plain fine-tuning: feature-shift tuning and perturbation unlearning."""

import numpy as np
import pytest
import torch
from torch import nn

from goodnet.errors import ModelError
from goodnet.io.data import load_images
from goodnet.io.model_files import load_model
from goodnet.repairs import FeatureShiftTuning, PerturbationUnlearning, RepairData, repair_names
from goodnet.repairs.feature_shift import classifier_head
from goodnet.repairs.perturbation_unlearning import UniversalPerturbation


def _demo(demo_run):
    return load_model(demo_run["model"]), load_images(demo_run["inputs"]["clean_valid"])


def test_both_are_registered_and_in_compare():
    from goodnet.compare import comparison_roster

    assert {"fst", "unlearn-uap"} <= set(repair_names())
    assert {"fst", "unlearn-uap"} <= {r.name for r in comparison_roster()}


def test_the_classifier_head_is_found_by_running_the_model():
    class TwoLinear(nn.Module):  # the head is registered first but runs last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(torch.relu(self.body(x.flatten(1))))

    name, head = classifier_head(TwoLinear(), torch.zeros(2, 1, 2, 2))
    assert name == "head" and head.out_features == 3

    class NoHead(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ModelError, match="final linear layer"):
        classifier_head(NoHead(), torch.zeros(2, 1, 2, 2))


def test_feature_shift_tuning_pushes_the_head_away_from_b(demo_run):
    model, clean = _demo(demo_run)
    outcome = FeatureShiftTuning(epochs=2).repair(model, RepairData(clean))
    unpushed = FeatureShiftTuning(epochs=2, alpha=0.0).repair(model, RepairData(clean))
    # re-initialised, the head drifts back towards B's under the clean loss; the penalty holds it off
    assert outcome.details["head_cosine_to_b"] < unpushed.details["head_cosine_to_b"] - 0.05
    _, head = classifier_head(outcome.models[0].model, torch.from_numpy(clean.x[:2]))
    _, original = classifier_head(model, torch.from_numpy(clean.x[:2]))
    norm, b_norm = float(head.weight.detach().norm()), float(original.weight.detach().norm())
    assert abs(norm - b_norm) <= 1e-5 * b_norm  # held at exactly B's


@pytest.mark.parametrize("value_range", [(0.0, 255.0), (0.0, 1.0), (-1.0, 1.0)])
def test_the_universal_perturbation_stays_in_its_bound_and_the_data_range(value_range):
    low, high = value_range
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4) * (high - low) + low
    y = torch.randint(0, 3, (8,))
    adversary = UniversalPerturbation((1, 4, 4), value_range, radius=0.1, steps=5)
    before = nn.functional.cross_entropy(model(x), y).item()
    delta = adversary.attack(model, x, y)
    assert float(delta.pow(2).mean().sqrt()) <= 0.1 * (high - low) * (1 + 1e-5)
    perturbed = adversary.apply(x, delta)
    assert perturbed.min() >= low and perturbed.max() <= high
    assert nn.functional.cross_entropy(model(perturbed), y).item() > before  # ascent raised the loss


def test_perturbation_unlearning_removes_the_demo_backdoor(demo_run):
    from goodnet.metrics import model_accuracy

    model, clean = _demo(demo_run)
    poisoned = load_images(demo_run["inputs"]["poisoned_test"])
    outcome = PerturbationUnlearning(epochs=10).repair(model, RepairData(clean))
    repaired = outcome.models[0].model
    assert model_accuracy(model, poisoned.x, poisoned.y) > 90
    assert model_accuracy(repaired, poisoned.x, poisoned.y) < 10
    assert 0 < outcome.details["last_perturbation_rms"] <= 0.1
    assert np.isfinite([p.detach().sum().item() for p in repaired.parameters()]).all()
