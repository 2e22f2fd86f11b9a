"""Feature Shift Tuning (Min et al., NeurIPS 2023), clean data only.

Plain fine-tuning fails on some BadNets because the classifier head already separates clean features
well, so the clean loss is small and the features (where the backdoor lives) barely move. FST forces
them to move: it re-initialises the final linear layer (weights and bias uniform in +-1/sqrt(fan_in))
and fine-tunes the whole network on CE + alpha * <w, w_B>, where w is the new head's weight matrix and
w_B is B's, which pushes the head away from B's; after every update the head's weight is rescaled to
exactly ||w_B|| (so the penalty cannot be met by shrinking w).

Defaults are the authors' code (AISafety-HKUST/stable_backdoor_purification, fine_tune/ft.py with
--ft_mode fst): alpha 0.2, SGD at 0.01 with momentum 0.9 and no weight decay, batches of 128, 10
epochs, a cosine schedule stepped per epoch, random crops (4-pixel padding), no clipping. The authors
tune on 2 % of CIFAR-10 (1,000 images), the size of a usual clean validation set, so nothing is scaled.
Departures:
- no horizontal flips (the authors' CIFAR-10 transform flips; goodnet cannot tell whether a flip keeps
  a label);
- the head is found by running the model (the last linear layer whose width is the class count), not
  by a module name;
- `variant=goodnet` gives goodnet's schedule instead (batches of 64, shifts and random erasing,
  per-batch cosine, clipping at norm 5; with weight decay set by --weight-decay).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..devices import to_model
from ..errors import ModelError
from ..lazy_torch import nn, torch
from .base import RepairData, RepairedModel, RepairOutcome, setting
from .registry import register_repair
from .schedule import GOODNET_TUNING, TuningSchedule

FST_TUNING: dict[str, Any] = {"batch_size": 128, "augmentation": "crop", "anneal": "epoch", "max_grad_norm": None}


def classifier_head(model: nn.Module, sample: torch.Tensor) -> tuple[str, nn.Linear]:
    """The linear layer that runs last in a forward pass on `sample` and whose output width is the
    model's: the head that turns features into class scores (found by running, not by name)."""
    ran: list[tuple[str, nn.Linear]] = []
    names = {module: name for name, module in model.named_modules()}
    hooks = [
        m.register_forward_hook(lambda module, _i, _o: ran.append((names[module], module)))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        model.eval()
        with torch.no_grad():
            out = model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    if not ran or ran[-1][1].out_features != out.shape[-1]:
        raise ModelError("fst needs a model whose class scores come from a final linear layer; this model has none")
    return ran[-1]


def reinitialise_head(head: nn.Linear, seed: int) -> None:
    """Weights and bias uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)] (the authors' re-initialisation),
    drawn from a seeded CPU generator so every device gets the same head."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(head.in_features)
    with torch.no_grad():
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
        if head.bias is not None:
            head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))


def feature_shift_penalty(head: nn.Linear, original: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * <w, w_B>: the sum of the elementwise product of the head's weights and B's."""
    return alpha * (head.weight * original).sum()


def rescale_head(head: nn.Linear, norm: float) -> None:
    """Rescale the head's weight matrix to Frobenius norm `norm` exactly (the bias is left alone)."""
    with torch.no_grad():
        head.weight.mul_(norm / head.weight.norm())


@register_repair
@dataclass(frozen=True)
class FeatureShiftTuning(TuningSchedule):
    name = "fst"
    relative_cost = 0.11
    description = (
        "Feature Shift Tuning (Min et al. 2023): re-initialise the classifier head and fine-tune "
        "everything while pushing the head away from B's, its norm held at B's"
    )

    epochs: int = setting(10, "fine-tuning epochs", low=1)
    lr: float = setting(0.01, "fine-tuning learning rate (SGD, cosine decay)", low=0.0, low_open=True)
    weight_decay: float = setting(0.0, "SGD weight decay", low=0.0)
    alpha: float = setting(0.2, "weight of the penalty <w, w_B> between the new head and B's", low=0.0)
    variant: Literal["reference", "goodnet"] = setting(
        "reference",
        "reference: the paper's algorithm as its reference code runs it; goodnet: goodnet's own "
        "variant (see the repair's documentation)",
    )

    def tuning_options(self) -> dict[str, Any]:
        return dict(FST_TUNING if self.variant == "reference" else GOODNET_TUNING)

    def check_model(self, model: nn.Module) -> None:
        self.refuse_torchscript(
            model,
            "it finds the classifier head by running the model with forward hooks, which TorchScript's "
            "compiled forward does not run",
        )

    def repair(self, model: nn.Module, data: RepairData, progress: bool = False) -> RepairOutcome:
        tuned = copy.deepcopy(model)
        name, head = classifier_head(tuned, to_model(data.clean_valid.x[:2], tuned))
        original = head.weight.detach().clone()
        norm = float(original.norm())
        reinitialise_head(head, self.seed)
        torch.manual_seed(self.seed)  # dropout in train mode draws from the global generator

        def penalty(_model: nn.Module, _x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            return feature_shift_penalty(head, original, self.alpha)

        tuned = self.tune(
            tuned,
            data.clean_valid.x,
            data.clean_valid.y,
            data.value_range,
            "feature-shift tuning" if progress else None,
            penalty=penalty,
            after_step=lambda _m: rescale_head(head, norm),
        )
        shift = float(torch.nn.functional.cosine_similarity(head.weight.detach().flatten(), original.flatten(), dim=0))
        return RepairOutcome(
            [RepairedModel(self.name, tuned, {}, weights_changed=True)],
            {"fitted_on": len(data.clean_valid), "head": name, "head_cosine_to_b": round(shift, 4)},
        )
