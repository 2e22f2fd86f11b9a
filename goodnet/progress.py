"""Progress bars for long steps: shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str | None) -> Iterable[T]:
    """`desc=None` turns the bar off; otherwise tqdm decides by whether stderr is a terminal."""
    return tqdm(items, desc=desc, disable=True if desc is None else None, leave=False)


def format_duration(seconds: float) -> str:
    """'42 s', '12 min 5 s', '3 h 20 min': short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def eta(elapsed: float, done: int, total: int) -> str:
    """Time left at the pace so far ('ETA 4 min 10 s'); unknown before the first item is done."""
    if done <= 0:
        return "ETA unknown"
    if done >= total:
        return "done"
    return "ETA " + format_duration(elapsed / done * (total - done))
