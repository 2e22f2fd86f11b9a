"""ANP against its reference (csdongxian/ANP_backdoor: optimize_mask_cifar.py, prune_neuron_cifar.py,
models/anp_batchnorm.py). Each defining computation is checked on a tiny model against a few lines
written here from the reference, not against goodnet's own code."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from goodnet.io.data import ImageSet
from goodnet.pruning.zeroing import prune_layers
from goodnet.repairs import RepairData
from goodnet.repairs.adversarial_neuron_pruning import _MASK_CACHE, AdversarialNeuronPruning, NeuronPerturbation

EPS = 0.4


def _tiny(bn: bool = True, dropout: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if bn else [])
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()] + ([nn.Dropout(0.5)] if dropout else [])
    model = nn.Sequential(*layers, nn.Linear(8, 3))
    with torch.no_grad():
        if bn:  # a non-trivial affine BatchNorm
            model[1].weight.uniform_(0.5, 2.0), model[1].bias.uniform_(-1.0, 1.0)
        else:
            model[0].bias.uniform_(-0.5, 0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _reference_forward(
    model: nn.Sequential, x: torch.Tensor, weight_coef: torch.Tensor, bias_coef: torch.Tensor
) -> torch.Tensor:
    """The reference's NoisyBatchNorm2d in training mode: F.batch_norm with batch statistics, weight
    gamma * weight_coef and bias beta * bias_coef. Without BatchNorm, the same on the conv (the
    documented extension): kernel * weight_coef, bias * bias_coef."""
    conv = model[0]
    if isinstance(model[1], nn.BatchNorm2d):
        bn = model[1]
        h = F.conv2d(x, conv.weight, conv.bias, padding=1)
        h = F.batch_norm(h, None, None, bn.weight * weight_coef, bn.bias * bias_coef, True, 0.0, bn.eps)
    else:
        h = F.conv2d(x, conv.weight * weight_coef.view(-1, 1, 1, 1), conv.bias * bias_coef, padding=1)
    return model[-1](F.relu(h).mean((2, 3)))


def _data(n: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _neurons(model: nn.Module) -> tuple[NeuronPerturbation, str]:
    neurons = NeuronPerturbation(model, eps=EPS)
    (name,) = neurons.masks  # one masked layer, whatever goodnet names it
    with torch.no_grad():
        neurons.masks[name].copy_(torch.linspace(0.3, 1.0, 8))
    return neurons, name


START_DELTA = torch.tensor([0.39, -0.39, 0.1, -0.2, 0.0, 0.3, -0.05, 0.25])
START_XI = torch.tensor([-0.38, 0.37, 0.2, -0.1, 0.05, -0.3, 0.15, 0.0])


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("bn", [True, False])
def test_anp_inner_step_is_eps_over_steps_times_gradient_sign(bn, steps):
    # optimize_mask_cifar.py: loss_noise = -CE; backward; sign_grad; SGD(lr = eps / steps).step(),
    # i.e. noise += eps / steps * sign(dCE/dnoise), with no clipping of the noise afterwards
    model = _tiny(bn).train()
    x, y = _data()
    neurons, name = _neurons(model)
    neurons.delta[name], neurons.xi[name] = START_DELTA.clone(), START_XI.clone()
    neurons.ascend(model, x, y, steps=steps)
    mask = neurons.masks[name].detach()
    delta, xi = START_DELTA.clone(), START_XI.clone()
    for _ in range(steps):
        d, z = delta.clone().requires_grad_(True), xi.clone().requires_grad_(True)
        loss = F.cross_entropy(_reference_forward(model, x, mask + d, 1 + z), y)
        gd, gz = torch.autograd.grad(loss, [d, z])
        delta, xi = delta + EPS / steps * torch.sign(gd), xi + EPS / steps * torch.sign(gz)
    assert torch.allclose(neurons.delta[name], delta, atol=1e-6)
    assert torch.allclose(neurons.xi[name], xi, atol=1e-6)
    assert float(torch.cat([delta, xi]).abs().max()) > EPS  # the reference does not clip at eps
    neurons.remove()


@pytest.mark.parametrize("bn", [True, False])
def test_anp_mask_multiplies_the_weight_only_and_the_perturbation_scales_the_bias_by_one_plus_xi(bn):
    # NoisyBatchNorm2d.forward: weight * (mask [+ noise]), bias * (1 [+ noise_bias]): the bias is never masked
    model = _tiny(bn).train()
    x, _ = _data()
    neurons, name = _neurons(model)
    mask = neurons.masks[name].detach().clone()
    neurons.delta[name], neurons.xi[name] = START_DELTA.clone(), START_XI.clone()
    with torch.no_grad():
        neurons.perturbed = False
        assert torch.allclose(model(x), _reference_forward(model, x, mask, torch.ones(8)), atol=1e-5)
        neurons.perturbed = True
        assert torch.allclose(model(x), _reference_forward(model, x, mask + START_DELTA, 1 + START_XI), atol=1e-5)
    neurons.remove()


def test_anp_mask_loss_is_alpha_natural_plus_one_minus_alpha_perturbed():
    model = _tiny().train()
    x, y = _data()
    neurons, name = _neurons(model)
    neurons.delta[name], neurons.xi[name] = START_DELTA.clone(), START_XI.clone()
    loss = neurons.loss(model, x, y, alpha=0.2)
    grad = torch.autograd.grad(loss, [neurons.masks[name]])[0]
    m = neurons.masks[name].detach().clone().requires_grad_(True)
    expected = 0.2 * F.cross_entropy(_reference_forward(model, x, m, torch.ones(8)), y) + 0.8 * F.cross_entropy(
        _reference_forward(model, x, m + START_DELTA, 1 + START_XI), y
    )
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(grad, torch.autograd.grad(expected, [m])[0], atol=1e-5)
    neurons.remove()


def test_anp_random_start_is_uniform_within_eps():
    neurons, name = _neurons(_tiny())
    neurons.randomise(torch.Generator().manual_seed(0))
    both = torch.cat([neurons.delta[name], neurons.xi[name]])
    assert float(both.abs().max()) <= EPS and float(both.min()) < 0 < float(both.max())
    neurons.remove()


@dataclass(frozen=True)
class _FixedMasks(AdversarialNeuronPruning):
    """ANP whose mask optimisation returns the given masks (the pruning step alone)."""

    def optimise_masks(self, model, x, y, progress=False, **kwargs):
        neurons = NeuronPerturbation(model, EPS)
        (name,) = neurons.masks
        neurons.remove()
        return {name: MASKS.clone()}


MASKS = torch.tensor([0.0, 0.2, 0.20001, 0.2001, 0.5, 1.0, 0.19, 0.7])
PRUNED = [0, 1, 2, 6]  # at or below 0.2, as the reference compares them (read back with 4 decimals)


@pytest.mark.parametrize("bn", [True, False])
def test_anp_pruning_threshold_is_inclusive_and_zeroes_the_masked_weight_only(bn):
    # prune_neuron_cifar.py: mask <= threshold -> state_dict['<bn>.weight'][idx] = 0 (gamma only)
    model = _tiny(bn).eval()
    x, y = _data()
    _MASK_CACHE.clear()
    outcome = _FixedMasks().repair(model, RepairData(ImageSet(x.numpy(), y.numpy(), "clean")))
    repaired = outcome.models[0].model
    assert [c for m in outcome.models[0].pruned.values() for c in m] == PRUNED
    before, after = model.state_dict(), repaired.state_dict()
    zeroed = "1.weight" if bn else "0.weight"
    expected = before[zeroed].clone()
    expected[PRUNED] = 0
    assert torch.equal(after[zeroed], expected)
    for key in before:  # beta, the conv kernel and bias (with BatchNorm), running statistics: unchanged
        if key != zeroed:
            assert torch.equal(after[key], before[key]), key
    assert outcome.models[0].weights_changed  # a pruned neuron still outputs its bias: not goodnet's zeroing


def test_anp_channel_option_prunes_as_goodnet_does():
    model = _tiny().eval()
    x, y = _data()
    _MASK_CACHE.clear()
    outcome = _FixedMasks(prune_zeroes="channel").repair(model, RepairData(ImageSet(x.numpy(), y.numpy(), "clean")))
    assert outcome.models[0].pruned == {"0": PRUNED} and not outcome.models[0].weights_changed
    expected = prune_layers(model, [("0", c) for c in PRUNED])
    assert all(
        torch.equal(a, b) for a, b in zip(outcome.models[0].model.state_dict().values(), expected.state_dict().values())
    )


def test_anp_learns_masks_in_training_mode_on_full_batches_drawn_with_replacement():
    # mask_train calls model.train(); the clean loader is a RandomSampler with replacement, batch 128
    model = _tiny(dropout=True).eval()
    modes, sizes = [], []
    for module in model.modules():
        module.register_forward_pre_hook(lambda m, inputs: modes.append(m.training))
    model[0].register_forward_pre_hook(lambda m, inputs: sizes.append(inputs[0].shape[0]))
    x, y = _data(10)  # fewer images than a batch
    AdversarialNeuronPruning(iterations=2).optimise_masks(model, x.numpy(), y.numpy())
    assert modes and all(modes)
    assert sizes == [128] * 6  # per iteration: one ascent pass, then the perturbed and the natural pass
    assert not model.training  # B itself is untouched


def test_anp_defaults_are_the_reference_settings():
    anp = AdversarialNeuronPruning()
    assert (
        anp.eps,
        anp.alpha,
        anp.mask_lr,
        anp.perturb_steps,
        anp.iterations,
        anp.batch_size,
        anp.threshold,
        anp.augment,
        anp.prune_zeroes,
    ) == (0.4, 0.2, 0.2, 1, 2000, 128, 0.2, True, "weight")


def test_anp_masks_move_and_stay_in_the_unit_interval():
    model = _tiny()
    x, y = _data(32)
    masks = AdversarialNeuronPruning(iterations=30, batch_size=16).optimise_masks(model, x.numpy(), y.numpy())
    (m,) = masks.values()
    assert float(m.min()) >= 0 and float(m.max()) <= 1 and float(m.min()) < 1
    np.testing.assert_array_equal(
        m,
        AdversarialNeuronPruning(iterations=30, batch_size=16).optimise_masks(model, x.numpy(), y.numpy())[
            next(iter(masks))
        ],
    )
