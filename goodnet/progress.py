"""Progress of long steps: a bar on a terminal; in logs and pipes (stderr not a terminal), a heartbeat
line on stderr every few seconds, e.g. `goodnet: training BadNet 3/10, 12 s elapsed, ETA 28 s`."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

INTERVAL_VARIABLE = "GOODNET_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # seconds between heartbeat lines

_clock = time.monotonic  # read once per item; the tests put a fake clock here


def progress(items: Iterable[T], desc: str | None) -> Iterable[T]:
    """`items`, shown as they go by: `desc=None` is silent (as `--quiet` asks); on a terminal a tqdm bar;
    otherwise a heartbeat line on stderr every GOODNET_PROGRESS_INTERVAL seconds (default 10; 0 turns
    them off), the first one only once the step has run that long, so short steps print nothing."""
    if desc is None:
        return items
    if _on_terminal(sys.stderr):
        return tqdm(items, desc=desc, disable=None, leave=False)  # tqdm checks its own stream
    interval = heartbeat_interval()
    return items if interval is None else _Heartbeat(items, desc, interval)


def heartbeat_interval() -> float | None:
    """Seconds between heartbeat lines, from GOODNET_PROGRESS_INTERVAL (default 10; unset, empty or not
    a number: the default); None, no heartbeats, for 0 or less."""
    try:
        value = float(os.environ.get(INTERVAL_VARIABLE, "").strip() or DEFAULT_INTERVAL)
    except ValueError:
        return DEFAULT_INTERVAL
    if math.isnan(value):
        return DEFAULT_INTERVAL
    return value if value > 0 else None


def _on_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # None (no console), a closed or odd stream
        return False


class _Stages(threading.local):
    """The heartbeat steps running now in this thread, outermost first, and when the last line was printed:
    nested steps share one pace, so a grid cell's epochs and the cell itself make one line per interval."""

    def __init__(self) -> None:
        self.running: list[_Heartbeat] = []
        self.last_line = -math.inf


_stages = _Stages()


class _Heartbeat(Generic[T]):
    """Iterates `items`; after each item, one clock read decides whether a line is due."""

    def __init__(self, items: Iterable[T], desc: str, interval: float):
        self.items, self.desc, self.interval = items, desc, interval
        try:
            self.total: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:  # a generator: the count done and the time, no ETA
            self.total = None
        self.done, self.start, self.postfix = 0, 0.0, ""

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"'{self.desc}' has no length")
        return self.total

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **values: Any) -> None:
        """As tqdm's: shown at the end of the next line (e.g. `loss=0.1234`)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **values}.items())

    def __iter__(self) -> Iterator[T]:
        clock, interval, stages = _clock, self.interval, _stages
        if not stages.running:
            stages.last_line = -math.inf
        stages.running.append(self)
        self.start = clock()
        due = self.start + interval
        try:
            for item in self.items:
                yield item
                self.done += 1
                now = clock()
                if now >= due:
                    if now - stages.last_line >= interval:
                        stages.last_line, due = now, now + interval
                        _write(self.line(now, stages.running))
                    else:  # an enclosed or enclosing step printed less than an interval ago
                        due = stages.last_line + interval
        finally:
            if self in stages.running:
                stages.running.remove(self)

    def count(self) -> str:
        return f"{self.done} done" if self.total is None else f"{self.done}/{self.total}"

    def line(self, now: float, running: list[_Heartbeat]) -> str:
        """`goodnet: [OUTER k/n > ...] DESC done/total, ELAPSED elapsed, ETA LEFT[, postfix]`."""
        outer = running[: running.index(self)] if self in running else []
        elapsed = now - self.start
        parts = [" > ".join([f"{s.desc} {s.count()}" for s in outer] + [f"{self.desc} {self.count()}"])]
        parts.append(f"{format_duration(elapsed)} elapsed")
        if self.total is not None:
            parts.append(eta(elapsed, self.done, self.total))
        if self.postfix:
            parts.append(self.postfix)
        return "goodnet: " + ", ".join(parts)


def _write(line: str) -> None:
    """One line on stderr; a missing or broken stderr never stops the work."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def format_duration(seconds: float) -> str:
    """'42 s', '12 min 5 s', '3 h 20 min': short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def eta(elapsed: float, done: float, total: float) -> str:
    """Time left at the pace so far ('ETA 4 min 10 s'), `done` of `total` items (or of their summed
    costs); unknown before the first item is done."""
    if done <= 0:
        return "ETA unknown"
    if done >= total:
        return "done"
    return "ETA " + format_duration(elapsed / done * (total - done))
