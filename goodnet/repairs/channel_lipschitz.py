"""Channel Lipschitzness-based Pruning, CLP (Zheng et al., ECCV 2022); data-free.

Why it works: a trigger is a small input pattern that must move some channels a lot, so the
channels that carry a backdoor are unusually *sensitive* to their input: their Lipschitz constant
is large compared with the other channels of their layer. An upper bound of it (UCLC) needs only
the weights: the largest singular value of the channel's kernel reshaped to an (input channels) x
(kernel height * width) matrix, times |gamma| / sigma of the BatchNorm that follows the conv
(sigma = sqrt(running var), found in the traced graph). Within each layer, channels whose UCLC
exceeds mean + u * std of the layer's UCLCs (std with Bessel's correction) are pruned; u = 3.

As in the authors' reference (github.com/rkteddy/channel-Lipschitzness-based-pruning, defense.py,
CLP): the bound, sigma without BatchNorm's eps, the unbiased std, u = 3, every conv with a
BatchNorm. Departures:
- a conv with no BatchNorm after it is scored by its kernel alone (the paper's bound with no BN to
  fold in); the reference code assumes conv + BN and never prunes such a layer (`no_batchnorm="skip"`);
- a pruned channel's conv kernel and bias are zeroed along with the BatchNorm's scale and shift
  (the reference zeroes the BatchNorm only: the channel's output is 0 either way);
- the do-no-harm guard (only when clean data is given) may raise u (u + 1, u + 2) when B' costs too
  much clean accuracy.
A layer of n channels can only have an outlier when (n - 1) / sqrt(n) > u (the largest standardised
value n numbers can reach): with u = 3, 11 channels or more. When no channel passes, B comes back
unchanged with a notice that says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from ..errors import ModelError
from ..lazy_torch import nn, torch
from ..pruning.graph_split import conv_layers, following_batchnorm
from ..pruning.zeroing import grouped, prune_layers
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


def channel_lipschitz_bounds(model: nn.Module, no_batchnorm: str = "kernel") -> dict[str, torch.Tensor]:
    """Per conv layer (in definition order): the UCLC of each output channel (see module doc).
    `no_batchnorm="skip"` leaves out convs with no BatchNorm after them, as the reference does."""
    modules = dict(model.named_modules())
    bounds: dict[str, torch.Tensor] = {}
    for layer in conv_layers(model):
        weight = modules[layer].weight.detach().double()
        out_channels = weight.shape[0]
        bn_name = following_batchnorm(model, layer)
        if bn_name is None and no_batchnorm == "skip":
            continue
        if bn_name is not None:
            bn = modules[bn_name]
            scale = (
                bn.weight.detach().double().abs()
                if bn.weight is not None
                else torch.ones(out_channels, dtype=torch.float64, device=weight.device)
            )
            if getattr(bn, "running_var", None) is not None:
                scale = scale / torch.sqrt(bn.running_var.detach().double())
            weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        matrices = weight.reshape(out_channels, weight.shape[1], -1)  # (out, in, kh * kw)
        bounds[layer] = torch.linalg.matrix_norm(matrices, ord=2).float()  # largest singular value
    return bounds


def can_have_outlier(channels: int, u: float) -> bool:
    """Whether some channel of a layer of `channels` can exceed mean + u * std (unbiased): the
    largest standardised value of n numbers is (n - 1) / sqrt(n)."""
    return channels >= 2 and (channels - 1) / math.sqrt(channels) > u


def outlier_channels(bounds: torch.Tensor, u: float) -> tuple[list[int], float | None]:
    """Channels whose bound exceeds mean + u * std of the layer (std with Bessel's correction), and
    that threshold; none (and no threshold) in a layer of one channel. A channel whose BatchNorm
    variance is 0 (dead, or pruned before) has an infinite bound; the reference's statistics then
    become NaN and prune nothing in that layer silently: here such channels are left out of the
    statistics and not pruned (the details list them)."""
    finite = torch.isfinite(bounds)
    if int(finite.sum()) < 2:
        return [], None
    threshold = float(bounds[finite].mean() + u * bounds[finite].std())
    return [int(c) for c in torch.nonzero(finite & (bounds > threshold)).flatten()], threshold


def _names(layers: list[str], limit: int = 4) -> str:
    shown = ", ".join(layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


@register_repair
@dataclass(frozen=True)
class ChannelLipschitzPruning(Repair):
    name = "clp"
    relative_cost = 0.01
    description = (
        "Channel Lipschitzness-based Pruning (Zheng et al. 2022), data-free: prune every conv's "
        "channels whose Lipschitz upper bound is an outlier (> mean + u * std) in its layer"
    )
    data = "none"
    guarded = True  # no data needed, but with clean data given the do-no-harm guard judges B'

    u: float = setting(3.0, "prune channels whose Lipschitz upper bound exceeds mean + u * std of their layer", low=0.0)
    no_batchnorm: Literal["kernel", "skip"] = setting(
        "kernel",
        "a conv with no BatchNorm after it: scored by its kernel alone (kernel) or left alone, as the "
        "reference code does (skip)",
    )

    MILDER_STEPS = (1.0, 2.0)  # milder: u raised by these (fewer channels pruned)

    def milder(self) -> list[Repair]:
        """A larger u: fewer channels are outliers."""
        return [replace(self, u=self.u + step) for step in self.MILDER_STEPS]

    def check_model(self, model: nn.Module) -> None:
        if not conv_layers(model):
            raise ModelError("the clp repair prunes conv channels, and the model has no Conv2d layer")

    def repair(self, model: nn.Module, data: RepairData | None, progress: bool = False) -> RepairOutcome:
        bounds = channel_lipschitz_bounds(model, self.no_batchnorm)
        chosen: list[tuple[str, int]] = []
        thresholds: dict[str, float | None] = {}
        for layer, values in bounds.items():
            channels, thresholds[layer] = outlier_channels(values, self.u)
            chosen += [(layer, c) for c in channels]
        pruned = grouped(chosen)
        narrow = [
            f"{layer} ({v.numel()} channels)" for layer, v in bounds.items() if not can_have_outlier(v.numel(), self.u)
        ]
        details = {
            "pruned": pruned,
            "channels_pruned": len(chosen),
            "u": self.u,
            "thresholds": {layer: None if t is None else round(t, 6) for layer, t in thresholds.items()},
            "largest_bound": {
                layer: round(float(v[torch.isfinite(v)].max()), 6) if torch.isfinite(v).any() else None
                for layer, v in bounds.items()
            },
            "infinite_bounds": {
                layer: [int(c) for c in torch.nonzero(~torch.isfinite(v)).flatten()]
                for layer, v in bounds.items()
                if not torch.isfinite(v).all()
            },
            "too_narrow": narrow,
        }
        notice = None
        if not chosen:
            if not bounds:
                notice = "clp: no conv layer has a BatchNorm after it (no-batchnorm=skip); model unchanged"
            elif len(narrow) == len(bounds):
                notice = (
                    f"clp: no channel of {_names(narrow)} can exceed u={self.u:g} (a layer of n channels "
                    f"needs (n-1)/sqrt(n) > u); model unchanged"
                )
            else:
                notice = f"clp: no channel exceeded mean + u*std of its layer (u={self.u:g}); model unchanged"
            return RepairOutcome([RepairedModel(self.name, model, {})], details, notice=notice)
        return RepairOutcome([RepairedModel(self.name, prune_layers(model, chosen), pruned)], details)
