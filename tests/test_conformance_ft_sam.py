"""FT-SAM conformance (Zhu et al. 2023; BackdoorBench defense/ft-sam.py with its SAM optimiser): the
ASAM ascent step, one whole sharpness-aware update and the defaults, against a reimplementation here."""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from user_models import TinyConvHead

from goodnet.io.data import ImageSet
from goodnet.models.training import _sharpness_shifts
from goodnet.repairs import RepairData
from goodnet.repairs.sharpness_aware import SharpnessAwareTuning


def _case(n=8):
    torch.manual_seed(0)
    model = TinyConvHead().eval()
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 3
    return model, x, y


def test_ft_sam_ascent_step_is_asam_rho_w_squared_g_over_norm_of_w_times_g():
    model, x, y = _case()
    F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    _sharpness_shifts(model, 2.0, adaptive=True)
    norm = math.sqrt(sum(float(((w.abs() * g) ** 2).sum()) for w, g in zip(before, grads)))  # ||T_w g||
    for w, g, p in zip(before, grads, model.parameters()):
        assert torch.allclose(p.detach(), w + 2.0 * w.abs() ** 2 * g / (norm + 1e-12), atol=1e-6)


def _smoothed_ce(logits, y, s=0.1):
    target = torch.full_like(logits, s / (logits.shape[1] - 1))
    target[torch.arange(len(y)), y] = 1 - s
    return -(target * logits.log_softmax(1)).sum(1).mean()


def test_ft_sam_update_applies_the_gradient_taken_at_the_asam_perturbed_weights():
    model, _, _ = _case()
    # constant images: random crops leave them unchanged, so the step can be replayed exactly
    x = torch.zeros(8, 1, 6, 6)
    y = torch.arange(8) % 3
    got = SharpnessAwareTuning(epochs=1).repair(model, RepairData(ImageSet(x.numpy(), y.numpy(), "c"))).models[0].model

    ref = copy.deepcopy(model)
    params = list(ref.parameters())
    g1 = torch.autograd.grad(_smoothed_ce(ref(x), y), params)
    norm = torch.sqrt(sum(((p.abs() * g) ** 2).sum() for p, g in zip(params, g1))) + 1e-12
    shifts = [2.0 * p.detach().abs() ** 2 * g / norm for p, g in zip(params, g1)]
    with torch.no_grad():
        for p, e in zip(params, shifts):
            p.add_(e)
    g2 = torch.autograd.grad(_smoothed_ce(ref(x), y), params)
    with torch.no_grad():
        for p, e, g in zip(params, shifts, g2):
            p.sub_(e)
            p.sub_(0.01 * (g + 5e-4 * p))  # SGD, first step: momentum buffer = gradient + weight decay
    for (name, a), b in zip(got.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_ft_sam_perturbed_pass_does_not_move_batchnorm_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3))
    x = np.random.default_rng(0).random((8, 1, 6, 6)).astype(np.float32)
    y = (np.arange(8) % 3).astype(np.int64)
    got = SharpnessAwareTuning(epochs=1, variant="goodnet").repair(model.eval(), RepairData(ImageSet(x, y, "c")))
    tuned = got.models[0].model
    # goodnet's augmentation is replayed by training a copy with plain fine-tuning on the same draws:
    # only the first (unperturbed) pass may fold its batch statistics into the running ones
    from goodnet.models.training import fine_tune

    plain = fine_tune(copy.deepcopy(model), x, y, 1, 0, value_range=(float(x.min()), float(x.max())))
    assert torch.allclose(tuned[1].running_mean, plain[1].running_mean, atol=1e-6)
    assert torch.allclose(tuned[1].running_var, plain[1].running_var, atol=1e-6)


def test_ft_sam_defaults_are_backdoorbench_ft_sam():
    r = SharpnessAwareTuning()
    assert (r.rho, r.adaptive, r.lr, r.epochs, r.momentum, r.weight_decay) == (2.0, True, 0.01, 100, 0.9, 5e-4)
    assert r.tuning_options() == {
        "batch_size": 256,
        "augmentation": "crop",
        "anneal": "epoch",
        "max_grad_norm": None,
        "label_smoothing": 0.1,
    }
    assert all(m.rho < r.rho and m.lr < r.lr for m in r.milder())
