"""Write an output directory all at once: into a hidden sibling first, renamed into place at the end.

A failure half-way leaves no partial directory behind, and an earlier complete result stays intact
until the new one is ready.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from ..errors import OutputError

MARKER = "results.json"


def check_output_dir(path: str, marker: str = MARKER) -> None:
    """Refuse a `path` that exists and is not replaceable (see `atomic_directory`); callers with
    long work ahead check first so the user does not wait for the refusal."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise OutputError(f"{path}: exists and is not a directory")
        if os.listdir(path) and not os.path.exists(os.path.join(path, marker)):
            raise OutputError(f"{path}: exists and is not a goodnet output directory; choose another --out")


@contextlib.contextmanager
def atomic_directory(path: str, marker: str = MARKER) -> Iterator[str]:
    """Yield a staging directory that becomes `path` only if the block succeeds.

    An existing `path` is replaced only if it is empty or holds `marker` (an earlier goodnet
    result), so a typo cannot wipe an unrelated directory."""
    path = os.path.abspath(path)
    check_output_dir(path, marker)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create output directory ({exc.strerror})") from None
    try:
        yield staging
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "previous"))
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_file_atomically(path: str, write) -> None:
    """Call `write(tmp)` on a hidden file next to `path`, then rename it into place; on any
    failure nothing is left behind and an existing `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".goodnet-", suffix=os.path.splitext(path)[1], dir=directory)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
