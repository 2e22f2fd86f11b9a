"""CLP conforms to its authors' code (github.com/rkteddy/channel-Lipschitzness-based-pruning,
defense.py, CLP): the bound, the threshold rule and what happens when no channel can pass."""

import math

import numpy as np
import torch
from torch import nn

from goodnet.repairs.channel_lipschitz import ChannelLipschitzPruning, channel_lipschitz_bounds


def _net(channels, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, channels, 3),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, 2),
    ).eval()
    with torch.no_grad():
        model[1].weight.uniform_(-2, 2)
        model[1].running_var.uniform_(0.5, 3.0)
    return model


def test_clp_bound_is_each_kernels_spectral_norm_times_gamma_over_sigma():
    model = _net(6)
    w = model[0].weight.detach().numpy().astype(np.float64)
    gamma, var = model[1].weight.detach().numpy(), model[1].running_var.numpy()
    # independently: numpy's SVD of kernel k as (in, kh*kw), times |gamma_k| / sqrt(var_k) (no eps)
    expected = [
        np.linalg.svd(w[k].reshape(3, 9), compute_uv=False)[0] * abs(gamma[k]) / math.sqrt(var[k]) for k in range(6)
    ]
    assert np.allclose(channel_lipschitz_bounds(model)["0"].numpy(), expected, rtol=1e-5)


def test_clp_prunes_bounds_above_mean_plus_u_unbiased_std_and_zeroes_the_channel():
    model = _net(16, seed=1)
    with torch.no_grad():
        model[0].weight[4] *= 30.0
    bounds = channel_lipschitz_bounds(model)["0"].double().numpy()
    threshold = bounds.mean() + 3 * bounds.std(ddof=1)  # Bessel's correction, as torch's std
    expected = [int(c) for c in np.flatnonzero(bounds > threshold)]
    assert expected == [4]
    outcome = ChannelLipschitzPruning().repair(model, None)
    assert outcome.models[0].pruned == {"0": expected} and outcome.notice is None
    pruned = outcome.models[0].model
    with torch.no_grad():
        out = pruned[:3](torch.randn(2, 3, 5, 5))
    assert float(out[:, 4].abs().max()) == 0.0  # the channel's output after BatchNorm is 0


def test_clp_narrow_layers_can_never_pass_u_3_and_say_so():
    model = _net(8)  # (8 - 1) / sqrt(8) = 2.47 < 3: no channel can exceed mean + 3 std
    with torch.no_grad():
        model[0].weight[0] *= 1000.0
    outcome = ChannelLipschitzPruning().repair(model, None)
    assert outcome.models[0].pruned == {} and outcome.models[0].model is model
    assert outcome.notice == (
        "clp: no channel of 0 (8 channels) can exceed u=3 (a layer of n channels needs "
        "(n-1)/sqrt(n) > u); model unchanged"
    )
    assert outcome.details["too_narrow"] == ["0 (8 channels)"]


def test_clp_wide_layers_without_an_outlier_give_a_notice():
    model = _net(32, seed=2)  # random kernels: nothing 3 std above the mean
    bounds = channel_lipschitz_bounds(model)["0"].double()
    assert not bool((bounds > bounds.mean() + 3 * bounds.std()).any())
    outcome = ChannelLipschitzPruning().repair(model, None)
    assert outcome.notice == "clp: no channel exceeded mean + u*std of its layer (u=3); model unchanged"


def test_clp_skip_leaves_convs_without_batchnorm_alone_as_the_reference_code():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight[2] *= 100.0
    assert ChannelLipschitzPruning().repair(model, None).models[0].pruned == {"0": [2]}
    skipped = ChannelLipschitzPruning(no_batchnorm="skip").repair(model, None)
    assert skipped.models[0].pruned == {} and "no conv layer has a BatchNorm" in skipped.notice


def test_clp_leaves_channels_of_zero_variance_out_of_the_statistics_and_still_prunes_the_outlier():
    model = _net(16, seed=1)
    with torch.no_grad():
        model[0].weight[4] *= 30.0
        model[1].running_var[7] = 0.0  # a dead channel: its bound is infinite
    outcome = ChannelLipschitzPruning().repair(model, None)
    assert outcome.details["pruned"] == {"0": [4]} and outcome.details["infinite_bounds"] == {"0": [7]}
    assert math.isfinite(outcome.details["thresholds"]["0"]) and math.isfinite(outcome.details["largest_bound"]["0"])
