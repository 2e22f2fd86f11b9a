"""Fine-pruning conformance (Liu et al. 2018; BackdoorBench defense/fp.py): the channel order is the
mean post-ReLU output of the last conv layer on clean data, for a BN-free CNN and a tiny ResNet; the
pruning stop keeps the largest pruning under BackdoorBench's 10 % relative accuracy drop. Everything
is recomputed here with forward hooks and hand pruning."""

import numpy as np
import torch
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.repairs import FinePruning, RepairData


class PlainCNN(nn.Module):  # no BatchNorm; the last conv is followed by ReLU, then pooling
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.pool(self.act(self.conv2(torch.relu(self.conv1(x))))).flatten(1))


class TinyResNet(nn.Module):  # stem + one basic block; its last conv's BN output is added to the shortcut
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.out_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        block = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
        return self.head(self.pool(self.out_relu(block + h)).flatten(1))


def _model(cls, seed=0):
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():  # BatchNorms with statistics of their own, so signed BN outputs rank differently
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def _clean(model, n=64):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # B is right on every image: a drop is measured from 100 %
    return ImageSet(x.numpy(), y.numpy().astype(np.int64), "clean")


def _post_relu_order(model, module, x):
    """Mean of `module`'s output (the ReLU after the last conv) per channel, ascending, ties by index."""
    seen = []
    hook = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().double()))
    with torch.no_grad():
        model(torch.from_numpy(x))
    hook.remove()
    means = seen[0].mean(dim=(0, 2, 3)).numpy()
    return [int(c) for c in np.argsort(means, kind="stable")]


def test_fine_prune_order_is_mean_post_relu_activation_of_the_last_conv_without_batchnorm():
    model = _model(PlainCNN)
    clean = _clean(model)
    assert FinePruning().order(model, clean.x, "conv2") == _post_relu_order(model, model.act, clean.x)


def test_fine_prune_prunes_the_lowest_post_relu_channels_of_a_resnet_first():
    model = _model(TinyResNet)
    clean = _clean(model)
    expected = _post_relu_order(model, model.out_relu, clean.x)  # after the residual add, as BackdoorBench
    assert FinePruning().order(model, clean.x, "conv2") == expected
    outcome = FinePruning(epochs=1, budgets=(), fractions=(0.5,)).run(model, RepairData(clean))
    assert outcome.models[0].pruned == {"conv2": expected[:4]}


def _pruned_accuracy(model, clean, channels):
    pruned = _model(TinyResNet)
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for c in channels:  # zero the conv's output channel and its BatchNorm's scale and shift
            pruned.conv2.weight[c] = 0
            pruned.bn2.weight[c] = 0
            pruned.bn2.bias[c] = 0
        predictions = pruned(torch.from_numpy(clean.x)).argmax(1).numpy()
    return float((predictions == clean.y).mean())


def test_fine_prune_keeps_the_largest_pruning_under_a_ten_percent_relative_drop():
    model = _model(TinyResNet)
    clean = _clean(model, n=200)
    order = _post_relu_order(model, model.out_relu, clean.x)
    base = _pruned_accuracy(model, clean, [])
    k = 0
    while k + 1 < len(order) and (base - _pruned_accuracy(model, clean, order[: k + 1])) / base < 0.10:
        k += 1
    outcome = FinePruning(epochs=1).run(model, RepairData(clean))
    assert outcome.models[0].pruned == {"conv2": order[:k]}


def test_fine_prune_defaults_are_backdoorbench_fp():
    r = FinePruning()
    assert (r.budgets, r.relative, r.stop, r.ranking) == ((10.0,), True, "within", "post-activation")
    assert (r.lr, r.epochs, r.momentum, r.weight_decay, r.variant) == (0.01, 100, 0.9, 5e-4, "reference")
    assert r.tuning_options() == {"batch_size": 256, "augmentation": "crop", "anneal": "epoch", "max_grad_norm": None}
    milder = r.milder()
    assert milder and all(m.budgets[0] < 10.0 and m.lr < r.lr for m in milder)
