"""fine-tune conformance: BackdoorBench's `ft` baseline schedule (defense/ft.py, config/defense/ft):
SGD 0.01, momentum 0.9, weight decay 5e-4, cosine stepped per epoch, batches of 256, random crops,
plain cross-entropy, no clipping; replayed here step by step on a tiny model."""

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.models.training import fine_tune, random_shift
from goodnet.repairs import FineTuning, RepairData


def test_fine_tune_is_sgd_with_momentum_weight_decay_and_per_epoch_cosine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)).eval()
    x = torch.zeros(300, 1, 6, 6)  # constant images: crops leave them unchanged
    y = torch.arange(300) % 3
    got = FineTuning(epochs=2).repair(model, RepairData(ImageSet(x.numpy(), y.numpy(), "c"))).models[0].model

    ref = copy.deepcopy(model)
    params = list(ref.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    order_gen = torch.Generator().manual_seed(0)
    for epoch in range(2):
        lr = 0.01 * (1 + math.cos(math.pi * epoch / 2)) / 2  # T_max = epochs, stepped per epoch
        order = torch.randperm(300, generator=order_gen)
        for start in (0, 256):  # batches of 256
            idx = order[start : start + 256]
            random_shift(x[idx], order_gen, pixels=4)  # the crop draws (no effect on constant images)
            grads = torch.autograd.grad(F.cross_entropy(ref(x[idx]), y[idx]), params)
            with torch.no_grad():
                for p, g, b in zip(params, grads, buffers):
                    b.mul_(0.9).add_(g + 5e-4 * p)
                    p.sub_(lr * b)
    for (name, a), b in zip(got.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_fine_tune_crop_augmentation_shifts_by_up_to_four_pixels_and_erases_nothing():
    x = np.zeros((64, 1, 12, 12), dtype=np.float32)
    x[:, :, 5:7, 5:7] = 1.0
    seen = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 2))
    model.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().clone()))
    fine_tune(model, x, np.zeros(64, dtype=np.int64), 1, 0, value_range=(0.0, 1.0), augmentation="crop", batch_size=64)
    batch = seen[0]
    assert torch.all(batch.sum(dim=(1, 2, 3)) == 4.0)  # the patch is moved, never erased or cut
    rows = batch.sum(dim=(1, 3)).squeeze(1).argmax(1)
    assert rows.min() >= 5 - 4 and rows.max() <= 5 + 4 and len(set(rows.tolist())) > 3


def test_fine_tune_defaults_are_backdoorbench_ft():
    r = FineTuning()
    assert (r.lr, r.epochs, r.momentum, r.weight_decay, r.variant) == (0.01, 100, 0.9, 5e-4, "reference")
    assert r.tuning_options() == {"batch_size": 256, "augmentation": "crop", "anneal": "epoch", "max_grad_norm": None}
    assert FineTuning(variant="goodnet").tuning_options() == {}
    assert all(m.lr < r.lr for m in r.milder())
