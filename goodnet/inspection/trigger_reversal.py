"""Neural Cleanse's trigger reversal (Wang et al., IEEE S&P 2019), as the authors' code does it.

Why it works: a backdoor is a shortcut. To send any image to the attacker's target, the small
trigger is enough; to send it to an honest label, the change must be about as large as that
label's own features. So for every label t we look for the smallest mask m (H x W, in [0, 1]) and
a pattern p (C x H x W, in the data's own value range) such that (1 - m) * x + m * p is classified
as t for clean images x, minimising cross-entropy + lambda * |m|_1. The target's mask norm is an
outlier below the others. The anomaly index measures that in median absolute deviations (MAD x
1.4826, a consistent estimate of the standard deviation) below the median; labels above 2 are
suspected targets, and labels above the median never are (a large trigger is no sign of a backdoor).

As in the authors' reference (github.com/bolunwang/backdoor, visualizer.py and its GTSRB example):
mask = tanh(a) / 2 + 0.5 and pattern = low + (high - low) * (tanh(b) / 2 + 0.5) (no clipping
needed), random uniform start, Adam at rate 0.1 with betas (0.5, 0.9), 32 images per step, attack
success threshold 99 % of the check's images. Lambda starts at 0 and is set to 1e-3 once the attack
has succeeded for `patience` (5) checks in a row; from then on it is doubled after 5 successful
checks in a row and divided by 2^1.5 after 5 failed ones. The recorded trigger is the one after
the check with the smallest mean mask norm among succeeding checks; a label stops once lambda has
gone both up and down and that norm has not improved for 25 checks. A label whose attack never
reached the threshold keeps its last trigger, and its norm counts like any other.

Departures, for CPU cost (each is a keyword of reverse_triggers):
- a check (the reference's "step", 31 batches of 32 images) is `check_every` = 10 steps;
- at most `steps` = 1000 Adam steps per label (the reference allows 1000 checks);
- `group` labels are optimised in one batched forward pass on the same images (their masks and
  patterns are independent, so the optimisation is the same);
- when more than half the norms are equal (MAD 0), the spread is the mean absolute deviation x 1.2533
  instead (the reference divides by zero).
`schedule="goodnet"` gives this package's own faster variant (lambda from 1e-3, patience 3, x1.5,
early stop after 10 checks without a 1 % better norm, only labels whose attack succeeded flagged).
The cost is labels x steps x batch forward and backward passes; the label count is read from the
model's output, never assumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..devices import placed, to_numpy
from ..errors import DataError, SettingsError
from ..io.data import ImageSet
from ..lazy_torch import F, nn, torch
from ..progress import progress as progress_bar
from .trigger_scan import TriggerScan, anomaly_indices

_TANH_EPS = 1e-6  # keeps tanh's inverse finite at the initial draw

# the lambda schedule and flagging rule: the authors' ("reference") and this package's faster one
SCHEDULES: dict[str, dict[str, Any]] = {
    "reference": {
        "start_cost_at_zero": True,
        "patience": 5,
        "cost_multiplier": 2.0,
        "early_stop_threshold": 1.0,
        "early_stop_patience": 25,
        "only_reached": False,
    },
    "goodnet": {
        "start_cost_at_zero": False,
        "patience": 3,
        "cost_multiplier": 1.5,
        "early_stop_threshold": 0.99,
        "early_stop_patience": 10,
        "only_reached": True,
    },
}


@dataclass
class CostSchedule:
    """One label's lambda (the weight of the mask norm in the loss), its record and its early stop,
    updated once per check as the authors' visualizer does: `check(success, norm)` with the share of
    the check's images sent to the label and the check's mean mask norm; it returns (record the
    trigger as the best so far, stop this label)."""

    init_cost: float = 1e-3
    success_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 2.0  # lambda is multiplied by it going up, divided by it^1.5 going down
    early_stop_threshold: float = 1.0
    early_stop_patience: int = 25
    start_cost_at_zero: bool = True
    cost: float = field(init=False)
    best: float = field(init=False, default=math.inf)  # smallest mean norm of a succeeding check
    went_up: bool = field(init=False, default=False)
    went_down: bool = field(init=False, default=False)
    _set: int = field(init=False, default=0)
    _up: int = field(init=False, default=0)
    _down: int = field(init=False, default=0)
    _stale: int = field(init=False, default=0)
    _stop_best: float = field(init=False, default=math.inf)

    def __post_init__(self) -> None:
        self.cost = 0.0 if self.start_cost_at_zero else float(self.init_cost)

    def check(self, success: float, norm: float) -> tuple[bool, bool]:
        ok = success >= self.success_threshold
        record = ok and norm < self.best
        if record:
            self.best = norm
        if math.isfinite(self.best):  # early stop counts only once a working trigger exists
            self._stale = self._stale + 1 if self.best >= self.early_stop_threshold * self._stop_best else 0
        self._stop_best = min(self._stop_best, self.best)
        if self.went_up and self.went_down and self._stale >= self.early_stop_patience:
            return record, True
        if self.cost == 0 and ok:  # lambda 0: the attack alone first; set lambda once it works
            self._set += 1
            if self._set >= self.patience:
                self.cost = float(self.init_cost)
                self._up = self._down = 0
                self.went_up = self.went_down = False
        else:
            self._set = 0
        self._up, self._down = (self._up + 1, 0) if ok else (0, self._down + 1)
        if self._up >= self.patience:
            self._up = 0
            self.cost *= self.cost_multiplier
            self.went_up = True
        elif self._down >= self.patience:
            self._down = 0
            self.cost /= self.cost_multiplier**1.5
            self.went_down = True
        return record, False


def _atanh(values: torch.Tensor) -> torch.Tensor:
    """The tanh parameter whose squashed value tanh(a) / 2 + 0.5 is `values` in [0, 1]."""
    return torch.atanh((values * 2 - 1).clamp(-1 + _TANH_EPS, 1 - _TANH_EPS))


def _squash(params: torch.Tensor) -> torch.Tensor:
    """The reference's parametrisation: tanh(a) / 2 + 0.5, in [0, 1] whatever a."""
    return torch.tanh(params) / 2 + 0.5


