"""Write an output directory all at once: into a hidden sibling first, renamed into place at the end.

A failure half-way (an exception, Ctrl-C, SIGTERM) leaves no partial directory behind, and an
earlier complete result stays intact until the new one is ready. Staging directories carry the
writer's process id, so one left by a killed run (SIGKILL, power loss) is removed by the next run.
Two runs never write the same output at once: the first claims it (a lock file beside it) and the
second is refused with one line. What is written respects the umask, like any other tool's output.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
import time
from typing import Iterator

from ..errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the rest works
    fcntl = None

MARKER = "results.json"
_CLAIMS: dict[str, tuple[int, str]] = {}  # output path -> (lock file descriptor, lock file path)
LEGACY_STALE_SECONDS = 3600.0  # staging without a process id (older versions) counts as stale after this


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def respect_umask(path: str, directory: bool = False) -> None:
    """mkdtemp/mkstemp create 0700/0600 whatever the umask; give `path` the mode a plain
    mkdir/open would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_staging(path: str) -> list[str]:
    """Remove hidden staging siblings of `path` left by runs that were killed; return them."""
    parent, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"^\.{re.escape(base)}\.(?:partial|old)-(?:(\d+)-)?[^/]*$")
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        full = os.path.join(parent, name)
        if match.group(1) is not None:
            stale = not _alive(int(match.group(1)))
        else:
            try:
                stale = time.time() - os.path.getmtime(full) > LEGACY_STALE_SECONDS
            except OSError:
                continue
        if stale:
            shutil.rmtree(full, ignore_errors=True)
            removed.append(full)
    return removed


def claim_output(path: str) -> None:
    """Hold `path` for this process until `release_output(path)` (or exit): a second run that
    claims it meanwhile is refused with one line instead of silently overwriting."""
    path = os.path.abspath(path)
    if path in _CLAIMS or fcntl is None:
        return
    parent, base = os.path.split(path)
    lock_path = os.path.join(parent, f".{base}.lock")
    try:
        os.makedirs(parent, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create output directory ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"{path}: another goodnet run is writing this output right now; wait for it to "
                          f"finish or choose another --out") from None
    _CLAIMS[path] = (fd, lock_path)


def release_output(path: str | None = None) -> None:
    """Give up the claim on `path` (every claim of this process when None), lock file removed."""
    paths = list(_CLAIMS) if path is None else [os.path.abspath(path)]
    for p in paths:
        held = _CLAIMS.pop(p, None)
        if held is None:
            continue
        fd, lock_path = held
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        with contextlib.suppress(OSError):
            os.close(fd)


atexit.register(release_output)


def grid_state_dir(path: str) -> str:
    """Where a grid keeps its finished cells until its output directory is written: a hidden
    sibling, so an interrupted run resumes from it and a finished one removes it."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.cells")


def check_output_dir(path: str, marker: str = MARKER, claim: bool = False) -> None:
    """Refuse a `path` that exists and is not replaceable (see `atomic_directory`); callers with
    long work ahead check first so the user does not wait for the refusal. `claim`: also hold it
    (see claim_output) until it is written, so a second run is refused now, not after its work."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise OutputError(f"{path}: exists and is not a directory")
        if os.listdir(path) and not os.path.exists(os.path.join(path, marker)):
            raise OutputError(f"{path}: exists and is not a goodnet output directory; choose another --out")
    if claim:
        claim_output(path)


@contextlib.contextmanager
def atomic_directory(path: str, marker: str = MARKER, exclusive: bool = True) -> Iterator[str]:
    """Yield a staging directory that becomes `path` only if the block succeeds.

    An existing `path` is replaced only if it is empty or holds `marker` (an earlier goodnet
    result), so a typo cannot wipe an unrelated directory. `exclusive`: refuse while another run
    writes `path` (caches pass False: two runs building the same entry write the same thing)."""
    path = os.path.abspath(path)
    check_output_dir(path, marker, claim=exclusive)
    parent, base = os.path.split(path)
    remove_stale_staging(path)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{base}.partial-{os.getpid()}-", dir=parent)
    except OSError as exc:
        release_output(path)
        raise OutputError(f"{path}: cannot create output directory ({exc.strerror})") from None
    try:
        respect_umask(staging, directory=True)
        yield staging
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{base}.old-{os.getpid()}-", dir=parent)
            os.rename(path, os.path.join(old, "previous"))
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
    except OSError as exc:  # a full disk, a read-only mount, a quota: one line, nothing left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{path}: cannot write the output ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if exclusive:
            release_output(path)


def write_file_atomically(path: str, write) -> None:
    """Call `write(tmp)` on a hidden file next to `path`, then rename it into place; on any
    failure nothing is left behind and an existing `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; name the file to write")
    if not os.path.isdir(directory):
        raise OutputError(f"{path}: the folder {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".goodnet-", suffix=os.path.splitext(path)[1], dir=directory)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        respect_umask(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only mount: one line, nothing left behind
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
