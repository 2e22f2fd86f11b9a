"""Feature Shift Tuning (Min et al., NeurIPS 2023), from the paper's description, clean data only.

Why plain fine-tuning fails on some BadNets: the classifier head already separates clean
features well, so the clean loss is small and the features (where the backdoor lives) barely
move. FST forces them to move: it re-initialises the final linear layer and fine-tunes the whole
network with a penalty alpha * <w, w_B> on the new head's weights w against B's head w_B, which
pushes the head away from B's, while w's norm is kept at most B's (so the penalty cannot be met by
shrinking w). Schedule and augmentation are fine-tune's, so the two rows differ only by this.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..devices import to_model
from ..errors import ModelError
from .base import RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import TuningSchedule


def classifier_head(model: nn.Module, sample: torch.Tensor) -> tuple[str, nn.Linear]:
    """The linear layer that runs last in a forward pass on `sample` and whose output width is the
    model's: the head that turns features into class scores (found by running, not by name)."""
    ran: list[tuple[str, nn.Linear]] = []
    names = {module: name for name, module in model.named_modules()}
    hooks = [m.register_forward_hook(lambda module, _i, _o: ran.append((names[module], module)))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        model.eval()
        with torch.no_grad():
            out = model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    if not ran or ran[-1][1].out_features != out.shape[-1]:
        raise ModelError("fst needs a model whose class scores come from a final linear layer; "
                         "this model has none")
    return ran[-1]


@register_repair
@dataclass(frozen=True)
class FeatureShiftTuning(TuningSchedule):
    name = "fst"
    description = ("Feature Shift Tuning (Min et al. 2023): re-initialise the classifier head and fine-tune "
                   "everything while pushing the head away from B's")

    alpha: float = setting(0.2, "weight of the penalty <w, w_B> between the new head and B's", low=0.0)

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        tuned = copy.deepcopy(model)
        name, head = classifier_head(tuned, to_model(data.clean_valid.x[:2], tuned))
        original = head.weight.detach().clone()
        limit = float(original.norm())
        torch.manual_seed(self.seed)  # the new head's weights, and dropout in train mode
        head.reset_parameters()

        def penalty(_model: nn.Module, _x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            return self.alpha * (head.weight * original).sum()

        def keep_norm(_model: nn.Module) -> None:
            with torch.no_grad():
                norm = float(head.weight.norm())
                if norm > limit:
                    head.weight.mul_(limit / norm)

        tuned = self.tune(tuned, data.clean_valid.x, data.clean_valid.y, data.value_range,
                          "feature-shift tuning" if progress else None, penalty=penalty, after_step=keep_norm)
        shift = float(torch.nn.functional.cosine_similarity(head.weight.detach().flatten(), original.flatten(),
                                                            dim=0))
        return RepairOutcome(
            [RepairedModel(self.name, tuned, {}, weights_changed=True)],
            {"fitted_on": len(data.clean_valid), "head": name, "head_cosine_to_b": round(shift, 4)})
