"""Benchmark: what each repair costs, in seconds and in training epochs, and what vectorising the
augmentation saved.

For each BadNet (the demo's by default, or zoo BadNets named like `goodnet compare --only`), this
times one fine-tuning epoch on the repair's fit data (the clean validation data less the do-no-harm
guard's held-out share), and the same epoch with the convolutions in the standard memory layout
(goodnet's own architectures train channels-last on the CPU, see devices.training_layout), then every
repair through the runner exactly as `goodnet defend` runs it, and prints seconds per repair, the
ratio to the plain fine-tuning repair (`fine-tune`, timed in the same run) and the ratio to that one
epoch. It also times the augmentation of one batch against the per-image Python loop it replaced
(same random draws for the shift, so the shifted batches must be equal). All ratios come from this
one run; absolute seconds depend on the machine and its load.

    python benchmarks/repairs.py                       # the demo BadNet
    python benchmarks/repairs.py --only patch/resnet8 wanet --part dev
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from goodnet.compare import comparison_roster
from goodnet.devices import fast_layout_ready
from goodnet.io.data import load_sets, split_holdout
from goodnet.io.model_files import load_model
from goodnet.measure import run_repair
from goodnet.models.training import fine_tune, random_erase, random_shift
from goodnet.repairs import build_repair
from goodnet.repairs.do_no_harm import DEFAULT_HOLDOUT, HOLDOUT_SEED
from goodnet.zoo.badnets import DATA_FILES, MODEL_FILE, DemoSettings, cached_badnet, default_cache_dir, zoo_badnet
from goodnet.zoo.catalog import select_badnets


def loop_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    """The per-image loop random_shift replaced."""
    h, w = x.shape[2:]
    padded = F.pad(x, (pixels,) * 4)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(x))])


def loop_erase(x: torch.Tensor, g: torch.Generator, low: float, high: float) -> torch.Tensor:
    """The per-image loop random_erase replaced (its draws, one image at a time)."""
    n, c, h, w = x.shape
    out = x.clone()
    for i in range(n):
        if torch.rand(1, generator=g).item() >= 0.5:
            continue
        size = torch.empty(1).uniform_(0.02, 0.15, generator=g).item() * h * w
        aspect = torch.empty(1).uniform_(0.3, 3.3, generator=g).item()
        eh = max(1, min(h, int(round((size * aspect) ** 0.5))))
        ew = max(1, min(w, int(round((size / aspect) ** 0.5))))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=g))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=g))
        fill = torch.rand(c, eh, ew, generator=g)
        out[i, :, top : top + eh, left : left + ew] = fill * (high - low) + low
    return out


def augmentation(shape: tuple[int, ...], repeats: int = 50) -> None:
    x = torch.rand(*shape) * 255
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(repeats):
        new = random_erase(random_shift(x, torch.Generator().manual_seed(1)), g, (0.0, 255.0))
    vectorised = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        gen = torch.Generator().manual_seed(1)
        dy, dx = torch.randint(0, 5, (len(x),), generator=gen), torch.randint(0, 5, (len(x),), generator=gen)
        old = loop_erase(loop_shift(x, dy, dx), g, 0.0, 255.0)
    loop = (time.perf_counter() - start) / repeats
    same = torch.equal(random_shift(x, torch.Generator().manual_seed(1)), loop_shift(x, dy, dx))
    del new, old
    print(
        f"augmentation of a batch {tuple(shape)}: per-image loop {loop * 1e3:.2f} ms, vectorised "
        f"{vectorised * 1e3:.2f} ms, {loop / vectorised:.1f}x faster (shifts equal: {same})"
    )


def standard_layout_epoch(directory: str, fit, value_range: tuple[float, float]) -> float:
    """One fine-tuning epoch (mean of 5) with the model's convolutions kept in the standard layout."""
    model = load_model(os.path.join(directory, MODEL_FILE))
    kind = type(model)
    kind.channels_last_ready = False  # what training_layout reads: switched off for these epochs only
    try:
        start = time.perf_counter()
        fine_tune(model, fit.x, fit.y, 5, 0, value_range=value_range)
        return (time.perf_counter() - start) / 5
    finally:
        kind.channels_last_ready = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="dev", choices=["dev", "eval", "all"])
    parser.add_argument("--only", nargs="*", default=None, help="zoo BadNets (label texts); default: the demo's")
    parser.add_argument("--repairs", nargs="*", default=None, help="default: every repair compare runs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only:
        badnets = [
            (s.label(), zoo_badnet(s, default_cache_dir("zoo"), progress=False)[0])
            for s in select_badnets(args.part, args.only)
        ]
    else:
        badnets = [("demo", cached_badnet(DemoSettings(), default_cache_dir(), progress=False)[0])]
    repairs = comparison_roster(args.repairs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    for shape in ((64, 1, 28, 28), (64, 3, 55, 47)):
        augmentation(shape)
    for label, directory in badnets:
        sets = load_sets({role: os.path.join(directory, name) for role, name in DATA_FILES.items()})
        model = load_model(os.path.join(directory, MODEL_FILE))
        fit, _ = split_holdout(sets["clean_valid"], DEFAULT_HOLDOUT, HOLDOUT_SEED)
        value_range = (float(fit.x.min()), float(fit.x.max()))
        fine_tune(
            load_model(os.path.join(directory, MODEL_FILE)), fit.x, fit.y, 1, 0, value_range=value_range
        )  # warm-up
        start = time.perf_counter()
        fine_tune(load_model(os.path.join(directory, MODEL_FILE)), fit.x, fit.y, 5, 0, value_range=value_range)
        epoch = (time.perf_counter() - start) / 5
        print(f"\n{label}: one fine-tuning epoch on {len(fit)} images (mean of 5 after a warm-up): {epoch:.2f} s")
        if fast_layout_ready(model):
            standard = standard_layout_epoch(directory, fit, value_range)
            print(
                f"the same epochs in the standard layout instead of channels-last: {standard:.2f} s "
                f"(channels-last {standard / epoch:.2f}x faster)"
            )
        results = [(repair, run_repair(model, repair, sets)) for repair in repairs]
        baseline = next((r.seconds for repair, r in results if repair.name == "fine-tune"), None)
        if baseline is None:  # the plain baseline is always measured: every ratio is to it
            baseline = run_repair(model, build_repair("fine-tune", comparison=True), sets).seconds
        print(f"plain fine-tuning (the fine-tune repair, guard included): {baseline:.1f} s")
        print("| repair | seconds | x fine-tune | epochs' worth | delivered |\n|---|---|---|---|---|")
        for repair, result in results:
            delivered = "–" if result.harm is None else result.harm.delivered
            print(
                f"| {repair.name} | {result.seconds:.1f} | {result.seconds / baseline:.2f} | "
                f"{result.seconds / epoch:.1f} | {delivered} |"
            )


if __name__ == "__main__":
    np.random.seed(0)
    main()
