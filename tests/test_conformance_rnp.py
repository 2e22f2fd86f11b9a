"""RNP (Li et al., ICML 2023) against the authors' code (github bboylyg/RNP, main.py and
models/mask_batchnorm.py), each defining computation on a tiny model, by hand or by a few-line
reimplementation here."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.repairs import RepairData
from goodnet.repairs.rnp import ReconstructiveNeuronPruning, attach_masks, mask_sites, prune_scales


class TinyBN(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.num_classes = classes
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


class TinyPlain(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.num_classes = classes
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN scales, shifts and running statistics (eval and train mode then differ)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model


def _images(n: int = 12, seed: int = 0, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.3 * torch.rand(n, 1, 6, 6, generator=g)
    for i, label in enumerate(y):  # class = which third of the image is bright
        x[i, 0, :, 2 * int(label) : 2 * int(label) + 2] += 0.7
    return x.double(), y


def _trained(model: nn.Module, x, y, steps: int = 20) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _with_masks(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    hooks = attach_masks(model, masks)
    try:
        return model(x)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_rnp_mask_of_zero_gives_exactly_the_pruned_model_on_a_batchnorm_model(mode):
    model = _randomised(TinyBN().double())
    x, _ = _images()
    assert mask_sites(model) == ("batchnorm", ["bn1", "bn2"])
    masks = {"bn1": torch.ones(4, dtype=torch.double), "bn2": torch.ones(5, dtype=torch.double)}
    masks["bn1"][[0, 2]] = 0
    masks["bn2"][3] = 0
    by_hand = copy.deepcopy(model)  # the reference's pruning: BN weight (gamma) = 0, nothing else
    with torch.no_grad():
        by_hand.bn1.weight[[0, 2]] = 0
        by_hand.bn2.weight[3] = 0
    pruned = prune_scales(model, {"bn1": [0, 2], "bn2": [3]})
    for name in model.state_dict():  # only the chosen gammas changed
        expected = by_hand.state_dict()[name]
        assert torch.equal(pruned.state_dict()[name], expected), name
    for m in (model, pruned, by_hand):
        m.train(mode == "train")
    masked = _with_masks(copy.deepcopy(model), masks, x)
    assert torch.allclose(masked, by_hand(x), atol=1e-12)
    assert torch.allclose(masked, pruned(x), atol=1e-12)
    # a pruned channel outputs the BN shift beta, not 0, exactly as in the reference
    probe = copy.deepcopy(pruned)
    seen = {}
    probe.bn1.register_forward_hook(lambda m, i, o: seen.setdefault("bn1", o))
    probe(x)
    assert torch.allclose(seen["bn1"][:, 0], model.bn1.bias[0].expand_as(seen["bn1"][:, 0]))


def test_rnp_mask_multiplies_the_batchnorm_scale_in_train_mode():
    model = _randomised(TinyBN().double()).train()
    x, _ = _images()
    g = torch.Generator().manual_seed(1)
    masks = {
        "bn1": torch.rand(4, generator=g, dtype=torch.double),
        "bn2": torch.rand(5, generator=g, dtype=torch.double),
    }
    scaled = copy.deepcopy(model)  # MaskBatchNorm2d: batch_norm(x, weight * mask, bias), batch statistics
    with torch.no_grad():
        scaled.bn1.weight.mul_(masks["bn1"])
        scaled.bn2.weight.mul_(masks["bn2"])
    assert torch.allclose(_with_masks(copy.deepcopy(model), masks, x), scaled(x), atol=1e-12)


def test_rnp_without_batchnorm_masks_the_conv_kernel_before_its_bias():
    model = TinyPlain().double().eval()
    x, _ = _images()
    assert mask_sites(model) == ("conv", ["conv1", "conv2"])
    masks = {
        "conv1": torch.tensor([0.0, 0.5, 1.0, 0.25], dtype=torch.double),
        "conv2": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5], dtype=torch.double),
    }
    scaled = copy.deepcopy(model)  # W * mask, bias kept
    with torch.no_grad():
        scaled.conv1.weight.mul_(masks["conv1"].view(-1, 1, 1, 1))
        scaled.conv2.weight.mul_(masks["conv2"].view(-1, 1, 1, 1))
    assert torch.allclose(_with_masks(copy.deepcopy(model), masks, x), scaled(x), atol=1e-12)
    pruned = prune_scales(model, {"conv1": [0], "conv2": [1]})
    assert not pruned.conv1.weight[0].any() and torch.equal(pruned.conv1.bias, model.conv1.bias)
    zero_masks = {
        "conv1": torch.tensor([0.0, 1, 1, 1], dtype=torch.double),
        "conv2": torch.tensor([1.0, 0, 1, 1, 1], dtype=torch.double),
    }
    assert torch.allclose(_with_masks(copy.deepcopy(model), zero_masks, x), pruned(x), atol=1e-12)


def test_rnp_recovery_step_is_sgd_on_alpha_times_clean_loss_with_batch_statistics_then_clipped():
    model = _randomised(TinyBN().double())
    x, y = _images()
    repair = ReconstructiveNeuronPruning(recover_epochs=1, batch_size=64, recover_lr=0.2, recover_alpha=0.2)
    masks = repair.recover(copy.deepcopy(model), ["bn1", "bn2"], x, y, torch.Generator().manual_seed(0))
    # by hand: d(alpha * CE)/d(mask) at mask = 1 is alpha * gamma * dCE/dgamma, in train mode;
    # the first SGD step with momentum moves by lr times that gradient; then clip to [0, 1]
    ref = copy.deepcopy(model).train()
    loss = F.cross_entropy(ref(x), y)
    g1, g2 = torch.autograd.grad(loss, [ref.bn1.weight, ref.bn2.weight])
    for name, grad in (("bn1", g1), ("bn2", g2)):
        gamma = getattr(model, name).weight.detach()
        expected = (1 - 0.2 * 0.2 * gamma * grad).clamp(0, 1)
        assert torch.allclose(masks[name].double(), expected, atol=1e-10), name
    # the clip is active: some masks wanted to rise above 1
    assert any(((1 - 0.04 * getattr(model, n).weight * g) > 1).any() for n, g in (("bn1", g1), ("bn2", g2)))


def _reference_unlearning(model, x, y, lr, floor, epochs, milestones=(10, 20)):
    """The reference's unlearning loop, one batch per epoch: train mode, SGD on -CE, MultiStepLR,
    stop once the epoch's training accuracy <= floor."""
    net = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    accuracies = []
    for _ in range(epochs):
        optimizer.zero_grad()
        out = net(x)
        loss = F.cross_entropy(out, y)
        accuracies.append(100.0 * int((out.argmax(1) == y).sum()) / len(y))
        (-loss).backward()
        optimizer.step()
        schedule.step()
        if accuracies[-1] <= floor:
            break
    return net, accuracies


