"""Conformance of `nad` with the authors' code (bboylyg/NAD: at.py, main.py, config.py, models/wresnet.py):
the attention map, the per-layer loss, which layers are distilled, and the schedule's defaults."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.models.resnet import ResNet8
from goodnet.repairs import RepairData
from goodnet.repairs.attention_distillation import (
    AttentionDistillation,
    attention,
    distillation_loss,
    reference_rate,
    stage_outputs,
    tapped,
)


def test_nad_attention_map_is_the_channel_sum_of_squares_over_its_l2_norm():
    # one image, two channels, a 1 x 2 map: sum over channels of a^2 is [3, 4], its norm 5
    f = torch.tensor([[[[1.0, 2.0]], [[2.0**0.5, 0.0]]]])
    assert torch.allclose(attention(f), torch.tensor([[[[0.6, 0.8]]]]), atol=1e-6)
    assert attention(f).shape == (1, 1, 1, 2)


def test_nad_layer_loss_is_the_mean_squared_difference_of_the_maps():
    student = torch.tensor([[[[1.0, 2.0]], [[2.0**0.5, 0.0]]]])  # map [0.6, 0.8]
    teacher = torch.tensor([[[[2.0, 0.0]], [[0.0, 3.0**0.5]]]])  # sums [4, 3]: map [0.8, 0.6]
    # mean over the 2 positions of 0.2^2 (not a sum, not divided by a fixed count of positions)
    assert float(distillation_loss(student, teacher)) == pytest.approx(0.04, rel=1e-5)
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 6, 7), torch.randn(3, 5, 6, 7)

    def reference(fm):  # the form the authors' AT loss reduces to, written independently
        am = F.normalize(fm.pow(2).mean(1).view(fm.shape[0], -1))
        return am

    expected = (reference(s) - reference(t)).pow(2).mean()
    assert float(distillation_loss(s, t)) == pytest.approx(float(expected), rel=1e-4)
    assert float(distillation_loss(s, s)) == 0.0


class _PreActBlock(nn.Module):  # BackdoorBench's pre-activation block (functional ReLU, += shortcut)
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        out += shortcut
        return out


class _PreActResNet(nn.Module):
    def __init__(self, final_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.group1 = nn.Sequential(_PreActBlock(4, 4, 1), _PreActBlock(4, 4, 1))
        self.group2 = nn.Sequential(_PreActBlock(4, 8, 2), _PreActBlock(8, 8, 1))
        self.group3 = nn.Sequential(_PreActBlock(8, 8, 2))
        self.final = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(inplace=True)) if final_norm else nn.Identity()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out = self.final(self.group3(self.group2(self.group1(self.conv1(x)))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _randomise_norms(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    return model.eval()


def _maps(model, x):
    stages = stage_outputs(model, x)
    with torch.no_grad():
        _, maps = tapped(model, stages)(x)
    return stages, maps


@pytest.mark.parametrize("final_norm", [True, False], ids=["wrn-final-bn", "backdoorbench"])
def test_nad_distils_the_residual_group_outputs_of_a_preactivation_resnet(final_norm):
    model = _randomise_norms(_PreActResNet(final_norm))
    x = torch.rand(2, 3, 16, 16)
    stages, maps = _maps(model, x)
    with torch.no_grad():  # the groups' outputs: after the addition, before the next BatchNorm
        g1 = model.group1(model.conv1(x))
        g2 = model.group2(g1)
        g3 = model.group3(g2)
    assert [s.shape for s in stages] == [(4, 16, 16), (8, 8, 8), (8, 4, 4)]
    assert [s.module for s in stages] == ["group1.1", "group2.1", "group3.0"]
    for got, want in zip(maps, (g1, g2, g3)):
        assert torch.equal(got, want)


def test_nad_distils_the_residual_group_outputs_of_a_post_activation_resnet():
    model = _randomise_norms(ResNet8(num_classes=3, input_shape=(1, 12, 12), width=4))
    x = torch.rand(2, 1, 12, 12)
    stages, maps = _maps(model, x)
    with torch.no_grad():  # each group's output: the ReLU after the addition
        h = F.relu(model.bn_stem(model.conv_stem(x)))
        g1 = model.layer1(h)
        g2 = model.layer2(g1)
        g3 = model.layer3(g2)
    assert [s.shape for s in stages] == [(4, 12, 12), (8, 6, 6), (16, 3, 3)]
    for got, want in zip(maps, (g1, g2, g3)):
        assert torch.equal(got, want)


def test_nad_stages_of_a_plain_cnn_end_at_the_map_each_pooling_layer_receives():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    ).eval()
    x = torch.rand(2, 1, 16, 16)
    stages, maps = _maps(model, x)
    with torch.no_grad():
        a1 = model[1](model[0](x))
        a2 = model[4](model[3](model[2](a1)))
        p2 = model[5](a2)
    assert [s.shape for s in stages] == [(3, 16, 16), (4, 8, 8), (4, 4, 4)]
    for got, want in zip(maps, (a1, a2, p2)):
        assert torch.equal(got, want)


def test_nad_defaults_are_the_reference_codes():
    nad = AttentionDistillation()
    assert (nad.epochs, nad.lr, nad.momentum, nad.weight_decay) == (20, 0.1, 0.9, 1e-4)
    assert nad.betas == (500.0, 1000.0, 1000.0) and nad.power == 2.0 and nad.teacher_epochs == 10
    assert nad.variant == "reference" and nad.BATCH == 64 and nad.NESTEROV


def test_nad_student_rate_is_the_rate_for_two_epochs_then_a_tenth():
    assert [reference_rate(0.1, e) for e in range(20)] == [0.1, 0.1] + [pytest.approx(0.01)] * 18


def test_nad_deepest_stages_get_the_last_betas_and_the_run_is_deterministic():
    torch.manual_seed(0)
    model = _PreActResNet(True)
    x = np.random.default_rng(0).random((40, 3, 16, 16)).astype(np.float32)
    data = RepairData(ImageSet(x, np.arange(40) % 3, "clean"))
    two = AttentionDistillation(epochs=1, teacher_epochs=1, betas=(7.0, 8.0))
    first = two.repair(model, data)
    assert first.details["betas"] == [7.0, 8.0]
    assert [d.split()[0] for d in first.details["distilled"]] == ["group2.1:add_3", "group3.0:add_4"]
    again = two.repair(model, data)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.models[0].model.state_dict().values(), again.models[0].model.state_dict().values())
    )
    many = AttentionDistillation(epochs=1, teacher_epochs=1, betas=(1.0, 2.0, 3.0, 4.0)).repair(model, data)
    assert many.details["betas"] == [2.0, 3.0, 4.0]  # three stages: the deepest three weights


class _NHWCHead(nn.Module):  # a Keras-style head: the last map permuted to N x H x W x C, then flattened
    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 5, 3, padding=1), nn.MaxPool2d(2), nn.Linear(4 * 4 * 5, 2)

    def forward(self, x):
        return self.fc(self.pool(F.relu(self.conv(x))).permute(0, 2, 3, 1).flatten(1))


def test_nad_ignores_maps_whose_axes_were_rearranged_for_the_head():
    stages = stage_outputs(_NHWCHead(), torch.rand(2, 1, 8, 8))
    assert [s.shape for s in stages] == [(5, 8, 8), (5, 4, 4)]
