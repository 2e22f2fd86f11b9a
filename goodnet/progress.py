"""Progress bars for long steps: shown on a terminal, silent in logs and pipes."""

from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str | None) -> Iterable[T]:
    """`desc=None` turns the bar off; otherwise tqdm decides by whether stderr is a terminal."""
    return tqdm(items, desc=desc, disable=True if desc is None else None, leave=False)