def test_rnp_unlearning_follows_the_reference_loop_and_lr_schedule():
    x, y = _images(n=24)
    model = _trained(TinyBN().double(), x, y)
    repair = ReconstructiveNeuronPruning(unlearn_lr=0.5, unlearn_floor=0.0, unlearn_epochs=14, batch_size=64)
    ours, epochs, accuracies = repair.unlearn(model, x, y, torch.Generator().manual_seed(0))
    ref, ref_accuracies = _reference_unlearning(model, x, y, 0.5, 0.0, 14)
    assert epochs == 14 and np.allclose(accuracies, ref_accuracies)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-8), name


def test_rnp_unlearning_stops_after_the_first_epoch_whose_training_accuracy_is_at_or_below_the_floor():
    x, y = _images(n=24)
    model = _trained(TinyBN().double(), x, y)
    _, free = _reference_unlearning(model, x, y, 0.5, 0.0, 14)
    assert free[0] > min(free)  # accuracy does fall during unlearning
    for floor in sorted(set(free)):
        expected = next(i for i, a in enumerate(free) if a <= floor) + 1
        repair = ReconstructiveNeuronPruning(unlearn_lr=0.5, unlearn_floor=floor, unlearn_epochs=14, batch_size=64)
        _, epochs, accuracies = repair.unlearn(model, x, y, torch.Generator().manual_seed(0))
        assert epochs == expected and accuracies[-1] <= floor and all(a > floor for a in accuracies[:-1])


