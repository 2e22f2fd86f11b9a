"""MM-BD, the maximum-margin backdoor detector (Wang, Xiang, Miller and Kesidis, IEEE S&P 2024), as
the authors' reference code (github.com/wanghangpsu/MM-BD, univ_bd.py) computes it.

Why it works: a backdoor gives its target label a shortcut that lifts that label's logit far above
every other wherever the trigger is present, whatever else is in the image. So the largest margin
logit_t(x) - max_{k != t} logit_k(x) a label can reach over all inputs x of the valid range is
abnormally large for a target label. The detector needs no clean and no poisoned data, and assumes
no trigger shape: a patch, a blend, a warp or a sinusoid all raise the target's reachable margin.

As in the reference: for each label t, 30 images drawn uniformly from the valid range are optimised
together by plain gradient ascent on the sum of their margins (SGD at rate 0.01 on the raw logits;
the reference re-creates its optimiser every step, so its momentum never acts), for at most 300
steps, stopping early when the summed loss changes by less than a relative 1e-5; the model sees the
images clamped to the range (a pixel past the bound stops moving, as there). Label t's statistic is
the largest margin among the 30 on the last forward pass. The null is a gamma distribution (shape,
location and scale fitted by maximum likelihood) fitted to every label's statistic but the largest;
the p-value of the largest is 1 - F(r_max)^K, the chance that the largest of K null draws is as
large. A p-value at or below 0.05 flags a backdoor, and the label with the largest statistic is the
suspected target.

Departures (none changes the algorithm on the reference's own setting, a model taking [0, 1]):
- the optimised variable is the image rescaled to [0, 1] and the model sees
  low + (high - low) * clamp(u, 0, 1), so a model taking raw 0..255 pixels is searched over its own
  range with the same step size relative to that range; the reference assumes [0, 1];
- the starts are drawn from a seeded generator (the reference is unseeded), so a seed gives the same
  statistic;
- the label count and input shape are read from the model, never the reference's fixed 10 and
  3x32x32; with fewer than 3 labels the null cannot be fitted and the scan refuses;
- the p-value is computed as -expm1(K * log1p(-sf)) rather than 1 - cdf^K: the same number, without
  rounding a tiny p-value to 0;
- a model whose outputs are probabilities (rows on the simplex: a softmax at its end, as Keras
  models have) is scanned on their logarithm, whose margins are the logits' margins exactly (the
  softmax's normaliser cancels); the reference's models output logits;
- when every statistic but the largest is the same number the gamma cannot be fitted (the reference
  gets NaN): the p-value is then 0 if the largest is above them, else 1; a loss of exactly 0 (the
  reference would divide by it in its early-stop test) counts as 1e-30.
The paper's equation (3) writes the exponent as K - 1; the reference code uses K (slightly more
conservative), and so does this module.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..devices import placed, to_numpy
from ..errors import DataError, SettingsError
from ..lazy_torch import F, nn, torch
from ..progress import progress as progress_bar

SIGNIFICANCE = 0.05  # the reference's: a p-value at or below it flags a backdoor
# the reference's search: random starts per label, most steps, step size, early stop's relative change
MARGIN_DEFAULTS = {"starts": 30, "steps": 300, "lr": 1e-2, "tolerance": 1e-5, "significance": SIGNIFICANCE}
_NEGATIVE = 1000.0  # the reference masks the label's own logit by subtracting this


@dataclass
class MarginScan:
    """Every label's largest reachable logit margin and the verdict drawn from them."""

    labels: list[int]
    statistics: np.ndarray  # per label: the largest margin logit_t - max_{k != t} logit_k found
    steps: np.ndarray  # gradient steps each label ran (the early stop may end it before the cap)
    p_value: float  # of the largest statistic under the gamma null fitted to the others
    null: dict[str, float]  # the fitted gamma's shape, loc and scale
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    significance: float = SIGNIFICANCE

    @property
    def target(self) -> int:
        """The label with the largest statistic: the suspected target when flagged."""
        return int(self.labels[int(np.argmax(self.statistics))])

    @property
    def flagged(self) -> bool:
        return bool(self.p_value <= self.significance)

    @property
    def suspects(self) -> list[int]:
        return [self.target] if self.flagged else []

    @property
    def verdict(self) -> str:
        top = float(np.max(self.statistics))
        if self.flagged:
            return f"label {self.target} is a suspected target (largest margin {top:.1f}, p = {self.p_value:.2g})"
        return f"no backdoor detected (largest margin {top:.1f} on label {self.target}, p = {self.p_value:.2g})"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "flagged": self.flagged,
            "suspects": self.suspects,
            "p_value": float(self.p_value),
            "significance": self.significance,
            "labels": [int(t) for t in self.labels],
            "max_margin": [round(float(v), 4) for v in self.statistics],
            "steps": [int(v) for v in self.steps],
            "null_gamma": {k: round(float(v), 6) for k, v in self.null.items()},
            "settings": dict(self.settings),
            "seconds": round(float(self.seconds), 3),
        }


