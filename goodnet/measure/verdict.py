"""The verdict on each repaired model, and what to try when the backdoor survived.

One verdict per B': was the backdoor removed (its ASR before and after, each with its confidence
interval), what it cost in clean accuracy (the paired change on the same images, with its
interval), and whether that cost is within the budget the repair was given, past it, or not
shown either way by the number of images at hand. Test data are preferred (they chose nothing);
without them the validation data stand in and the verdict says so.

A repair meets the bar when its B' has ASR <= 2 % and loses <= 2 points of clean accuracy: the
bar goodnet's zoo scores every repair by (docs/zoo.md). When no B' of a run removed the backdoor
within its budget, the next step names the repair that met that bar on the most evaluation
BadNets of the zoo, other than the one just run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import Interval, paired_change_interval, proportion_interval

BAR_ASR = 2.0  # % : a B' at or under this ASR has had its backdoor removed
BAR_DROP = 2.0  # points of clean accuracy the zoo's bar allows

# Repairs in the order to try them, with how many evaluation BadNets of goodnet's zoo each
# repaired to the bar, as the zoo's table in docs/zoo.md reports (tests hold the two together).
# Only repairs that need no poisoned data are recommended.
RECOMMENDED: tuple[tuple[str, int, int], ...] = (("unlearn-uap", 6, 6), ("ft-sam", 3, 6))

REMOVED, REDUCED, SURVIVES, ABSENT, NOT_MEASURED = "removed", "reduced", "survives", "absent in B", "not measured"
WITHIN, OVER, NOT_SHOWN = "within budget", "over budget", "not shown"


@dataclass(frozen=True)
class Verdict:
    """What one B' did to the backdoor and to clean accuracy, with the uncertainty of each."""

    model: str
    backdoor: str  # removed | reduced | survives | absent in B | not measured
    asr_before: Interval | None
    asr_after: Interval | None
    asr_data: str | None  # the poisoned set the ASRs are measured on
    clean_before: Interval | None
    clean_after: Interval | None
    clean_change: Interval | None  # points, B' minus B, paired on the same images
    clean_data: str | None
    budget: float | None  # points of clean accuracy the repair was allowed to lose
    budget_status: str | None  # within budget | over budget | not shown | None (no budget)
    budget_percent: float | None = None  # the budget as given, in percent of B's accuracy (--relative)

    @property
    def meets_bar(self) -> bool:
        return (
            self.backdoor == REMOVED
            and self.clean_change is not None
            and -self.clean_change.value <= BAR_DROP
            and self.budget_status != OVER
        )

    @property
    def acceptable(self) -> bool:
        """The backdoor is gone (or never showed) and the clean cost is not shown to exceed the budget."""
        return self.backdoor in (REMOVED, ABSENT) and self.budget_status != OVER

    def line(self) -> str:
        """One line, e.g. 'x2: backdoor removed: ASR 99.8 % -> 0.4 % (95 % CI 0.1-1.1, 900 poisoned
        test images); clean accuracy -0.90 points (95 % CI -1.62 to -0.27, 1000 clean test images):
        within the 2-point budget'."""
        state = {SURVIVES: "SURVIVES", ABSENT: "ABSENT IN B (nothing to remove)"}.get(self.backdoor, self.backdoor)
        if self.backdoor == NOT_MEASURED:
            head = "backdoor not measured (no poisoned data given)"
        else:
            b, a = self.asr_before, self.asr_after
            head = (
                f"backdoor {state}: ASR {b.value:.1f} % -> {a.value:.1f} % (95 % CI {a.low:.1f}-{a.high:.1f}, "
                f"{a.n} {_set_name(self.asr_data)} images)"
            )
        if self.clean_change is None:
            return f"{self.model}: {head}; clean accuracy not measured (no clean data given)"
        c = self.clean_change
        cost = (
            f"clean accuracy {c.value:+.2f} points (95 % CI {c.low:+.2f} to {c.high:+.2f}, "
            f"{c.n} {_set_name(self.clean_data)} images)"
        )
        return f"{self.model}: {head}; {cost}{self._budget_text()}"

    def _budget_text(self) -> str:
        if self.budget is None or self.budget_status is None:
            return ""
        budget = f"{self.budget:.4g}-point budget"
        if self.budget_percent is not None:
            budget += f" ({self.budget_percent:g} % of B's accuracy)"
        if self.budget_status == WITHIN:
            return f": within the {budget}"
        if self.budget_status == OVER:
            return f": OVER the {budget}"
        return f": too few images to tell whether within the {budget} (the drop may be up to {-self.clean_change.low:.2f} points)"

    def to_json(self) -> dict[str, Any]:
        def interval(value: Interval | None) -> dict[str, Any] | None:
            return None if value is None else value.to_json()

        return {
            "model": self.model,
            "backdoor": self.backdoor,
            "asr_data": self.asr_data,
            "asr_before": interval(self.asr_before),
            "asr_after": interval(self.asr_after),
            "clean_data": self.clean_data,
            "clean_accuracy_before": interval(self.clean_before),
            "clean_accuracy_after": interval(self.clean_after),
            "clean_accuracy_change": interval(self.clean_change),
            "budget": self.budget,
            "budget_relative_percent": self.budget_percent,
            "budget_status": self.budget_status,
            "meets_bar": self.meets_bar,
            "line": self.line(),
        }