def _clean(x, y):
    return ImageSet(x.float().numpy(), y.numpy(), "clean_valid")


def test_rnp_repair_zeroes_only_the_batchnorm_scale_of_channels_at_or_below_the_threshold():
    x, y = _images(n=24)
    model = _trained(TinyBN(), x.float(), y)
    outcome = ReconstructiveNeuronPruning(threshold=1.0, unlearn_epochs=2, recover_epochs=2).run(
        model, RepairData(_clean(x, y))
    )
    repaired = outcome.models[0].model
    assert outcome.details["pruned"] == {"bn1": [0, 1, 2, 3], "bn2": [0, 1, 2, 3, 4]}  # every mask <= 1
    for name, value in model.state_dict().items():
        if name in ("bn1.weight", "bn2.weight"):
            assert not repaired.state_dict()[name].any()
        else:  # conv kernels, BN shifts and statistics untouched
            assert torch.equal(repaired.state_dict()[name], value), name
    assert outcome.models[0].weights_changed  # B' is not B with channels zeroed: the shifts remain


def test_rnp_threshold_rule_prunes_exactly_the_masks_at_or_below_it_and_milder_lowers_it():
    x, y = _images(n=24)
    model = _trained(TinyBN(), x.float(), y)
    repair = ReconstructiveNeuronPruning(threshold=0.9, unlearn_epochs=3, recover_epochs=3, unlearn_lr=0.05)
    outcome = repair.run(model, RepairData(_clean(x, y)))
    masks = outcome.details["masks"]
    expected = {n: [c for c, v in enumerate(m) if v <= 0.9] for n, m in masks.items()}
    assert outcome.details["pruned"] == {n: c for n, c in expected.items() if c}
    assert [m.threshold for m in repair.milder()] == [0.45, 0.225]
    nothing = ReconstructiveNeuronPruning(threshold=0.0, unlearn_epochs=3, recover_epochs=3, unlearn_lr=0.05)
    if all(v > 0 for m in masks.values() for v in m):
        result = nothing.run(model, RepairData(_clean(x, y)))
        assert result.details["masks_reused"] and result.notice and "model unchanged" in result.notice
        assert not result.models[0].pruned


def test_rnp_defaults_are_the_reference_settings():
    r = ReconstructiveNeuronPruning()
    assert (
        r.pruning_by,
        r.threshold,
        r.unlearn_lr,
        r.unlearn_floor,
        r.unlearn_epochs,
        r.unlearn_schedule,
        r.recover_lr,
        r.recover_alpha,
        r.recover_epochs,
        r.batch_size,
    ) == ("threshold", 0.2, 0.01, 20.0, 20, (10, 20), 0.2, 0.2, 20, 128)


def test_rnp_unlearning_stops_at_the_last_finite_weights_when_the_ascent_diverges():
    # no BatchNorm and huge inputs: gradient ascent overflows within a few steps
    model = TinyPlain().double()
    x, y = _images(n=24)
    repair = ReconstructiveNeuronPruning(unlearn_lr=1e6, unlearn_floor=0.0, unlearn_epochs=20, batch_size=4)
    unlearned, epochs, _ = repair.unlearn(model, x * 1e6, y, torch.Generator().manual_seed(0))
    assert epochs < 20
    assert all(torch.isfinite(p).all() for p in unlearned.parameters())


def test_rnp_recovery_skips_batches_whose_gradient_is_not_finite():
    model = TinyPlain().double()
    with torch.no_grad():
        model.fc.weight.fill_(1e308)  # every logit overflows
    x, y = _images()
    masks = ReconstructiveNeuronPruning(recover_epochs=2, batch_size=4).recover(
        model, ["conv1", "conv2"], x, y, torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(m, torch.ones_like(m)) for m in masks.values())
