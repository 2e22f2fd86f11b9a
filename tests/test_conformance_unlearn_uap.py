"""Conformance of `unlearn-uap` (goodnet's own method, after i-BAU): the perturbation is searched with
the model in evaluation mode, and BatchNorm's running statistics come from clean batches only."""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.repairs import PerturbationUnlearning, RepairData
from goodnet.repairs.perturbation_unlearning import UniversalPerturbation
from goodnet.repairs.schedule import TuningSchedule


def _bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def _norm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_uap_ascent_step_is_the_eval_mode_gradient_and_leaves_running_stats_unchanged():
    model = _bn_model().train()
    before = _norm_state(model)
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 3
    adversary = UniversalPerturbation((1, 6, 6), (0.0, 1.0), radius=0.1, steps=1)
    delta = adversary.attack(model, x, y)
    assert model.training and all(m.training for m in model.modules())  # its mode is given back
    assert all(torch.equal(before[k], v) for k, v in _norm_state(model).items())
    # independently: one normalised step of size limit / 2 along the eval-mode gradient at zero
    frozen = copy.deepcopy(model).eval()
    zero = torch.zeros(1, 6, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(frozen((x + zero).clamp(0, 1)), y), zero)
    expected = 0.05 * grad / grad.pow(2).mean().sqrt()
    assert torch.allclose(delta, expected, atol=1e-6)


def test_uap_running_stats_after_one_step_are_those_of_the_clean_batch_alone():
    x = np.random.default_rng(0).random((32, 1, 6, 6)).astype(np.float32)
    y = (np.arange(32) % 3).astype(np.int64)
    data = RepairData(ImageSet(x, y, "clean"))
    repaired = PerturbationUnlearning(epochs=1, steps=2).repair(_bn_model(), data).models[0].model
    # the same one step of plain fine-tuning (same schedule, seed, batch and augmentation)
    plain = TuningSchedule.tune(PerturbationUnlearning(epochs=1), _bn_model(), x, y, data.value_range)
    got, want = _norm_state(repaired), _norm_state(plain)
    assert int(got["1.num_batches_tracked"]) == 1
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


def test_uap_milder_lowers_the_rate_then_the_epochs():
    repair = PerturbationUnlearning()
    milder = repair.milder()
    assert milder and all(m.lr < repair.lr for m in milder)
    assert [m.lr for m in milder] == sorted((m.lr for m in milder), reverse=True)
    assert [m.epochs for m in milder] == sorted((m.epochs for m in milder), reverse=True)


def test_uap_docstring_claims_no_setting_chosen_on_attack_results():
    import goodnet.repairs.perturbation_unlearning as module

    text = module.__doc__.lower()
    assert "asr" not in text and "development zoo" not in text
