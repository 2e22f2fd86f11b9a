"""Which pruned model to keep for a clean-accuracy budget X.

Two rules: `crossing` keeps the first model whose drop is >= X (the lab's rule, used by every
public solution, which overspends the budget); `within` keeps the model just before it, whose drop
is still < X. Comparisons are done on exact fractions of correct counts, so a drop of exactly X
counts as reaching X regardless of float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

RULES = ("crossing", "within")
DROPS = ("absolute", "relative")


@dataclass(frozen=True)
class Selection:
    x: float
    rule: str
    channels_pruned: int | None  # None: the crossing never happens
    reached: bool  # whether some step's drop is >= x

    @property
    def name(self) -> str:
        """The B' file stem and table label, e.g. "x2_crossing"; distinct budgets get distinct names."""
        return f"x{budget_text(self.x)}_{self.rule}"


def budget_text(x: float) -> str:
    """X as short text that still names exactly this X: 2 -> "2", 0.5000001 -> "0.5000001"."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def drop_reaches(base_correct: int, correct: int, total: int, x: float, drop: str) -> bool:
    """Is the clean-accuracy drop from `base_correct` to `correct` (of `total`) at least x?"""
    lost = Fraction(base_correct - correct) * 100
    budget = Fraction(str(x))
    if drop == "absolute":
        return lost >= budget * total
    if drop == "relative":
        return lost >= budget * base_correct
    raise ValueError(f"unknown drop '{drop}' ({' or '.join(DROPS)})")


def drop_percent(base_correct: int, correct: int, total: int, drop: str) -> float:
    if drop == "absolute":
        return (base_correct - correct) * 100.0 / total
    return (base_correct - correct) * 100.0 / base_correct if base_correct else 0.0


def select(
    correct: Sequence[int],
    total: int,
    thresholds: Sequence[float],
    drop: str = "absolute",
    rules: Sequence[str] = RULES,
) -> list[Selection]:
    """`correct[k]` = clean-validation hits with k channels pruned (k = 0 is the original model)."""
    for rule in rules:
        if rule not in RULES:
            raise ValueError(f"unknown rule '{rule}' ({' or '.join(RULES)})")
    last = len(correct) - 1
    out = []
    for x in thresholds:
        if not x > 0:
            raise ValueError(f"threshold must be positive, got {x}")
        first = next((k for k in range(1, last + 1) if drop_reaches(correct[0], correct[k], total, x, drop)), None)
        for rule in rules:
            if rule == "crossing":
                out.append(Selection(x, rule, first, first is not None))
            else:
                out.append(Selection(x, rule, last if first is None else first - 1, first is not None))
    return out
