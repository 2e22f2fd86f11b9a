"""Channel Lipschitzness-based Pruning, CLP (Zheng et al., ECCV 2022), from the paper's description; data-free.

Why it works: a trigger is a small input pattern that must move some channels a lot, so the
channels that carry a backdoor are unusually *sensitive* to their input: their Lipschitz constant
(how much the channel's output can change per unit change of its input) is large compared with
the other channels of their layer. An upper bound of that constant (UCLC) needs only the weights:
the spectral norm (largest singular value) of the channel's kernel reshaped to an
(input channels) x (kernel height * width) matrix, times the scale |gamma| / sqrt(running var + eps)
of the BatchNorm that follows the conv, when there is one (found in the traced graph by
`following_batchnorm`, never by name). Within each conv layer, the channels whose UCLC exceeds
mean + u * std of that layer's UCLCs are outliers and are pruned (conv kernel, bias and the
following BatchNorm's scale and shift zeroed, as goodnet prunes). No data is used at all.

From the paper: UCLC, the per-layer mean + u * std rule with the paper's default u = 3, every conv
layer (shortcut projections and the stem included). What differs: nothing in the method; the
guard is ours: CLP needs no data, but when the user gives clean validation data the do-no-harm
guard judges its B' on the held-out part and, past the budget, tries larger u (fewer channels
pruned: u + 1, then u + 2) before handing B back unchanged. A BatchNorm that keeps no running
statistics contributes only |gamma| (its variance is unknown without data).

On the development zoo (seed 0, unguarded, test data) u = 3 left every BadNet's ASR above 88 %; no
u did better without ruining clean accuracy (u = 1: 5-84 points lost on five of eight; ASR down
only on DeepID, to 10 %, and SIG/ResNet-8, to 0 %, at 6 and 68 points), so the paper's u is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import ModelError
from ..pruning.graph_split import conv_layers, following_batchnorm
from ..pruning.zeroing import grouped, prune_layers
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


def channel_lipschitz_bounds(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per conv layer (in definition order): the UCLC of each output channel (see module doc)."""
    modules = dict(model.named_modules())
    bounds: dict[str, torch.Tensor] = {}
    for layer in conv_layers(model):
        weight = modules[layer].weight.detach().double()
        out_channels = weight.shape[0]
        bn_name = following_batchnorm(model, layer)
        if bn_name is not None:
            bn = modules[bn_name]
            scale = bn.weight.detach().double().abs()
            if getattr(bn, "running_var", None) is not None:
                scale = scale / torch.sqrt(bn.running_var.detach().double() + bn.eps)
            weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        matrices = weight.reshape(out_channels, weight.shape[1], -1)  # (out, in, kh * kw)
        bounds[layer] = torch.linalg.matrix_norm(matrices, ord=2).float()  # largest singular value
    return bounds


def outlier_channels(bounds: torch.Tensor, u: float) -> tuple[list[int], float | None]:
    """Channels whose bound exceeds mean + u * std of the layer (std with Bessel's correction, as
    torch's default), and that threshold; none (and no threshold) in a layer of one channel."""
    if bounds.numel() < 2:
        return [], None
    threshold = float(bounds.mean() + u * bounds.std())
    return [int(c) for c in torch.nonzero(bounds > threshold).flatten()], threshold


@register_repair
@dataclass(frozen=True)
class ChannelLipschitzPruning(Repair):
    name = "clp"
    description = ("Channel Lipschitzness-based Pruning (Zheng et al. 2022), data-free: prune every conv's "
                   "channels whose Lipschitz upper bound is an outlier (> mean + u * std) in its layer")
    data = "none"
    guarded = True  # no data needed, but with clean data given the do-no-harm guard judges B'

    u: float = setting(3.0, "prune channels whose Lipschitz upper bound exceeds mean + u * std of their layer",
                       low=0.0)

    MILDER_STEPS = (1.0, 2.0)  # milder: u raised by these (fewer channels pruned)

    def milder(self) -> list[Repair]:
        """A larger u: fewer channels are outliers."""
        return [replace(self, u=self.u + step) for step in self.MILDER_STEPS]

    def check_model(self, model: nn.Module) -> None:
        if not conv_layers(model):
            raise ModelError("the clp repair prunes conv channels, and the model has no Conv2d layer")

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        bounds = channel_lipschitz_bounds(model)
        chosen: list[tuple[str, int]] = []
        thresholds: dict[str, float | None] = {}
        for layer, values in bounds.items():
            channels, thresholds[layer] = outlier_channels(values, self.u)
            chosen += [(layer, c) for c in channels]
        pruned = grouped(chosen)
        return RepairOutcome([RepairedModel(self.name, prune_layers(model, chosen), pruned)], {
            "pruned": pruned, "channels_pruned": len(chosen), "u": self.u,
            "thresholds": {layer: None if t is None else round(t, 6) for layer, t in thresholds.items()},
            "largest_bound": {layer: round(float(v.max()), 6) for layer, v in bounds.items()}})
