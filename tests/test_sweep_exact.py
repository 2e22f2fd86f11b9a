"""The cached sweep must give exactly the predictions of re-running the whole pruned model."""

import numpy as np
import pytest
import torch
from conftest import LAB_WEIGHTS, needs_lab_weights

from goodnet.inference import predict
from goodnet.io.model_files import load_model
from goodnet.models import DeepID, SmallCNN
from goodnet.pruning.graph_split import split_at_conv
from goodnet.pruning.profiling import channel_means, pruning_order
from goodnet.pruning.sweep import naive_sweep, run_trunk, sweep


def _with_dead_channels(model, layer, dead):
    """Push some channels' biases far negative so they never fire, like the lab's 31 dead channels."""
    with torch.no_grad():
        getattr(model, layer).bias[dead] = -1e4
    return model


def _check_equal(model, layer, x, order):
    split = split_at_conv(model, layer)
    crossing = run_trunk(split, x, batch_size=17)
    result = sweep(split, crossing, order, batch_size=13)
    reference = naive_sweep(model, layer, x, order, batch_size=29)
    for k, labels in reference.items():
        np.testing.assert_array_equal(result.labels[k], labels, err_msg=f"step {k}")
    return result


@pytest.mark.parametrize("order_name", ["ascending", "descending"])
def test_cached_sweep_equals_full_rerun_deepid(order_name):
    model = _with_dead_channels(DeepID(num_classes=50).eval(), "conv_3", [3, 10, 11, 40])
    x = (torch.rand(48, 3, 55, 47) * 255).numpy()
    split = split_at_conv(model, "conv_3")
    means = channel_means(run_trunk(split, x)[0])
    assert (means[[3, 10, 11, 40]] == 0).all()
    order = pruning_order(means, order_name)
    result = _check_equal(model, "conv_3", x, order)
    # Dead channels need no tail re-run at all.
    steps_of_dead = [i for i, c in enumerate(order) if c in (3, 10, 11, 40)]
    assert all(result.recomputed[i] == 0 for i in steps_of_dead)
    assert result.labels.shape == (61, 48)


def test_cached_sweep_equals_full_rerun_small_cnn_every_conv_layer():
    model = SmallCNN(num_classes=10, width=4).eval()
    x = (torch.rand(40, 1, 28, 28) * 255).numpy()
    for layer in ("conv_1", "conv_2", "conv_3"):
        channels = getattr(model, layer).out_channels
        order = np.random.default_rng(1).permutation(channels)
        _check_equal(model, layer, x, order)


def test_skip_logic_recomputes_only_inputs_using_the_channel():
    model = DeepID(num_classes=20).eval()
    x = (torch.rand(30, 3, 55, 47) * 255).numpy()
    split = split_at_conv(model, "conv_3")
    crossing = run_trunk(split, x)
    crossing[0][:20, 5] = 0  # 20 inputs no longer use channel 5
    order = [5] + [c for c in range(60) if c != 5]
    result = sweep(split, crossing, order)
    assert result.recomputed[0] == 10


def test_tail_on_subset_matches_model_output():
    model = DeepID(num_classes=30).eval()
    x = (torch.rand(12, 3, 55, 47) * 255).numpy()
    split = split_at_conv(model, "conv_3")
    crossing = run_trunk(split, x)
    with torch.inference_mode():
        np.testing.assert_array_equal(split.tail(*crossing).numpy(), model(torch.from_numpy(x)).numpy())


@needs_lab_weights
def test_cached_sweep_equals_full_rerun_on_lab_badnet():
    x = (torch.rand(24, 3, 55, 47) * 255).numpy()
    model = load_model(LAB_WEIGHTS, arch="deepid", input_shape=(3, 55, 47))
    split = split_at_conv(model, "conv_3")
    order = pruning_order(channel_means(run_trunk(split, x)[0]))
    _check_equal(model, "conv_3", x, order)
    assert predict(model, x).shape == (24,)