def margin_p_value(statistics) -> tuple[float, dict[str, float]]:
    """The reference's inference step: a gamma (free location) fitted by maximum likelihood to every
    statistic but the largest; p = 1 - F(r_max)^K with K the number of statistics."""
    from scipy import stats as scipy_stats

    values = np.asarray(statistics, dtype=np.float64).reshape(-1)
    if values.size < 3:
        raise DataError(f"MM-BD needs at least 3 labels to fit its null distribution; the model has {values.size}")
    if not np.all(np.isfinite(values)):
        raise DataError("MM-BD: the model's logits are not finite (NaN or infinite margins); it cannot be scanned")
    top = int(np.argmax(values))
    null = np.delete(values, top)
    if float(np.ptp(null)) == 0.0:  # a degenerate null: all other labels equal
        p = 1.0 if values[top] <= null[0] else 0.0
        return p, {"shape": float("nan"), "loc": float(null[0]), "scale": 0.0}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        shape, loc, scale = scipy_stats.gamma.fit(null)
        survival = float(scipy_stats.gamma.sf(values[top], shape, loc=loc, scale=scale))
    if not math.isfinite(survival):
        survival = 0.0 if values[top] > null.max() else 1.0
    survival = min(max(survival, 0.0), 1.0)
    p = 1.0 if survival >= 1.0 else -math.expm1(values.size * math.log1p(-survival))
    return float(min(max(p, 0.0), 1.0)), {"shape": float(shape), "loc": float(loc), "scale": float(scale)}


def margin_loss(outputs, label: int):
    """The reference's loss for label `label`: minus the summed margins of the batch, the other
    labels' maximum taken after subtracting 1000 from the label's own logit (as univ_bd.py does)."""
    onehot = F.one_hot(
        torch.full((outputs.shape[0],), label, dtype=torch.long, device=outputs.device), outputs.shape[1]
    )
    margins = (outputs * onehot).sum(dim=1) - torch.max((1 - onehot) * outputs - _NEGATIVE * onehot, dim=1)[0]
    return -margins.sum(), margins


