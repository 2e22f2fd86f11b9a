"""Benchmark: the cached pruning sweep against the naive one every public solution uses.

DeepID at lab size (two data sets of 11,547 random 3x55x47 inputs), the full sweep over all 60
conv_3 channels on both. The naive method (copy the model, zero the channels, run everything) is
timed on a few steps and extrapolated to all 61; its predictions at those steps must equal the
cached sweep's. Also times GoodNet G against B. All ratios come from this one run.

    python benchmarks/sweep.py                 # lab weights if ../shared/fixtures has them
    python benchmarks/sweep.py --weights random
    python benchmarks/sweep.py --model resnet8 # a conv inside a residual block, BatchNorm pruned along
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from goodnet.devices import resolve_device
from goodnet.inference import predict
from goodnet.io.model_files import load_model
from goodnet.models import DeepID, ResNet8
from goodnet.models.goodnet import PrunedGoodNet
from goodnet.pruning.graph_split import split_at_conv
from goodnet.pruning.profiling import channel_means, pruning_order
from goodnet.pruning.sweep import naive_sweep, run_trunk, sweep, tail_predictions

LAB_WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "lab_bd_weights.h5")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=11547, help="inputs per data set (lab: 11547)")
    parser.add_argument("--weights", choices=["auto", "lab", "random"], default="auto")
    parser.add_argument("--naive-steps", type=int, default=3, help="naive steps timed per data set")
    parser.add_argument(
        "--model",
        choices=["deepid", "resnet8"],
        default="deepid",
        help="deepid (lab size, conv_3) or resnet8 (3x32x32 inputs, random weights and BatchNorm statistics)",
    )
    parser.add_argument("--layer", default=None, help="conv to prune (default: conv_3 / layer2.conv1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (as goodnet's --device); default cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)

    torch.manual_seed(0)
    if args.model == "resnet8":
        layer = args.layer or "layer2.conv1"
        model = ResNet8(num_classes=10, input_shape=(3, 32, 32), width=16)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                torch.nn.init.normal_(module.bias, 0, 0.5)
        model.eval()
        shape, description = (3, 32, 32), f"ResNet8 (random weights), layer {layer}"
    else:
        layer = args.layer or "conv_3"
        use_lab = args.weights == "lab" or (args.weights == "auto" and os.path.isfile(LAB_WEIGHTS))
        model = load_model(LAB_WEIGHTS, "deepid", (3, 55, 47)) if use_lab else DeepID().eval()
        shape = (3, 55, 47)
        description = f"DeepID ({'lab BadNet weights' if use_lab else 'random weights'})"
    model.to(device)
    rng = np.random.default_rng(0)
    datasets = {name: (rng.random((args.inputs,) + shape) * 255).astype(np.float32) for name in ("valid", "test")}
    total = sum(len(x) for x in datasets.values())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{description}, {len(datasets)} data sets x {args.inputs} random inputs, torch {torch.__version__}, {where}")

    # One plain forward pass over the same data.
    forward = {}
    t_forward = 0.0
    for name, x in datasets.items():
        forward[name], t = timed(predict, model, x)
        t_forward += t

    # The cached sweep, everything included: trunk, profile, all 60 steps on both data sets.
    start = time.perf_counter()
    split = split_at_conv(model, layer)
    crossing = {name: run_trunk(split, x) for name, x in datasets.items()}
    order = pruning_order(channel_means(crossing["valid"][0]))
    results = {name: sweep(split, c, order) for name, c in crossing.items()}
    t_cached = time.perf_counter() - start
    channels = len(order)

    # The floor: one forward pass plus the tail for every input that changed at every step.
    keep = torch.ones(channels, device=device)
    _, t_tail_all = timed(tail_predictions, split, crossing["valid"], keep)
    tail_per_input = t_tail_all / args.inputs
    recomputed = int(sum(r.recomputed.sum() for r in results.values()))
    t_floor = t_forward + recomputed * tail_per_input

    # The naive sweep on a few steps, extrapolated to all channels + 1.
    steps = sorted({int(round(channels * (i + 1) / args.naive_steps)) for i in range(args.naive_steps)})
    identical = True
    t_naive_measured = 0.0
    for name, x in datasets.items():
        reference, t = timed(naive_sweep, model, layer, x, order, steps)
        t_naive_measured += t
        identical &= all(np.array_equal(reference[k], results[name].labels[k]) for k in steps)
        identical &= np.array_equal(forward[name], results[name].labels[0])
    t_naive = t_naive_measured / len(steps) * (channels + 1)

    # GoodNet against B, on one data set, best of three interleaved runs.
    goodnet = PrunedGoodNet(model, layer, [int(c) for c in order[: channels // 2]]).to(device).eval()
    x = datasets["test"]
    t_b, t_g = [], []
    for _ in range(3):
        t_b.append(timed(predict, model, x)[1])
        g_labels, t = timed(predict, goodnet, x)
        t_g.append(t)
    expected = np.where(
        results["test"].labels[0] == results["test"].labels[channels // 2], results["test"].labels[0], model.num_classes
    )
    identical &= np.array_equal(g_labels, expected)

    dead = int((channel_means(crossing["valid"][0]) == 0).sum())
    print(
        f"channels {channels} ({dead} dead on the profiling set); tail re-runs: {recomputed} of "
        f"{channels * total} input-steps ({100 * recomputed / (channels * total):.1f} %)"
    )
    print(f"plain forward pass, both sets      {t_forward:8.2f} s")
    print(f"cached sweep, all {channels} steps, both  {t_cached:8.2f} s")
    print(f"floor (forward + changed tails)    {t_floor:8.2f} s")
    print(f"naive sweep (measured {len(steps)} steps x2, extrapolated to {channels + 1}) {t_naive:8.2f} s")
    target = (lambda text: f"   ({text})") if args.model == "deepid" else (lambda text: "")  # issue 2's targets
    print(f"naive / cached time ratio          {t_naive / t_cached:8.1f}{target('target >= 20')}")
    print(f"cached sweep / one forward pass    {t_cached / t_forward:8.2f}{target('target <= 3')}")
    print(
        f"floor / one forward pass           {t_floor / t_forward:8.2f}   (cached sweep is "
        f"{t_cached / t_floor:.2f}x the floor)"
    )
    print(f"G / B inference time               {min(t_g) / min(t_b):8.3f}{target('target <= 1.15')}")
    print(f"identical predictions (naive steps {steps}, step 0, G): {'yes' if identical else 'NO'}")
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
