"""FST conformance: the loss, the head's norm and the defaults of the authors' fine_tune/ft.py
(AISafety-HKUST/stable_backdoor_purification, --ft_mode fst), checked on a tiny model against a
few-line reimplementation written here."""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from user_models import TinyConvHead

from goodnet.io.data import ImageSet
from goodnet.repairs import FeatureShiftTuning, RepairData


def _tiny_case(n=8):
    torch.manual_seed(0)
    model = TinyConvHead().eval()
    with torch.no_grad():
        model.head.weight.mul_(3.0)  # a trained head is larger than a fresh one
    # constant images: random crops (and any shift) leave them unchanged, so the steps can be replayed
    x = np.zeros((n, 1, 6, 6), dtype=np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    return model, ImageSet(x, y, "clean")


def _reinitialised_head(model, seed):
    """The authors' re-initialisation: weight then bias uniform in +-1/sqrt(fan_in), drawn here from a
    seeded CPU generator (goodnet's source of the same distribution)."""
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(model.head.in_features)
    with torch.no_grad():
        model.head.weight.copy_(torch.empty(model.head.weight.shape).uniform_(-bound, bound, generator=g))
        model.head.bias.copy_(torch.empty(model.head.bias.shape).uniform_(-bound, bound, generator=g))


def test_fst_step_minimises_ce_plus_alpha_head_inner_product_then_rescales_the_head_to_b_norm():
    model, clean = _tiny_case()
    repair = FeatureShiftTuning(epochs=2)
    got = repair.repair(model, RepairData(clean)).models[0].model

    ref = copy.deepcopy(model)
    w_b = model.head.weight.detach().clone()
    _reinitialised_head(ref, repair.seed)
    params = list(ref.parameters())
    momentum = [torch.zeros_like(p) for p in params]
    x, y = torch.from_numpy(clean.x), torch.from_numpy(clean.y)
    for epoch in range(2):  # one batch per epoch; cosine per epoch with T_max = epochs, no weight decay
        lr = 0.01 * (1 + math.cos(math.pi * epoch / 2)) / 2
        loss = F.cross_entropy(ref(x), y) + 0.2 * (ref.head.weight * w_b).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, m in zip(params, grads, momentum):
                m.mul_(0.9).add_(g)
                p.sub_(lr * m)
            ref.head.weight.mul_(w_b.norm() / ref.head.weight.norm())
    for (name, a), b in zip(got.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_fst_head_norm_is_exactly_b_head_norm_after_every_step(monkeypatch):
    model, clean = _tiny_case(n=40)
    target = float(model.head.weight.detach().norm())
    seen = []
    repair = FeatureShiftTuning(epochs=3)
    original_tune = type(repair).tune

    def recording_tune(self, tuned, *args, **hooks):
        after = hooks["after_step"]

        def record(m):
            after(m)
            seen.append(float(tuned.head.weight.detach().norm()))

        return original_tune(self, tuned, *args, **{**hooks, "after_step": record})

    monkeypatch.setattr(type(repair), "tune", recording_tune)
    got = repair.repair(model, RepairData(clean)).models[0].model
    assert len(seen) == 3  # one batch of 128 per epoch
    assert all(abs(s - target) < 1e-5 * target for s in seen)  # scaled up as well as down
    assert abs(float(got.head.weight.detach().norm()) - target) < 1e-5 * target


def test_fst_defaults_are_the_authors():
    r = FeatureShiftTuning()
    assert (r.alpha, r.lr, r.epochs, r.momentum, r.weight_decay, r.variant) == (0.2, 0.01, 10, 0.9, 0.0, "reference")
    assert r.tuning_options() == {"batch_size": 128, "augmentation": "crop", "anneal": "epoch", "max_grad_norm": None}
    assert FeatureShiftTuning(variant="goodnet").tuning_options() == {}
    assert all(m.epochs >= 1 and m.lr < r.lr for m in r.milder())