def max_margin_scan(
    model: nn.Module,
    input_shape: tuple[int, ...],
    value_range: tuple[float, float],
    *,
    seed: int = 0,
    progress: bool | str = False,
    starts: int = 30,
    steps: int = 300,
    lr: float = 1e-2,
    tolerance: float = 1e-5,
    significance: float = SIGNIFICANCE,
) -> MarginScan:
    """Scan `model` (inputs of `input_shape`, values in `value_range`) with MM-BD; see the module
    docstring. starts: random images per label (30); steps: most gradient steps per label (300);
    lr: the step size (0.01, on the image rescaled to [0, 1]); tolerance: the early stop's relative
    change of the loss (1e-5); significance: the p-value at or below which a backdoor is flagged."""
    for name, value, low, high in (("starts", starts, 1, 10_000), ("steps", steps, 1, 100_000)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SettingsError(f"MM-BD: {name} must be an integer from {low} to {high}, not {value!r}")
    for name, value, high in (("lr", lr, 1e3), ("tolerance", tolerance, 1.0), ("significance", significance, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= high:
            raise SettingsError(f"MM-BD: {name} must be a number in (0, {high:g}], not {value!r}")
    low, high = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise DataError(f"MM-BD needs a finite value range with high > low, not {value_range!r}")
    shape = tuple(int(d) for d in input_shape)
    generator = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # gradients for the images only: cheaper, and the model stays as it is
        p.requires_grad_(False)
    model.eval()
    try:
        with placed(model) as device:
            with torch.no_grad():
                levels = torch.tensor([0.0, 0.5, 1.0], device=device).view(3, *([1] * len(shape)))
                probe = model((low + (high - low) * levels).expand(3, *shape).contiguous())
            num_labels = int(probe.shape[-1])
            log_of_probabilities = on_simplex(probe)
            if num_labels < 3:
                raise DataError(
                    f"MM-BD needs at least 3 labels to fit its null distribution; the model has {num_labels}"
                )
            statistics = np.zeros(num_labels)
            ran = np.zeros(num_labels, dtype=np.int64)
            desc = progress if isinstance(progress, str) else ("MM-BD scan" if progress else None)
            for label in progress_bar(range(num_labels), desc):
                statistics[label], ran[label] = _largest_margin(
                    model,
                    label,
                    shape,
                    (low, high),
                    device,
                    generator,
                    starts,
                    steps,
                    lr,
                    tolerance,
                    log_of_probabilities,
                )
    finally:
        model.train(was_training)
        for p, wanted in zip(model.parameters(), grads):
            p.requires_grad_(wanted)
    p_value, null = margin_p_value(statistics)
    settings = {
        "starts": starts,
        "steps": steps,
        "lr": lr,
        "tolerance": tolerance,
        "seed": int(seed),
        "value_range": [low, high],
        "outputs": "probabilities (scanned on their logarithm)" if log_of_probabilities else "logits",
    }
    return MarginScan(
        labels=list(range(num_labels)),
        statistics=statistics,
        steps=ran,
        p_value=p_value,
        null=null,
        settings=settings,
        seconds=time.perf_counter() - start,
        significance=float(significance),
    )


def on_simplex(outputs) -> bool:
    """Whether a model's outputs are probabilities: every row non-negative and summing to 1."""
    return bool(
        outputs.min() >= 0
        and outputs.max() <= 1
        and torch.allclose(outputs.sum(dim=1), torch.ones(len(outputs), device=outputs.device), atol=1e-4)
    )


def _largest_margin(model, label, shape, value_range, device, generator, starts, steps, lr, tolerance, logs=False):
    """One label: the reference's loop (forward, backward, step, then the early stop test on the
    loss of that forward pass); the statistic is the largest margin of the last forward pass.
    `logs`: the model outputs probabilities, scanned on their logarithm."""
    low, high = value_range
    images = torch.rand((starts, *shape), generator=generator).to(device).requires_grad_(True)
    last_loss = 1000.0  # the reference's starting value
    margins = None
    ran = 0
    for ran in range(1, steps + 1):  # noqa: B007 (the count is returned)
        outputs = model(low + (high - low) * torch.clamp(images, 0.0, 1.0))
        if logs:
            outputs = torch.log(outputs.clamp_min(torch.finfo(outputs.dtype).tiny))
        loss, margins = margin_loss(outputs, label)
        (gradient,) = torch.autograd.grad(loss, images)
        with torch.no_grad():
            images -= lr * gradient
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DataError(f"MM-BD: the model's logits are not finite on label {label}; it cannot be scanned")
        if abs(last_loss - value) / abs(last_loss) < tolerance:
            break
        last_loss = value if value != 0.0 else 1e-30
    return float(to_numpy(margins.detach()).max()), ran
