"""Fine-pruning (Liu et al., RAID 2018): prune the last conv layer's dormant channels, then fine-tune.

A backdoor often lives in channels that clean inputs leave dormant. Fine-pruning ranks the channels of
the last convolutional layer by their mean activation on clean data (the conv's output after its
activation function, averaged over images and positions), prunes them in increasing order while clean
accuracy stays within a budget, then fine-tunes the pruned network on clean data (pruned channels
stay zero throughout).

Defaults follow BackdoorBench's defense/fp.py (config/defense/fp/config.yaml), the maintained port of
the authors' code (kangliucn/Fine-pruning-defense): keep the largest pruning whose clean accuracy is
less than 10 % (relative) below B's, then fine-tune with BackdoorBench's schedule (SGD 0.01, momentum
0.9, weight decay 5e-4, batches of 256, 100 epochs, cosine per epoch, random crops). The channel's
activation is found by tracing the model: after the conv's BatchNorm and, in a ResNet block, after the
residual addition, at the first activation function. Departures:
- pruning zeroes the conv's kernel, bias and BatchNorm channel; on a ResNet, BackdoorBench instead
  masks the channel in the final feature vector, which also removes the shortcut's share of it;
- the accuracy drop is measured on the clean data the repair is given (BackdoorBench measures it on
  the test set, which a repair must never see), and every channel count is tried (BackdoorBench steps
  by 1 % of the channels, which is every count up to 100 channels);
- `auto` takes the lab's `conv_3` on models that have one (the authors' own code prunes conv3 of
  DeepID, ranked after its pooling), else the last conv layer with a kernel over 1x1;
- no horizontal flips in fine-tuning (BackdoorBench flips CIFAR-10 only).
goodnet's own variant is available: --ranking cut (the lab's profile at the pruning cut),
--stop crossing (the first pruning at or past the budget), --no-relative with budgets in points,
--variant goodnet (goodnet's schedule). Several budgets or fractions make several candidates, and a
held-out share of the clean data picks one by clean accuracy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..errors import SettingsError
from ..io.data import ImageSet
from ..lazy_torch import nn, torch
from ..metrics import model_accuracy
from ..pruning.graph_split import check_conv_layer, following_batchnorm, resolve_layer, split_at_conv
from ..pruning.profiling import activation_order, post_activation_order
from ..pruning.selection import select
from ..pruning.sweep import run_trunk, sweep
from ..pruning.zeroing import pruned_copy, zero_channels
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import BackdoorBenchSchedule


def budget_channels(
    model: nn.Module, images: ImageSet, layer: str, order: list[int], budget: float, relative: bool, stop: str
) -> list[int]:
    """The first k channels of `order`, k chosen on `images` by the stop rule: 'within', the largest
    k before the first whose clean-accuracy drop reaches `budget` (points, or percent of B's accuracy
    when `relative`); 'crossing', that first k. Never every channel of the layer."""
    split = split_at_conv(model, layer)
    labels = sweep(split, run_trunk(split, images.x), order).labels
    correct = [int(c) for c in (labels == images.y[None, :]).sum(axis=1)]
    chosen = select(correct, len(images), (budget,), "relative" if relative else "absolute", (stop,))[0]
    k = len(order) - 1 if chosen.channels_pruned is None else min(chosen.channels_pruned, len(order) - 1)
    return [int(c) for c in order[:k]]


@register_repair
@dataclass(frozen=True)
class FinePruning(BackdoorBenchSchedule):
    name = "fine-prune"
    relative_cost = 1.05
    description = (
        "fine-pruning (Liu et al. 2018): prune --layer's channels in increasing order of mean "
        "post-activation output on clean data while clean accuracy stays within the budget, then "
        "fine-tune on clean data"
    )

    layer: str = setting(
        "auto",
        "conv layer whose output channels are pruned (auto: conv_3 when the model "
        "has one, as in the lab, else its last conv layer with a kernel over 1x1)",
    )
    budgets: tuple[float, ...] = setting(
        (10.0,),
        "candidate clean-accuracy drop budgets of the pruning before fine-tuning (percent of B's "
        "accuracy, or points with --no-relative); with several, a held-out share picks one",
        low=0.0,
        low_open=True,
        high=100.0,
    )
    fractions: tuple[float, ...] = setting(
        (),
        "further candidates: prune this share of --layer's channels (e.g. 0.5 0.8)",
        low=0.0,
        low_open=True,
        high=1.0,
    )
    relative: bool = setting(
        True, "budgets are percent of B's clean accuracy (BackdoorBench's acc_ratio) instead of points"
    )
    stop: Literal["within", "crossing"] = setting(
        "within",
        "which pruning a budget keeps: within (the largest that stays under it, the reference's) "
        "or crossing (the first that reaches it, the lab's rule)",
    )
    ranking: Literal["post-activation", "cut"] = setting(
        "post-activation",
        "channel profile: post-activation (the conv's output after its activation "
        "function, the paper's) or cut (the lab's profile at the pruning cut)",
    )

    def check(self) -> None:
        if not self.budgets and not self.fractions:
            raise SettingsError("fine-prune needs at least one budget or fraction")
        if 1.0 in self.fractions:
            raise SettingsError("fine-prune: a fraction of 1 would prune every channel; use fractions below 1")

    def milder(self) -> list[Repair]:
        """Fewer channels and a lower rate, then also fewer epochs."""
        return [
            replace(
                self.slower(k, e),
                budgets=tuple(b / k for b in self.budgets),
                fractions=tuple(f / k for f in self.fractions),
            )
            for k, e in self.RATE_STEPS
        ]

    def order(self, model: nn.Module, x: np.ndarray, layer: str) -> list[int]:
        if self.ranking == "cut":
            return activation_order(model, x, layer)
        return post_activation_order(model, x, layer)

    def check_model(self, model: nn.Module) -> None:
        """The `layer` setting must name a conv layer of the model, which torch.fx can trace."""
        self.refuse_torchscript(
            model,
            "it profiles a conv layer's channels through the model's torch.fx graph, and a TorchScript "
            "model cannot be profiled or swept (its forward is compiled code)",
            "load its PyTorch class with --factory (or prune an explicit list, without fine-tuning, with --channels)",
        )
        check_conv_layer(model, resolve_layer(model, self.layer))

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        layer = resolve_layer(model, self.layer)
        several = len(self.budgets) + len(self.fractions) > 1
        fit, held = data.fit_and_choose(self.seed) if several else (data.clean_valid, None)
        bn = following_batchnorm(model, layer)
        order = self.order(model, fit.x, layer)
        plans = [
            (f"budget={b:g}", budget_channels(model, fit, layer, order, b, self.relative, self.stop))
            for b in self.budgets
        ]
        plans += [(f"fraction={f:g}", order[: int(round(f * len(order)))]) for f in self.fractions]
        candidates = []
        for label, channels in plans:
            torch.manual_seed(self.seed)
            tuned = self.tune(
                pruned_copy(model, layer, channels),
                fit.x,
                fit.y,
                data.value_range,
                f"fine-tuning ({label})" if progress else None,
                after_step=lambda m, c=channels: zero_channels(m, layer, c, bn),
            )
            accuracy = model_accuracy(tuned, held.x, held.y) if held is not None else 0.0
            candidates.append((accuracy, -len(channels), label, channels, tuned))
        best = max(candidates, key=lambda c: c[:2])  # ties: fewer channels pruned
        details = {"layer": layer, "pruned": {layer: best[3]}, "chosen": best[2], "ranking": self.ranking}
        if held is not None:
            details["held_out_accuracy"] = {c[2]: round(c[0], 4) for c in candidates}
        notice = None
        if not best[3]:
            notice = (
                f"fine-prune: pruning even one channel of {layer} costs more clean accuracy than the "
                f"budget; nothing pruned, fine-tuned only"
            )
        return RepairOutcome(
            [RepairedModel(self.name, best[4], {layer: best[3]}, weights_changed=True)], details, notice=notice
        )