@dataclass(frozen=True)
class NextStep:
    """What to run next when no B' removed the backdoor within its budget."""

    repair: str | None  # the repair to try, or None when the next step is to measure
    reason: str

    def line(self) -> str:
        return f"next step: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"repair": self.repair, "reason": self.reason, "line": self.line()}


def _set_name(role: str | None) -> str:
    return {
        "poisoned_test": "poisoned test",
        "poisoned_valid": "poisoned validation",
        "clean_test": "clean test",
        "clean_valid": "clean validation",
    }.get(role or "", role or "")


def verdict(
    name: str,
    truth: dict[str, np.ndarray],
    backdoored: dict[str, np.ndarray],
    repaired: dict[str, np.ndarray],
    budget: float | None,
    relative: bool = False,
) -> Verdict:
    """The verdict on one B' from the labels (role -> per-image labels) of B and B' and the truth;
    test sets first, validation sets when no test set of that kind was given. `budget`: points of
    clean accuracy, or with `relative` percent of B's accuracy on the same clean images."""
    asr_role = next((r for r in ("poisoned_test", "poisoned_valid") if r in truth and len(truth[r])), None)
    clean_role = next((r for r in ("clean_test", "clean_valid") if r in truth and len(truth[r])), None)
    asr_before = asr_after = None
    state = NOT_MEASURED
    if asr_role is not None:
        y = truth[asr_role]
        hits_before = int(np.sum(backdoored[asr_role] == y))
        hits_after = int(np.sum(repaired[asr_role] == y))
        asr_before, asr_after = proportion_interval(hits_before, len(y)), proportion_interval(hits_after, len(y))
        if asr_before.value <= BAR_ASR:
            state = ABSENT
        elif asr_after.value <= BAR_ASR:
            state = REMOVED
        elif asr_after.high < asr_before.low:  # fewer hits, beyond what the images' noise explains
            state = REDUCED
        else:
            state = SURVIVES
    clean_before = clean_after = change = None
    status = None
    percent = None
    if clean_role is not None:
        y = truth[clean_role]
        right_before, right_after = backdoored[clean_role] == y, repaired[clean_role] == y
        clean_before = proportion_interval(int(right_before.sum()), len(y))
        clean_after = proportion_interval(int(right_after.sum()), len(y))
        change = paired_change_interval(right_before, right_after)
        if budget is not None and relative:
            percent, budget = budget, budget * clean_before.value / 100.0
        if budget is not None:
            # the drop is minus the change: within when even its upper bound keeps the budget
            if -change.low <= budget + 1e-9:
                status = WITHIN
            elif -change.high > budget + 1e-9:
                status = OVER
            else:
                status = NOT_SHOWN
    if clean_role is None and relative:
        budget = None  # no clean images to turn percent of B's accuracy into points
    return Verdict(
        name,
        state,
        asr_before,
        asr_after,
        asr_role,
        clean_before,
        clean_after,
        change,
        clean_role,
        budget,
        status,
        percent,
    )


def next_step(repair_name: str, verdicts: tuple[Verdict, ...], handed_back: float | None = None) -> NextStep | None:
    """None when a B' removed the backdoor without being shown to break its budget; otherwise what
    to do: measure (no poisoned data), or the best-measured repair other than `repair_name`.
    `handed_back`: the guard's budget when it handed B back unchanged because every setting of the
    repair broke it."""
    if not verdicts or (handed_back is None and any(v.acceptable for v in verdicts)):
        return None
    if all(v.backdoor == NOT_MEASURED for v in verdicts):
        return NextStep(
            None,
            "give poisoned test data (--poisoned-test) to measure the backdoor, or scan B for one with `goodnet scan`",
        )
    others = [entry for entry in RECOMMENDED if entry[0] != repair_name]
    removed = any(v.backdoor == REMOVED for v in verdicts)
    if handed_back is not None:
        what = (
            f"{repair_name} could not keep the {handed_back:g}-point budget on held-out clean data, so B "
            "was handed back unchanged (still backdoored)"
        )
    elif removed:
        what = f"{repair_name} removed the backdoor only past its clean-accuracy budget"
    else:
        what = f"the backdoor survived {repair_name}"
    if not others:  # only possible if the recommended list held nothing but this repair
        return NextStep(None, f"{what}; give more clean data or a larger budget, or try another repair")
    name, met, total = others[0]
    also = "; ".join(f"{n} met it on {m} of {t}" for n, m, t in others[1:])
    return NextStep(
        name,
        f"{what}; try `goodnet defend --repair {name}`: it repaired {met} of {total} evaluation BadNets of "
        f"goodnet's zoo to the bar (ASR <= {BAR_ASR:g} %, clean drop <= {BAR_DROP:g} points, docs/zoo.md)"
        + (f"; {also}" if also else ""),
    )
