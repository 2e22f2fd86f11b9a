"""Reconstructive Neuron Pruning (Li et al., ICML 2023), from the paper's description, clean data only.

1. Unlearn: gradient *ascent* on the clean loss (SGD with momentum) until clean accuracy falls below
   a floor. Clean features break first; the backdoor path, which clean data barely uses, survives.
2. Recover: on the unlearned weights, frozen, learn one mask in [0, 1] per conv output channel
   that brings clean accuracy back. Channels the recovery leaves low are the ones clean behaviour
   does not need, the backdoor's among them.
3. Prune the ORIGINAL model's channels in increasing mask value while clean validation accuracy
   stays within the budget (our clean-data stopping rule; the paper uses a fixed mask threshold).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import device_of, to_model
from ..metrics import model_accuracy
from ..pruning.graph_split import conv_layers
from ..pruning.zeroing import grouped, prune_layers
from .base import Repair, RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair


def _batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, size):
        yield order[start:start + size]


@register_repair
@dataclass(frozen=True)
class ReconstructiveNeuronPruning(Repair):
    name = "rnp"
    description = ("Reconstructive Neuron Pruning (Li et al. 2023): unlearn clean data, learn channel masks "
                   "that recover it, prune the lowest-mask channels of every conv within the budget")

    budget: float = setting(2.0, "clean validation accuracy budget, in points: the repair keeps the drop "
                                 "below it", low=0.0, low_open=True, high=100.0)
    unlearn_lr: float = setting(0.01, "unlearning learning rate (gradient ascent, SGD)", low=0.0, low_open=True)
    unlearn_floor: float = setting(20.0, "stop unlearning once clean accuracy falls below this (%)",
                                   low=0.0, high=100.0)
    unlearn_epochs: int = setting(20, "most unlearning epochs", low=1)
    recover_lr: float = setting(0.2, "mask recovery learning rate", low=0.0, low_open=True)
    recover_epochs: int = setting(20, "mask recovery epochs", low=1)
    batch_size: int = setting(128, "batch size of unlearning and recovery", low=1)
    seed: int = setting(0, "seed of the repair's random choices and training")

    def milder(self) -> list[Repair]:
        """A smaller pruning budget."""
        return [replace(self, budget=self.budget / k) for k in (2, 4)]

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        clean = data.clean_valid
        xs, ys = torch.from_numpy(clean.x), torch.from_numpy(clean.y)
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator
        generator = torch.Generator().manual_seed(self.seed)
        unlearned = copy.deepcopy(model)
        optimizer = torch.optim.SGD(unlearned.parameters(), lr=self.unlearn_lr, momentum=0.9, weight_decay=5e-4)
        epochs_used = 0
        for epochs_used in range(1, self.unlearn_epochs + 1):
            unlearned.train()
            for idx in _batches(len(xs), self.batch_size, generator):
                optimizer.zero_grad()
                (-F.cross_entropy(unlearned(to_model(xs[idx], unlearned)), to_model(ys[idx], unlearned))).backward()
                optimizer.step()
            unlearned.eval()
            if model_accuracy(unlearned, clean.x, clean.y) <= self.unlearn_floor:
                break
        masks = self._recover(unlearned, xs, ys, generator)
        depth = {layer: i for i, layer in enumerate(masks)}
        # lowest mask first; among equal masks (many reach 0), deeper layers first
        ranked = sorted(((float(v), layer, c) for layer, m in masks.items() for c, v in enumerate(m)),
                        key=lambda t: (t[0], -depth[t[1]], t[2]))
        base = model_accuracy(model, clean.x, clean.y)
        chosen: list[tuple[str, int]] = []
        for _, layer, channel in ranked:  # prune in mask order while the clean drop stays < x
            trial = prune_layers(model, chosen + [(layer, channel)])
            if base - model_accuracy(trial, clean.x, clean.y) >= self.budget:
                break
            chosen.append((layer, channel))
        pruned = grouped(chosen)
        return RepairOutcome([RepairedModel(self.name, prune_layers(model, chosen), pruned)], {
            "pruned": pruned, "unlearn_epochs": epochs_used,
            "masks": {layer: [round(float(v), 4) for v in m] for layer, m in masks.items()}})

    def _recover(self, unlearned: nn.Module, xs: torch.Tensor, ys: torch.Tensor,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
        modules = dict(unlearned.named_modules())
        masks = {layer: torch.ones(modules[layer].out_channels, device=device_of(unlearned), requires_grad=True)
                 for layer in conv_layers(unlearned)}
        hooks = [modules[layer].register_forward_hook(
            lambda module, inputs, out, m=mask: out * m.view(1, -1, 1, 1)) for layer, mask in masks.items()]
        for p in unlearned.parameters():
            p.requires_grad_(False)
        optimizer = torch.optim.SGD(list(masks.values()), lr=self.recover_lr, momentum=0.9)
        unlearned.eval()
        try:
            for _ in range(self.recover_epochs):
                for idx in _batches(len(xs), self.batch_size, generator):
                    optimizer.zero_grad()
                    F.cross_entropy(unlearned(to_model(xs[idx], unlearned)), to_model(ys[idx], unlearned)).backward()
                    optimizer.step()
                    with torch.no_grad():
                        for mask in masks.values():
                            mask.clamp_(0, 1)
        finally:
            for hook in hooks:
                hook.remove()
        return {layer: mask.detach().cpu() for layer, mask in masks.items()}