def trigger_from_parameters(
    mask_params: torch.Tensor, pattern_params: torch.Tensor, value_range: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask in [0, 1], pattern in the value range) from their unconstrained parameters."""
    low, high = value_range
    return _squash(mask_params), (low + (high - low) * _squash(pattern_params)).clamp(low, high)


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Images `x` with the trigger: (1 - mask) * x + mask * pattern."""
    return (1 - mask) * x + mask * pattern


def reverse_triggers(
    model: nn.Module,
    images: ImageSet,
    value_range: tuple[float, float],
    *,
    seed: int = 0,
    progress: bool | str = False,
    steps: int = 1000,
    batch_size: int = 32,
    group: int = 10,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    success_threshold: float = 0.99,
    check_every: int = 10,
    schedule: str = "reference",
    patience: int | None = None,
    cost_multiplier: float | None = None,
    early_stop_patience: int | None = None,
    early_stop_threshold: float | None = None,
    start_cost_at_zero: bool | None = None,
    only_reached: bool | None = None,
    eval_images: int = 500,
) -> TriggerScan:
    """Reverse a trigger for every label of `model` (their count is its output width) on the clean
    `images`, in `value_range`, `group` labels per batched forward pass; see the module docstring.

    steps: most Adam steps per label; batch_size: images per label and step (the reference's 32);
    lr, init_cost, success_threshold: the reference's 0.1, 1e-3 and 0.99; check_every: steps per
    check (the reference checks once per 31 batches); schedule: "reference" or "goodnet", whose
    patience, cost_multiplier, early_stop_patience, early_stop_threshold, start_cost_at_zero and
    only_reached (see SCHEDULES) each keyword may override; eval_images: at most this many clean
    images of other labels measure each recorded trigger's attack success (reported, not used)."""
    if schedule not in SCHEDULES:
        raise SettingsError(f"trigger scan: schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    given = {
        "patience": patience,
        "cost_multiplier": cost_multiplier,
        "early_stop_patience": early_stop_patience,
        "early_stop_threshold": early_stop_threshold,
        "start_cost_at_zero": start_cost_at_zero,
        "only_reached": only_reached,
    }
    plan = {k: (SCHEDULES[schedule][k] if v is None else v) for k, v in given.items()}
    _check_settings(
        steps,
        batch_size,
        group,
        lr,
        init_cost,
        success_threshold,
        check_every,
        plan["patience"],
        plan["cost_multiplier"],
        plan["early_stop_patience"],
        plan["early_stop_threshold"],
        eval_images,
    )
    if len(images) == 0:
        raise DataError("a trigger scan needs clean images; got none")
    low, high = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(low) and math.isfinite(high) and high >= low):
        raise DataError(f"a trigger scan needs a finite value range, not {value_range!r}")
    start = time.perf_counter()

    def new_schedule() -> CostSchedule:
        return CostSchedule(
            init_cost,
            success_threshold,
            plan["patience"],
            plan["cost_multiplier"],
            plan["early_stop_threshold"],
            plan["early_stop_patience"],
            plan["start_cost_at_zero"],
        )

    with placed(model) as device:
        scan = _reverse_all(
            model,
            images,
            (low, high),
            device,
            seed,
            progress,
            steps,
            batch_size,
            group,
            lr,
            check_every,
            new_schedule,
            eval_images,
        )
    scan.only_reached = bool(plan["only_reached"])
    scan.settings.update(
        {"lr": lr, "init_cost": init_cost, "success_threshold": success_threshold, "schedule": schedule, **plan}
    )
    scan.seconds = time.perf_counter() - start
    return scan


