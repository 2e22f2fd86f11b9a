"""Neural Cleanse's trigger reversal (Wang et al., IEEE S&P 2019), from the paper's description.

Why it works: a backdoor is a shortcut. To send any image to the attacker's target, the small
trigger is enough; to send it to an honest label, the change must be about as large as that
label's own features. So for every label t we look for the smallest mask m (H x W, in [0, 1]) and
a pattern p (C x H x W, in the data's own value range) such that (1 - m) * x + m * p is classified
as t for clean images x, minimising cross-entropy + lambda_t * |m|_1. The target's mask norm is an
outlier below the others. The anomaly index measures that in median absolute deviations (MAD x
1.4826, a consistent estimate of the standard deviation) below the median; labels above 2 are
suspected targets. Labels whose norm lies above the median are never suspects (a large trigger is
no sign of a backdoor), and the stamped image is a convex mix of an image and a pattern that both lie
in the data's range, so it does too, whatever the range.

From the paper and its authors' implementation: mask and pattern through tanh (so they stay in
[0, 1] and in the value range without clipping), Adam at rate 0.1 with betas (0.5, 0.9), random
initial mask and pattern, lambda starting at 1e-3 and changed per label after `patience` checks in a
row: raised x1.5 while the attack succeeds on >= 99 % of the batch images, lowered by 1.5^1.5 while it
does not; the recorded trigger is the one with the smallest mask norm among those seen while the
attack succeeded (the threshold reached), and the optimisation of a label stops early once that norm
has not improved by 1 % for `early_stop_patience` checks after lambda went both up and down.

What differs, for CPU cost: the paper optimises each label alone for up to thousands of epochs of
32 images; here `group` labels are optimised at once (their masks and patterns are independent, so
this is the same optimisation, G labels x b images in one forward pass, sharing the batch images),
for at most `steps` (400) steps of `batch_size` (16) images per label, and a "check" (the paper's
epoch) is `check_every` (10) steps, with a patience of 3 checks (the paper's 5 epochs). Chosen on the
development zoo (seed 0): 200 steps flagged the target of 3 of its 7 single-target BadNets, 400
steps 5 (blended at anomaly index 2.05 and sunglasses at 2.86 crossed the threshold; 8 images per
step instead of 16 lost both again); WaNet's warp and SIG's full-image sinusoid are missed either
way (index 1.1 and 1.2), as the literature reports for Neural Cleanse. The cost is labels x steps x
batch forward and backward passes: grouping batches them, it does not remove them, so a model with
a thousand labels needs a smaller per-label budget (`steps`, `batch_size`) to finish on a CPU.
A label that never reached the threshold keeps its final trigger, is marked `reached=False` and is
never a suspect: its norm (the final mask's, which did not work) says little about what it needs.
The label count is read from the model's output, never assumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import placed, to_numpy
from ..errors import DataError, SettingsError
from ..io.data import ImageSet
from ..progress import progress as progress_bar

ANOMALY_THRESHOLD = 2.0  # the paper's: a label with an anomaly index above it is flagged
MAD_CONSISTENCY = 1.4826  # MAD x this estimates the standard deviation of normally distributed data
MEAN_AD_CONSISTENCY = math.sqrt(math.pi / 2)  # the same for the mean absolute deviation (1.2533)
_TANH_EPS = 1e-6  # keeps tanh's inverse finite at the initial draw


def anomaly_indices(norms) -> np.ndarray:
    """Per label, how many consistent median absolute deviations (x 1.4826) its mask norm lies
    BELOW the median of all norms; 0 for norms at or above it. When the MAD is 0 (more than half the
    norms equal) the spread is the mean absolute deviation (x 1.2533, its own consistency constant)
    instead; when that is 0 too (all norms equal) every index is 0. Never divides by zero."""
    norms = np.asarray(norms, dtype=np.float64).reshape(-1)
    if norms.size == 0:
        return np.zeros(0)
    median = float(np.median(norms))
    deviation = np.abs(norms - median)
    spread = MAD_CONSISTENCY * float(np.median(deviation))
    if not spread > 0:
        spread = MEAN_AD_CONSISTENCY * float(np.mean(deviation))
    if not spread > 0:
        return np.zeros_like(norms)
    return np.maximum(median - norms, 0.0) / spread


@dataclass
class TriggerScan:
    """Every label's reversed trigger and the verdict drawn from their mask norms."""

    labels: list[int]
    norms: np.ndarray  # L1 norm of each label's mask (in pixels): the smallest seen at the threshold
    success: np.ndarray  # % of clean images of OTHER labels that the recorded trigger sends to the label
    reached: np.ndarray  # bool: the success threshold was reached (else norm and trigger are the final ones)
    masks: np.ndarray  # (L, H, W) in [0, 1]
    patterns: np.ndarray  # (L, C, H, W) in the data's value range
    anomaly: np.ndarray  # anomaly index per label (see anomaly_indices)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def suspects(self) -> list[int]:
        """Labels with an anomaly index above 2 whose trigger reached the success threshold, most
        anomalous first."""
        order = np.argsort(-np.asarray(self.anomaly), kind="stable")
        return [int(self.labels[i]) for i in order
                if self.anomaly[i] > ANOMALY_THRESHOLD and bool(self.reached[i])]

    @property
    def max_anomaly(self) -> float:
        """The largest anomaly index among labels whose trigger reached the threshold (0 if none)."""
        eligible = np.asarray(self.anomaly)[np.asarray(self.reached, dtype=bool)]
        return float(eligible.max()) if eligible.size else 0.0

    @property
    def verdict(self) -> str:
        suspects = self.suspects
        if not suspects:
            return (f"no single target found (largest anomaly index {self.max_anomaly:.1f} "
                    f"<= {ANOMALY_THRESHOLD:g})")
        position = {int(label): i for i, label in enumerate(self.labels)}
        first = suspects[0]
        text = f"label {first} is a suspected target (anomaly index {self.anomaly[position[first]]:.1f})"
        if len(suspects) > 1:
            others = ", ".join(f"{t} ({self.anomaly[position[t]]:.1f})" for t in suspects[1:6])
            more = f" and {len(suspects) - 6} more" if len(suspects) > 6 else ""
            text += f"; also flagged: {others}{more}"
        return text

    def to_json(self) -> dict[str, Any]:
        """Per-label numbers and the verdict, JSON-ready (masks and patterns stay out: they are
        images, for the caller to save)."""
        return {"verdict": self.verdict, "suspects": self.suspects, "max_anomaly_index": round(self.max_anomaly, 4),
                "anomaly_threshold": ANOMALY_THRESHOLD, "labels": [int(t) for t in self.labels],
                "mask_norms": [round(float(v), 4) for v in self.norms],
                "anomaly_index": [round(float(v), 4) for v in self.anomaly],
                "attack_success": [round(float(v), 2) for v in self.success],
                "reached_threshold": [bool(v) for v in self.reached],
                "settings": dict(self.settings), "seconds": round(float(self.seconds), 3)}


