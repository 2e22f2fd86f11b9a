"""Two pruning defenses from the literature: ANP (adversarial neuron pruning) and CLP (channel
Lipschitzness-based pruning, data-free)."""

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from goodnet.errors import ModelError
from goodnet.io.data import ImageSet, load_images
from goodnet.io.model_files import load_model
from goodnet.measure import run_repair
from goodnet.metrics import model_accuracy
from goodnet.repairs import RepairData, build_repair, repair_names
from goodnet.repairs.adversarial_neuron_pruning import _MASK_CACHE, AdversarialNeuronPruning, NeuronPerturbation
from goodnet.repairs.channel_lipschitz import ChannelLipschitzPruning, channel_lipschitz_bounds


def _demo(demo_run, *roles):
    return load_model(demo_run["model"]), [load_images(demo_run["inputs"][r]) for r in roles]


def _conv_bn(channels=16, bn=True):
    layers = [nn.Conv2d(2, channels, 3, padding=1)] + ([nn.BatchNorm2d(channels)] if bn else [])
    return nn.Sequential(*layers, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)).eval()


def test_both_are_registered_and_built_by_name():
    assert {"anp", "clp"} <= set(repair_names())
    assert isinstance(build_repair("anp", {"threshold": 0.1}), AdversarialNeuronPruning)
    clp = build_repair("clp", {"u": 2.5})
    assert clp.data == "none" and clp.guarded and clp.u == 2.5
    assert [m.u for m in clp.milder()] == [3.5, 4.5]  # milder: larger u, mildest last
    assert [m.threshold for m in build_repair("anp").milder()] == pytest.approx([0.1, 0.05, 0.01])


def test_clp_prunes_the_channel_with_the_huge_kernel_batchnorm_scale_included():
    torch.manual_seed(0)
    model = _conv_bn()
    conv, bn = model[0], model[1]
    with torch.no_grad():
        conv.weight[5] *= 50.0  # a huge-norm kernel: an outlier of its layer
        conv.weight[9] *= 50.0  # as huge, but its BatchNorm scales it back down
        bn.weight[9] = 1.0 / 50.0
        bn.running_var[11] = 1e-4  # an ordinary kernel that BatchNorm blows up (|gamma| / sqrt(var) = 100)
    bounds = channel_lipschitz_bounds(model)["0"]
    scale = bn.weight.detach().abs() / torch.sqrt(bn.running_var)  # the reference's sigma: no eps
    expected = torch.stack(
        [torch.linalg.svdvals(conv.weight[c].detach().reshape(2, 9))[0] * scale[c] for c in range(16)]
    )
    assert torch.allclose(bounds, expected, rtol=1e-5)
    outcome = ChannelLipschitzPruning(u=2.0).repair(model, None)
    assert outcome.models[0].pruned == {"0": [5, 11]}  # not 9: its BatchNorm takes its size back
    pruned = outcome.models[0].model
    with torch.no_grad():
        assert float(pruned[0].weight[[5, 11]].abs().sum()) == 0 and float(pruned[1].weight[[5, 11]].abs().sum()) == 0
    # paper's u = 3: with 16 channels one lone outlier still exceeds mean + 3 std
    lone = _conv_bn(bn=False)
    with torch.no_grad():
        lone[0].weight[3] *= 50.0
    assert ChannelLipschitzPruning().repair(lone, None).models[0].pruned == {"0": [3]}


def test_clp_refuses_a_model_without_conv_layers():
    with pytest.raises(ModelError, match="no Conv2d"):
        ChannelLipschitzPruning().check_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ModelError, match="no Conv2d"):
        AdversarialNeuronPruning().check_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("bn", [True, False])
def test_a_zero_anp_mask_is_the_references_pruning(bn):
    torch.manual_seed(0)
    model = _conv_bn(bn=bn)
    if bn:
        with torch.no_grad():  # non-trivial BatchNorm statistics and affine
            model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2)
            model[1].weight.uniform_(0.5, 2), model[1].bias.uniform_(-1, 1)
    x = torch.randn(4, 2, 6, 6)
    pruned = copy.deepcopy(model)  # the reference zeroes the masked weight: gamma (else the conv kernel)
    with torch.no_grad():
        pruned[1 if bn else 0].weight[[2, 7]] = 0.0
    expected = pruned(x)
    neurons = NeuronPerturbation(model, eps=0.4)
    name = "1" if bn else "0"
    assert neurons.neurons == {name: model[1] if bn else model[0]}  # BatchNorm's channel where there is one
    with torch.no_grad():
        neurons.masks[name][[2, 7]] = 0.0
        assert torch.allclose(model(x), expected, atol=1e-5)
    neurons.remove()


def test_anp_perturbation_stays_within_twice_eps_and_raises_the_loss():
    torch.manual_seed(0)
    model = _conv_bn()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(16, 2, 6, 6), torch.randint(0, 3, (16,))
    neurons = NeuronPerturbation(model, eps=0.3)
    neurons.randomise(torch.Generator().manual_seed(0))  # the random start ...
    before = neurons.loss(model, x, y, alpha=0.0).item()
    neurons.ascend(model, x, y, steps=5)  # ... then sign-gradient ascent from it (unclipped, as the reference)
    for store in (neurons.delta, neurons.xi):
        assert float(store["1"].abs().max()) <= 2 * 0.3 + 1e-6
        assert float(store["1"].abs().max()) > 0
    assert neurons.loss(model, x, y, alpha=0.0).item() > before  # the ascent found a worse neuron setting
    neurons.remove()
    assert not model[1]._forward_hooks  # hooks removed: B's copy runs as before