def _reverse_all(
    model,
    images,
    value_range,
    device,
    seed,
    progress,
    steps,
    batch_size,
    group,
    lr,
    check_every,
    new_schedule,
    eval_images,
) -> TriggerScan:
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
    result = {
        "norms": np.zeros(n),
        "success": np.zeros(n),
        "reached": np.zeros(n, dtype=bool),
        "masks": np.zeros((n, h, w), np.float32),
        "patterns": np.zeros((n, c, h, w), np.float32),
        "steps": np.zeros(n, dtype=np.int64),
    }
    groups = [list(range(s, min(s + group, n))) for s in range(0, n, group)]
    label = progress if isinstance(progress, str) else ("reversing triggers" if progress else None)
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # gradients for the trigger only: cheaper, and the model stays as it is
        p.requires_grad_(False)
    try:
        for labels in progress_bar(groups, label):
            mask, pattern, reached, used = _reverse_group(
                model, labels, xs, (low, high), generator, steps, batch_size, lr, check_every, new_schedule
            )
            success = _attack_success(model, labels, mask, pattern, xs, ys, evaluation_order, eval_images)
            for k, t in enumerate(labels):
                result["norms"][t] = float(mask[k].double().sum())
                result["reached"][t], result["steps"][t] = reached[k], used[k]
                result["masks"][t], result["patterns"][t] = to_numpy(mask[k]), to_numpy(pattern[k])
                result["success"][t] = success[k]
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    settings = {
        "steps": steps,
        "batch_size": batch_size,
        "group": group,
        "check_every": check_every,
        "eval_images": eval_images,
        "seed": int(seed),
        "images": len(images),
        "value_range": [low, high],
        "steps_used": int(result["steps"].max()) if n else 0,
    }
    return TriggerScan(
        list(range(n)),
        result["norms"],
        result["success"],
        result["reached"],
        result["masks"],
        result["patterns"],
        anomaly_indices(result["norms"]),
        settings,
    )