def _atanh(values: torch.Tensor) -> torch.Tensor:
    """The tanh parameter whose squashed value (tanh(p) + 1) / 2 is `values` in [0, 1]."""
    return torch.atanh((values * 2 - 1).clamp(-1 + _TANH_EPS, 1 - _TANH_EPS))


def _squash(params: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(params) + 1) / 2


def reverse_triggers(model: nn.Module, images: ImageSet, value_range: tuple[float, float], *, seed: int = 0,
                     progress: bool | str = False, steps: int = 400, batch_size: int = 16, group: int = 10,
                     lr: float = 0.1, init_cost: float = 1e-3, success_threshold: float = 0.99,
                     check_every: int = 10, patience: int = 3, cost_multiplier: float = 1.5,
                     early_stop_patience: int = 10, eval_images: int = 500) -> TriggerScan:
    """Reverse a trigger for every label of `model` (their count is its output width) on the clean
    `images`, in `value_range`, `group` labels per batched forward pass; see the module docstring.

    steps: most Adam steps per label; batch_size: images per label and step (the paper's 32);
    lr, init_cost, success_threshold, cost_multiplier: the paper's 0.1, 1e-3, 0.99 and 1.5 (lambda
    goes up by it, down by it^1.5); check_every: steps per check (the paper checks once per epoch);
    patience: checks in a row above (below) the threshold before lambda goes up (down);
    early_stop_patience: checks without a 1 % better norm before a label stops; eval_images: at most
    this many clean images of other labels measure each final trigger's attack success."""
    _check_settings(steps, batch_size, group, lr, init_cost, success_threshold, check_every, patience,
                    cost_multiplier, early_stop_patience, eval_images)
    if len(images) == 0:
        raise DataError("a trigger scan needs clean images; got none")
    low, high = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(low) and math.isfinite(high) and high >= low):
        raise DataError(f"a trigger scan needs a finite value range, not {value_range!r}")
    start = time.perf_counter()
    with placed(model) as device:
        return _reverse_all(model, images, (low, high), device, seed, progress, steps, batch_size, group, lr,
                            init_cost, success_threshold, check_every, patience, cost_multiplier,
                            early_stop_patience, eval_images, start)


