"""The lab's defense as a repair: profile one conv layer on clean validation data, sweep it (cached
and exact), and keep, per clean-accuracy budget X, the model the stopping rule selects.

Like a grid search that is itself an estimator, it returns the selected B' models together with
the whole pruning curve and both rules' choices; the runner then measures the curve on every data
set given. Only clean validation data decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import SettingsError
from ..io.data import ImageSet
from ..lazy_torch import nn
from ..metrics import model_accuracy
from ..pruning.curve import PruningCurve, profile_and_sweep
from ..pruning.graph_split import check_conv_layer, resolve_layer
from ..pruning.selection import RULES, select
from ..pruning.zeroing import pruned_copy
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair

CLEAN_VALID = "clean_valid"


def sweep_and_select(
    model: nn.Module,
    images: ImageSet,
    layer: str,
    thresholds: tuple[float, ...],
    order: str = "ascending",
    drop: str = "absolute",
    progress: bool = False,
) -> PruningCurve:
    """The pruning curve of `layer` on `images` (as data set 'clean_valid'), with both stopping
    rules' choices for every budget in `thresholds`."""
    curve = profile_and_sweep(model, layer, CLEAN_VALID, images.x, order, progress=progress)
    labels = curve.labels[CLEAN_VALID].labels
    correct = [int(c) for c in (labels == images.y[None, :]).sum(axis=1)]
    curve.selections = select(correct, len(images), thresholds, drop, RULES)
    curve.drop = drop
    return curve


def lab_pruning_channels(
    model: nn.Module, images: ImageSet, layer: str, x: float, rule: str = "crossing", progress: bool = False
) -> list[int]:
    """The channels the lab's sweep prunes at budget `x`, decided on `images` alone."""
    curve = sweep_and_select(model, images, layer, (x,), progress=progress)
    chosen = next(s for s in curve.selections if s.rule == rule)
    if chosen.channels_pruned is None:
        raise SettingsError(f"pruning {layer} never drops clean validation accuracy by {x:g} points")
    return curve.pruned_channels(chosen.channels_pruned)


@register_repair
@dataclass(frozen=True)
class LabPruning(Repair):
    name = "prune"
    relative_cost = 0.02
    guarded = False  # its budgets X are its purpose: the sweep reports every one
    description = (
        "the lab's defense: prune --layer's channels in order of mean clean activation; keep B' "
        "per accuracy budget X (full curve and both stopping rules in the report)"
    )
    # compare judges one B' per repair against a 2-point budget; `within` is the model that keeps it
    comparison = {"thresholds": (2.0,), "rule": "within"}

    layer: str = setting(
        "auto",
        "conv layer whose output channels are pruned (auto: conv_3 when the model "
        "has one, as in the lab, else its last conv layer with a kernel over 1x1)",
    )
    thresholds: tuple[float, ...] = setting(
        (2.0, 4.0, 10.0, 30.0),
        "accuracy-drop budgets X, in percentage points of clean validation accuracy (with --relative: percent of B's)",
        low=0.0,
        low_open=True,
        high=100.0,
        nonempty=True,
    )
    order: Literal["ascending", "descending"] = setting(
        "ascending", "prune channels in this order of mean clean activation"
    )
    relative: bool = setting(False, "measure the drop relative to B's accuracy instead of in points")
    rule: Literal["crossing", "within", "both"] = setting(
        "crossing",
        "which B' is kept per X: 'crossing' (the lab's: first model with drop >= X), 'within' "
        "(the one before it, drop < X) or both",
    )

    def check(self) -> None:
        repeated = sorted({x for x in self.thresholds if self.thresholds.count(x) > 1})
        if repeated:
            raise SettingsError(f"{self.name}: thresholds lists {repeated[0]:g} twice; give each budget once")

    @property
    def saved_rules(self) -> tuple[str, ...]:
        return RULES if self.rule == "both" else (self.rule,)

    def check_model(self, model: nn.Module) -> None:
        """The `layer` setting must name a conv layer of the model, which torch.fx can trace."""
        self.refuse_torchscript(
            model,
            "it profiles a conv layer's channels through the model's torch.fx graph, and a TorchScript "
            "model cannot be profiled or swept (its forward is compiled code)",
            "prune an explicit list with --channels, or load its PyTorch class with --factory",
        )
        check_conv_layer(model, resolve_layer(model, self.layer))

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        layer = resolve_layer(model, self.layer)
        if self.relative and model_accuracy(model, data.clean_valid.x, data.clean_valid.y) == 0:
            raise SettingsError(
                "--relative measures drops as a share of B's clean validation accuracy, which "
                "is 0 here: no drop can be measured (drop --relative)"
            )
        curve = sweep_and_select(
            model,
            data.clean_valid,
            layer,
            self.thresholds,
            self.order,
            "relative" if self.relative else "absolute",
            progress,
        )
        models = []
        for sel in curve.selections:
            if sel.rule in self.saved_rules and sel.channels_pruned is not None:
                channels = curve.pruned_channels(sel.channels_pruned)
                models.append(
                    RepairedModel(
                        sel.name,
                        pruned_copy(model, layer, channels),
                        {layer: channels},
                        curve_step=sel.channels_pruned,
                        details={"x": sel.x, "rule": sel.rule},
                    )
                )
        dead = int(np.sum(curve.mean_activation == 0))
        return RepairOutcome(
            models,
            {"layer": layer, "cut": curve.cut, "dead_channels": dead, "saved_rules": list(self.saved_rules)},
            curve,
        )