def _check_settings(
    steps,
    batch_size,
    group,
    lr,
    init_cost,
    success_threshold,
    check_every,
    patience,
    cost_multiplier,
    early_stop_patience,
    early_stop_threshold,
    eval_images,
) -> None:
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("group", group),
        ("check_every", check_every),
        ("patience", patience),
        ("early_stop_patience", early_stop_patience),
        ("eval_images", eval_images),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"trigger scan: {name.replace('_', '-')} must be a whole number >= 1, not {value!r}")
    for name, value in (("lr", lr), ("init_cost", init_cost), ("early_stop_threshold", early_stop_threshold)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise SettingsError(f"trigger scan: {name.replace('_', '-')} must be a positive number, not {value!r}")
    if not (isinstance(success_threshold, (int, float)) and 0 < success_threshold <= 1):
        raise SettingsError(f"trigger scan: success-threshold must be in (0, 1], not {success_threshold!r}")
    if not (isinstance(cost_multiplier, (int, float)) and math.isfinite(cost_multiplier) and cost_multiplier > 1):
        raise SettingsError(f"trigger scan: cost-multiplier must be a number above 1, not {cost_multiplier!r}")


def _reverse_group(
    model: nn.Module,
    labels: list[int],
    xs: torch.Tensor,
    value_range: tuple[float, float],
    generator: torch.Generator,
    steps: int,
    batch_size: int,
    lr: float,
    check_every: int,
    new_schedule,
):
    """Optimise the triggers of `labels` together, each with its own CostSchedule; returns (masks
    (G, H, W), patterns (G, C, H, W), reached, steps used per label)."""
    g = len(labels)
    _, c, h, w = xs.shape
    dev = xs.device  # every draw on the CPU (the same on any device), then moved
    targets = torch.tensor(labels, dtype=torch.long, device=dev)
    # the reference's random start: mask and pattern uniform in their ranges, through tanh's inverse
    mask_params = _atanh(torch.rand(g, 1, h, w, generator=generator).to(dev)).requires_grad_(True)
    pattern_params = _atanh(torch.rand(g, c, h, w, generator=generator).to(dev)).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_params, pattern_params], lr=lr, betas=(0.5, 0.9))
    schedules = [new_schedule() for _ in range(g)]
    best_mask, best_pattern = torch.zeros(g, 1, h, w, device=dev), torch.zeros(g, c, h, w, device=dev)
    last_mask, last_pattern = torch.zeros(g, 1, h, w, device=dev), torch.zeros(g, c, h, w, device=dev)
    active = list(range(g))
    used = [0] * g
    hits, norm_sum = torch.zeros(g, device=dev), torch.zeros(g, device=dev)
    for step in range(1, steps + 1):
        rows = torch.tensor(active, dtype=torch.long, device=dev)
        a = len(active)
        idx = torch.randint(0, len(xs), (batch_size,), generator=generator).to(dev)
        x = xs[idx]  # the same images for every label of the group
        mask, pattern = trigger_from_parameters(mask_params[rows], pattern_params[rows], value_range)
        stamped = stamp(x[None], mask[:, None], pattern[:, None])  # (A, b, C, H, W)
        logits = model(stamped.reshape(a * batch_size, c, h, w)).reshape(a, batch_size, -1)
        ce = (
            F.cross_entropy(
                logits.reshape(a * batch_size, -1), targets[rows].repeat_interleave(batch_size), reduction="none"
            )
            .reshape(a, batch_size)
            .mean(dim=1)
        )
        l1 = mask.reshape(a, -1).sum(dim=1)
        costs = torch.tensor([schedules[k].cost for k in active], dtype=l1.dtype, device=dev)
        optimizer.zero_grad()
        (ce + costs * l1).sum().backward()
        optimizer.step()
        with torch.no_grad():  # success over ALL the check's images (the reference's accuracy), norms before the step
            hits[rows] += (logits.argmax(dim=2) == targets[rows][:, None]).float().mean(dim=1)
            norm_sum[rows] += l1
            if step % check_every:
                continue
            mask, pattern = trigger_from_parameters(mask_params[rows], pattern_params[rows], value_range)
            still = []
            for j, k in enumerate(active):
                used[k] = step
                record, stop = schedules[k].check(float(hits[k]) / check_every, float(norm_sum[k]) / check_every)
                if record:  # the trigger after the check, as the reference saves it
                    best_mask[k], best_pattern[k] = mask[j], pattern[j]
                last_mask[k], last_pattern[k] = mask[j], pattern[j]
                if not stop:
                    still.append(k)
            hits.zero_(), norm_sum.zero_()
            active = still
            if not active:
                break
    with torch.no_grad():
        if active and steps % check_every:  # the last, unfinished check: its trigger is the last one
            rows = torch.tensor(active, dtype=torch.long, device=dev)
            mask, pattern = trigger_from_parameters(mask_params[rows], pattern_params[rows], value_range)
            for j, k in enumerate(active):
                last_mask[k], last_pattern[k], used[k] = mask[j], pattern[j], steps
        reached = torch.tensor([math.isfinite(s.best) for s in schedules], device=dev)
        mask = torch.where(reached[:, None, None, None], best_mask, last_mask)
        pattern = torch.where(reached[:, None, None, None], best_pattern, last_pattern)
    return mask[:, 0], pattern, to_numpy(reached), used


def _attack_success(
    model: nn.Module,
    labels: list[int],
    masks: torch.Tensor,
    patterns: torch.Tensor,
    xs: torch.Tensor,
    ys: torch.Tensor,
    order: torch.Tensor,
    limit: int,
    chunk: int = 1024,
) -> list[float]:
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
                x = xs[pick[s : s + chunk]]
                hits += int((model(stamp(x, masks[k], patterns[k])).argmax(dim=-1) == t).sum())
            rates.append(100.0 * hits / len(pick))
    return rates