def _reverse_all(model, images, value_range, device, seed, progress, steps, batch_size, group, lr, init_cost,
                 success_threshold, check_every, patience, cost_multiplier, early_stop_patience, eval_images,
                 start) -> TriggerScan:
    """reverse_triggers' work, with the model already on `device`."""
    low, high = value_range
    xs = torch.from_numpy(np.ascontiguousarray(images.x, dtype=np.float32)).to(device)
    ys = torch.from_numpy(images.y).long().to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        num_labels = int(model(xs[:1]).shape[-1])
    generator = torch.Generator().manual_seed(seed)
    evaluation_order = torch.randperm(len(xs), generator=generator).to(device)
    n, (c, h, w) = num_labels, images.image_shape
    result = {"norms": np.zeros(n), "success": np.zeros(n), "reached": np.zeros(n, dtype=bool),
              "masks": np.zeros((n, h, w), np.float32), "patterns": np.zeros((n, c, h, w), np.float32),
              "steps": np.zeros(n, dtype=np.int64)}
    groups = [list(range(s, min(s + group, n))) for s in range(0, n, group)]
    label = progress if isinstance(progress, str) else ("reversing triggers" if progress else None)
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # gradients for the trigger only: cheaper, and the model stays as it is
        p.requires_grad_(False)
    try:
        for labels in progress_bar(groups, label):
            mask, pattern, norms, reached, used = _reverse_group(
                model, labels, xs, ys, (low, high), generator, steps, batch_size, lr, init_cost, success_threshold,
                check_every, patience, cost_multiplier, early_stop_patience)
            success = _attack_success(model, labels, mask, pattern, xs, ys, evaluation_order, eval_images)
            for k, t in enumerate(labels):
                result["norms"][t], result["reached"][t], result["steps"][t] = norms[k], reached[k], used
                result["masks"][t], result["patterns"][t] = to_numpy(mask[k]), to_numpy(pattern[k])
                result["success"][t] = success[k]
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    settings = {"steps": steps, "batch_size": batch_size, "group": group, "lr": lr, "init_cost": init_cost,
                "success_threshold": success_threshold, "check_every": check_every, "patience": patience,
                "cost_multiplier": cost_multiplier, "early_stop_patience": early_stop_patience,
                "eval_images": eval_images, "seed": seed, "images": len(images), "value_range": [low, high],
                "steps_used": int(result["steps"].max()) if n else 0}
    return TriggerScan(list(range(n)), result["norms"], result["success"], result["reached"], result["masks"],
                       result["patterns"], anomaly_indices(result["norms"]), settings, time.perf_counter() - start)