def test_anp_masks_stay_in_the_unit_interval_and_are_deterministic():
    torch.manual_seed(0)
    model = _conv_bn()
    x = np.random.default_rng(0).normal(size=(64, 2, 6, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    repair = AdversarialNeuronPruning(iterations=20, batch_size=16, mask_lr=2.0)
    masks = repair.optimise_masks(model, x, y)["1"]  # keyed by the BatchNorm whose gamma is masked
    assert masks.min() >= 0 and masks.max() <= 1 and masks.min() < 1  # they moved, within [0, 1]
    assert torch.equal(masks, repair.optimise_masks(model, x, y)["1"])
    assert not torch.equal(
        masks,
        AdversarialNeuronPruning(iterations=20, batch_size=16, mask_lr=2.0, seed=1).optimise_masks(model, x, y)["1"],
    )
    _MASK_CACHE.clear()
    outcome = repair.repair(model, RepairData(ImageSet(x, y, "clean")))
    pruned = [c for c in range(16) if round(float(masks[c]), 4) <= repair.threshold]
    assert outcome.models[0].pruned == ({"1": pruned} if pruned else {})
    milder = repair.milder()[0].repair(model, RepairData(ImageSet(x, y, "clean")))
    assert milder.details["masks_reused"] and not outcome.details["masks_reused"]


@dataclass(frozen=True)
class _SpyANP(AdversarialNeuronPruning):
    """ANP that records what data it was given (not registered)."""

    def repair(self, model, data, progress=False):
        _SEEN.append(data)
        return super().repair(model, data, progress)


@dataclass(frozen=True)
class _SpyCLP(ChannelLipschitzPruning):
    def repair(self, model, data, progress=False):
        _SEEN.append(data)
        return super().repair(model, data, progress)


_SEEN = []


def test_anp_on_the_demo_badnet_keeps_the_budget_and_never_sees_poisoned_data(demo_run):
    # This test checks the contract and the budget, not an ASR drop (fewer iterations than the
    # reference's 2000, to stay quick).
    model, (clean, poisoned_valid, clean_test, poisoned_test) = _demo(
        demo_run, "clean_valid", "poisoned_valid", "clean_test", "poisoned_test"
    )
    _SEEN.clear()
    _MASK_CACHE.clear()
    result = run_repair(
        model,
        _SpyANP(iterations=40),
        {
            "clean_valid": clean,
            "poisoned_valid": poisoned_valid,
            "clean_test": clean_test,
            "poisoned_test": poisoned_test,
        },
    )
    assert _SEEN and all(d.poisoned_valid is None and d.held_out is not None for d in _SEEN)
    assert all(len(d.clean_valid) < len(clean) for d in _SEEN)  # fitted on the guard's share only
    repaired = result.models[0].repaired
    harm = result.harm
    # the reference's sign-step ANP may cost this BN-free CNN too much; the guard then hands back B
    assert harm is not None and (harm.attempts[-1].status == "within budget" or harm.delivered == "B unchanged")
    assert (
        model_accuracy(model, clean_test.x, clean_test.y) - model_accuracy(repaired.model, clean_test.x, clean_test.y)
        < 3
    )
    assert repaired.weights_changed == bool(repaired.pruned)  # kernels zeroed, their biases kept (the reference's)
    if harm.delivered == "B unchanged":
        assert repaired.pruned == {}
        return
    masks = result.details["masks"]
    assert all(0.0 <= v <= 1.0 for m in masks.values() for v in m)
    expected = {layer: [c for c, v in enumerate(m) if v <= result.delivered.threshold] for layer, m in masks.items()}
    assert repaired.pruned == {layer: c for layer, c in expected.items() if c}


def test_clp_runs_data_free_and_guarded_through_the_runner(demo_run):
    model, (clean, poisoned_valid, clean_test, poisoned_test) = _demo(
        demo_run, "clean_valid", "poisoned_valid", "clean_test", "poisoned_test"
    )
    tests = {"clean_test": clean_test, "poisoned_test": poisoned_test}
    _SEEN.clear()
    unguarded = run_repair(model, _SpyCLP(), tests)  # no clean data: it still runs, unjudged
    assert _SEEN == [None] and unguarded.harm is None
    guarded = run_repair(model, _SpyCLP(u=0.5), {"clean_valid": clean, "poisoned_valid": poisoned_valid, **tests})
    assert all(d is not None and d.poisoned_valid is None for d in _SEEN[1:])
    harm = guarded.harm  # u = 0.5 prunes a lot: the guard judges it and falls back to milder settings or B
    assert harm is not None and harm.attempts[0].status == "past budget" and harm.fell_back
    assert all(a.drop is None or a.status != "within budget" or a.drop <= 2.0 for a in harm.attempts)
    # deterministic: the same B' twice
    again = run_repair(model, ChannelLipschitzPruning(), tests).models[0].repaired
    first = unguarded.models[0].repaired
    assert again.pruned == first.pruned
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), first.model.state_dict().values()))