def _check_settings(steps, batch_size, group, lr, init_cost, success_threshold, check_every, patience,
                    cost_multiplier, early_stop_patience, eval_images) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size), ("group", group),
                        ("check_every", check_every), ("patience", patience),
                        ("early_stop_patience", early_stop_patience), ("eval_images", eval_images)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"trigger scan: {name.replace('_', '-')} must be a whole number >= 1, not {value!r}")
    for name, value in (("lr", lr), ("init_cost", init_cost)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise SettingsError(f"trigger scan: {name.replace('_', '-')} must be a positive number, not {value!r}")
    if not (isinstance(success_threshold, (int, float)) and 0 < success_threshold <= 1):
        raise SettingsError(f"trigger scan: success-threshold must be in (0, 1], not {success_threshold!r}")
    if not (isinstance(cost_multiplier, (int, float)) and math.isfinite(cost_multiplier) and cost_multiplier > 1):
        raise SettingsError(f"trigger scan: cost-multiplier must be a number above 1, not {cost_multiplier!r}")


def _reverse_group(model: nn.Module, labels: list[int], xs: torch.Tensor, ys: torch.Tensor,
                   value_range: tuple[float, float], generator: torch.Generator, steps: int, batch_size: int,
                   lr: float, init_cost: float, success_threshold: float, check_every: int, patience: int,
                   cost_multiplier: float, early_stop_patience: int):
    """Optimise the triggers of `labels` together; returns (masks (G, H, W), patterns (G, C, H, W),
    norms, reached, steps used)."""
    low, high = value_range
    g = len(labels)
    _, c, h, w = xs.shape
    dev = xs.device  # every draw on the CPU (the same on any device), then moved
    targets = torch.tensor(labels, dtype=torch.long, device=dev)
    # the paper's random start: mask and pattern uniform in their ranges, through tanh's inverse
    mask_params = _atanh(torch.rand(g, 1, h, w, generator=generator).to(dev)).requires_grad_(True)
    pattern_params = _atanh(torch.rand(g, c, h, w, generator=generator).to(dev)).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_params, pattern_params], lr=lr, betas=(0.5, 0.9))

    def trigger() -> tuple[torch.Tensor, torch.Tensor]:
        return _squash(mask_params), (low + (high - low) * _squash(pattern_params)).clamp(low, high)

    cost = torch.full((g,), float(init_cost), device=dev)
    best = torch.full((g,), math.inf, device=dev)
    best_mask, best_pattern = torch.zeros(g, 1, h, w, device=dev), torch.zeros(g, c, h, w, device=dev)
    up, down = torch.zeros(g, dtype=torch.long, device=dev), torch.zeros(g, dtype=torch.long, device=dev)
    went_up, went_down = torch.zeros(g, dtype=torch.bool, device=dev), torch.zeros(g, dtype=torch.bool, device=dev)
    stale = torch.zeros(g, dtype=torch.long, device=dev)  # checks since the best norm last improved by 1 %
    hits, seen = torch.zeros(g, device=dev), torch.zeros(g, device=dev)
    used = 0
    for used in range(1, steps + 1):
        idx = torch.randint(0, len(xs), (batch_size,), generator=generator).to(dev)
        x = xs[idx]  # the same images for every label of the group
        mask, pattern = trigger()
        stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]  # (G, b, C, H, W)
        logits = model(stamped.reshape(g * batch_size, c, h, w)).reshape(g, batch_size, -1)
        ce = F.cross_entropy(logits.reshape(g * batch_size, -1), targets.repeat_interleave(batch_size),
                             reduction="none").reshape(g, batch_size).mean(dim=1)
        l1 = mask.reshape(g, -1).sum(dim=1)
        optimizer.zero_grad()
        (ce + cost * l1).sum().backward()
        optimizer.step()
        with torch.no_grad():
            other = ys[idx][None, :] != targets[:, None]  # success counts images of other labels only
            hits += ((logits.argmax(dim=2) == targets[:, None]) & other).sum(dim=1)
            seen += other.sum(dim=1)
            if used % check_every:
                continue
            ok = (seen > 0) & (hits >= success_threshold * seen)
            hits.zero_(), seen.zero_()
            mask, pattern = trigger()  # after the step: the trigger the window's success vouches for
            norm = mask.reshape(g, -1).sum(dim=1)
            improved = ok & (norm < best)
            stale = torch.where(ok & (norm < 0.99 * best), torch.zeros_like(stale), stale + 1)
            best = torch.where(improved, norm, best)
            best_mask[improved], best_pattern[improved] = mask[improved], pattern[improved]
            up = torch.where(ok, up + 1, torch.zeros_like(up))
            down = torch.where(ok, torch.zeros_like(down), down + 1)
            raise_, lower = up >= patience, down >= patience
            cost = torch.where(raise_, cost * cost_multiplier, cost)
            cost = torch.where(lower, cost / cost_multiplier ** 1.5, cost)
            went_up |= raise_
            went_down |= lower
            up[raise_], down[lower] = 0, 0
            done = torch.isfinite(best) & went_up & went_down & (stale >= early_stop_patience)
            if bool(done.all()):
                break
    with torch.no_grad():
        final_mask, final_pattern = trigger()
        reached = torch.isfinite(best)
        mask = torch.where(reached[:, None, None, None], best_mask, final_mask)
        pattern = torch.where(reached[:, None, None, None], best_pattern, final_pattern)
        norms = mask.reshape(g, -1).sum(dim=1)
    return mask[:, 0], pattern, to_numpy(norms).astype(np.float64), to_numpy(reached), used


def _attack_success(model: nn.Module, labels: list[int], masks: torch.Tensor, patterns: torch.Tensor,
                    xs: torch.Tensor, ys: torch.Tensor, order: torch.Tensor, limit: int,
                    chunk: int = 1024) -> list[float]:
    """% of (at most `limit`, in a seeded order) clean images of other labels each trigger sends to
    its label; 0 when there are none."""
    rates = []
    with torch.no_grad():
        for k, t in enumerate(labels):
            pick = order[ys[order] != t][:limit]
            if len(pick) == 0:
                rates.append(0.0)
                continue
            hits = 0
            for s in range(0, len(pick), chunk):
                x = xs[pick[s:s + chunk]]
                stamped = (1 - masks[k]) * x + masks[k] * patterns[k]
                hits += int((model(stamped).argmax(dim=-1) == t).sum())
            rates.append(100.0 * hits / len(pick))
    return rates
