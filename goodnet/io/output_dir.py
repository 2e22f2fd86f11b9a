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
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import OutputError, shown_path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the rest works
    fcntl = None

MARKER = "results.json"
OWNED_LIST = ".goodnet-files.json"  # in every output directory: the files goodnet wrote there
_CLAIMS: dict[str, tuple[int, str]] = {}  # output path -> (lock file descriptor, lock file path)
_CREATED: dict[str, list[str]] = {}  # output path -> the parent folders its claim created, deepest first
STATE_MARK = ".goodnet-grid"  # inside a grid's folder of finished cells
STAGING_MARK = ".goodnet-staging"  # inside every staging folder: what marks it as goodnet's to clean up


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


def make_staging(parent: str, base: str, kind: str) -> str:
    """A hidden staging folder beside an output (`kind`: "partial" or "old"), named with this
    process's id and marked inside as goodnet's, so only goodnet's own are ever cleaned up."""
    staging = tempfile.mkdtemp(prefix=f".{base}.{kind}-{os.getpid()}-", dir=parent)
    with open(os.path.join(staging, STAGING_MARK), "w") as f:
        f.write(f"{os.getpid()}\n")
    return staging


def remove_stale_staging(path: str) -> list[str]:
    """Remove hidden staging siblings of `path` left by runs that were killed; return them. A
    folder counts only when named as goodnet names them, marked inside as goodnet's, and its
    process is gone: a user's folder of a similar name is never touched."""
    parent, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"^\.{re.escape(base)}\.(?:partial|old)-(\d+)-[a-z0-9_]{{8}}$")
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
        if os.path.islink(full) or not os.path.isfile(os.path.join(full, STAGING_MARK)):
            continue
        if not _alive(int(match.group(1))):
            shutil.rmtree(full, ignore_errors=True)
            removed.append(full)
    return removed


def claim_output(path: str) -> None:
    """Hold `path` for this process until `release_output(path)` (or exit): a second run that
    claims it meanwhile is refused with one line, naming the process that holds it, instead of
    silently overwriting. The claim is an flock on a lock file beside `path`, holding the claimer's
    process id: it ends with the process that took it (the kernel drops it when the process dies,
    however it dies), so a lock left by a killed run is simply taken over. The lock's descriptor
    is never handed to programs this process starts, and a forked child lets go of its copy at
    once (the lock belongs to the open file, which a child's copy would keep alive)."""
    path = os.path.abspath(path)
    if path in _CLAIMS or fcntl is None:
        return
    if hasattr(os, "register_at_fork") and not getattr(claim_output, "fork_hook", False):
        os.register_at_fork(after_in_child=lambda: release_output(inherited=True))
        claim_output.fork_hook = True
    parent, base = os.path.split(path)
    lock_path = os.path.join(parent, f".{base}.lock")
    created = _missing_folders(parent)  # removed again on release when still empty: a refusal leaves nothing
    for _ in range(10):  # the holder may remove the file between our open and our lock: take the new one
        foreign = OutputError(
            f"{shown_path(path)}: {shown_path(lock_path)} beside it is not a lock goodnet wrote (a "
            f"link, or not a plain file); goodnet writes nothing through it: remove it or choose "
            f"another --out"
        )
        try:
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(lock_path) and (os.path.islink(lock_path) or not os.path.isfile(lock_path)):
                raise foreign
            fd = os.open(
                lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o666
            )
        except OSError as exc:
            _remove_empty(created)
            if exc.errno == errno.ELOOP:
                raise foreign from None
            raise OutputError(f"{shown_path(path)}: cannot create output directory ({exc.strerror})") from None
        except OutputError:
            _remove_empty(created)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "0")
            except (OSError, ValueError):
                holder = 0
            os.close(fd)
            if holder > 0 and not _alive(holder):
                raise OutputError(
                    f"{shown_path(path)}: another goodnet run is writing this output right now: "
                    f"process {holder} took its lock {shown_path(lock_path)} and has ended, but a "
                    f"process it started still holds it; end that process or choose another --out"
                ) from None
            held_by = f" (process {holder})" if holder > 0 else ""
            raise OutputError(
                f"{shown_path(path)}: another goodnet run is writing this output right now{held_by}; "
                f"wait for it to finish or choose another --out"
            ) from None
        try:
            mine, current = os.fstat(fd), os.stat(lock_path)
            same = (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)
        except OSError:
            same = False
        if same and not _lock_text(fd):
            os.close(fd)
            raise OutputError(
                f"{shown_path(path)}: {shown_path(lock_path)} beside it holds something goodnet did not "
                f"write (a lock holds only a process id); move it or choose another --out"
            )
        if same:
            break
        os.close(fd)
    else:
        raise OutputError(
            f"{shown_path(path)}: its lock file {shown_path(lock_path)} keeps changing (other goodnet "
            f"runs starting and stopping?); choose another --out"
        ) from None
    with contextlib.suppress(OSError):  # the holder's process id, for the refusal above; the lock works without it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _CLAIMS[path] = (fd, lock_path)
    _CREATED[path] = created


def _lock_text(fd: int) -> bool:
    """Does the open lock file hold what goodnet writes there (nothing yet, or a process id)?"""
    try:
        if os.fstat(fd).st_size > 32:
            return False
        return re.fullmatch(rb"\d*\n?", os.pread(fd, 33, 0)) is not None
    except OSError:
        return False


def _missing_folders(folder: str) -> list[str]:
    """The folders `os.makedirs(folder)` would create, deepest first."""
    missing = []
    while folder and not os.path.lexists(folder):
        missing.append(folder)
        up = os.path.dirname(folder)
        if up == folder:
            break
        folder = up
    return missing


def _remove_empty(folders: list[str]) -> None:
    """Remove `folders` (deepest first) while they are empty: the parents a claim created for an
    output that was never written."""
    for folder in folders:
        if not os.path.isdir(folder) or os.path.islink(folder):  # never made (makedirs stopped above it)
            continue
        try:
            os.rmdir(folder)
        except OSError:  # not empty: something else lives there now
            return


def release_output(path: str | None = None, inherited: bool = False) -> None:
    """Give up the claim on `path` (every claim of this process when None), lock file removed.
    `inherited`: this process is a fork of the claimer, whose claims it copied: close the copies
    only, leaving the lock and its file to the claimer."""
    paths = list(_CLAIMS) if path is None else [os.path.abspath(path)]
    for p in paths:
        held = _CLAIMS.pop(p, None)
        if held is None:
            continue
        fd, lock_path = held
        created = _CREATED.pop(p, [])
        if not inherited:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
        with contextlib.suppress(OSError):
            os.close(fd)
        if not inherited:
            _remove_empty(created)


atexit.register(release_output)


def grid_state_dir(path: str) -> str:
    """Where a grid keeps its finished cells until its output directory is written: a hidden
    sibling, so an interrupted run resumes from it and a finished one removes it."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.cells")


def _inside(inner: str, outer: str) -> bool:
    """Is `inner` `outer` itself or somewhere below it (both real paths)?"""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_not_an_input(path: str, inputs: Iterable[str | os.PathLike | None], option: str = "--out") -> None:
    """Refuse an output `path` that is an input, holds one, or sits inside one (links resolved), so
    writing or replacing the output can never touch what the run reads."""
    out = os.path.realpath(path)
    for given in inputs:
        if given is None or given == "":
            continue
        source = os.path.realpath(os.fspath(given))
        same = os.path.exists(out) and os.path.exists(source) and os.path.samefile(out, source)
        if same or _inside(source, out) or _inside(out, source):
            where = "is" if same or source == out else ("holds" if _inside(source, out) else "is inside")
            raise OutputError(
                f"{shown_path(path)}: {option} {where} the input {shown_path(os.fspath(given))}; goodnet never "
                f"writes over what it reads: choose another {option}"
            )


def _owned_files(path: str) -> dict[str, list[int]] | None:
    try:
        with open(os.path.join(path, OWNED_LIST)) as f:
            owned = json.load(f)
    except (OSError, ValueError):
        return None
    return owned if isinstance(owned, dict) else None


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: str) -> list[Any]:
    """What goodnet recorded of an entry it wrote: a folder, or a file's size and sha256."""
    if os.path.isdir(path) and not os.path.islink(path):
        return ["folder"]
    return [os.path.getsize(path), file_sha256(path)]


def _foreign_entry(path: str, owned: dict[str, list[Any]]) -> str | None:
    """The first entry under `path` that goodnet did not write there (or that changed since):
    files, folders (empty ones too) and links alike."""
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(root, name)
            relative = os.path.relpath(full, path)
            if relative == OWNED_LIST:
                continue
            if relative not in owned or os.path.islink(full) or owned[relative] != _stamp(full):
                return relative
    return None


def record_owned_files(path: str) -> None:
    """List every folder and file under `path` (files by size and sha256) in its OWNED_LIST: what
    goodnet wrote there, and so what a later run may replace."""
    owned = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            owned[os.path.relpath(full, path)] = _stamp(full)
    with open(os.path.join(path, OWNED_LIST), "w") as f:
        json.dump(owned, f, sort_keys=True)


def claim_state_dir(path: str, inputs: Iterable[str | os.PathLike | None] = ()) -> str:
    """The folder beside output `path` where a grid keeps its finished cells (see grid_state_dir):
    created and marked as goodnet's, or, when it exists, checked to be goodnet's own; a folder of
    that name that goodnet did not make, or that holds an input, is refused (goodnet removes the
    state folder once the output is written)."""
    state = grid_state_dir(path)
    check_not_an_input(state, inputs, option="the folder of finished cells beside --out")
    if os.path.lexists(state):
        if os.path.islink(state) or not os.path.isdir(state) or not os.path.isfile(os.path.join(state, STATE_MARK)):
            raise OutputError(
                f"{shown_path(state)}: named as goodnet's folder of finished cells for this --out, but "
                f"goodnet did not make it; move it or choose another --out"
            )
        return state
    try:
        os.makedirs(state)
        with open(os.path.join(state, STATE_MARK), "w") as f:
            f.write("finished cells of a goodnet grid; removed when its output is written\n")
    except OSError as exc:
        raise OutputError(f"{shown_path(state)}: cannot create the folder of finished cells ({exc.strerror})") from None
    return state


def check_output_dir(
    path: str, marker: str = MARKER, claim: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> None:
    """Refuse a `path` that exists and is not replaceable (see `atomic_directory`), or that is, holds
    or sits inside one of `inputs`; callers with long work ahead check first so the user does not
    wait for the refusal. `claim`: also hold it (see claim_output) until it is written, so a second
    run is refused now, not after its work."""
    check_not_an_input(path, inputs)
    path = os.path.abspath(path)
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise OutputError(f"{shown_path(path)}: exists and is not a directory")
        if os.listdir(path):
            has_marker = os.path.exists(os.path.join(path, marker))
            owned = _owned_files(path) if has_marker else None
            if owned is None and has_marker:
                raise OutputError(
                    f"{shown_path(path)}: holds no record of the files goodnet wrote there (an older "
                    f"goodnet's output?), so goodnet will not replace it; remove it yourself or choose "
                    f"another --out"
                )
            if owned is None:
                raise OutputError(
                    f"{shown_path(path)}: exists and is not a goodnet output directory; choose another --out"
                )
            foreign = _foreign_entry(path, owned)
            if foreign is not None:
                raise OutputError(
                    f"{shown_path(path)}: holds {shown_path(foreign)}, which goodnet did not write there (or "
                    f"which changed since); goodnet replaces only its own files: move it or "
                    f"choose another --out"
                )
    if claim:
        claim_output(path)


@contextlib.contextmanager
def held_output(path: str, marker: str = MARKER, inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[None]:
    """Check `path` as check_output_dir does and hold it for the block's whole work, so a refusal
    comes before the work and a second run is refused meanwhile; when the block ends (written,
    refused or interrupted) the output is free again, unless a caller held it already."""
    claimed_before = os.path.abspath(path) in _CLAIMS  # a caller's claim stays the caller's
    check_output_dir(path, marker, claim=True, inputs=inputs)
    try:
        yield
    finally:
        if not claimed_before:
            release_output(path)


@contextlib.contextmanager
def atomic_directory(
    path: str, marker: str = MARKER, exclusive: bool = True, inputs: Iterable[str | os.PathLike | None] = ()
) -> Iterator[str]:
    """Yield a staging directory that becomes `path` only if the block succeeds.

    An existing `path` is replaced only if it is empty, or holds `marker` (an earlier goodnet
    result) and nothing but the files goodnet listed writing there, unchanged: a typo cannot wipe
    an unrelated directory, and a file a user put into an earlier result is never deleted. An
    output that is, holds or sits inside one of `inputs` is refused. `exclusive`: refuse while
    another run writes `path` (caches pass False: two runs building the same entry write the same
    thing)."""
    path = os.path.abspath(path)
    check_output_dir(path, marker, claim=exclusive, inputs=inputs)
    parent, base = os.path.split(path)
    remove_stale_staging(path)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = make_staging(parent, base, "partial")
    except OSError as exc:
        release_output(path)
        raise OutputError(f"{shown_path(path)}: cannot create output directory ({exc.strerror})") from None
    try:
        respect_umask(staging, directory=True)
        yield staging
        os.remove(os.path.join(staging, STAGING_MARK))  # an output, from here on: not staging to clean up
        record_owned_files(staging)
        if os.path.exists(path):
            check_output_dir(path, marker)  # nothing foreign arrived while the work ran
            old = make_staging(parent, base, "old")
            os.rename(path, os.path.join(old, "previous"))
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
    except OSError as exc:  # a full disk, a read-only mount, a quota: one line, nothing left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{shown_path(path)}: cannot write the output ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if exclusive:
            release_output(path)


def write_file_atomically(path: str, write, replace: bool = False) -> None:
    """Call `write(tmp)` on a hidden file next to `path`, then rename it into place; on any
    failure nothing is left behind. An existing `path` is refused (goodnet cannot tell a file it
    wrote from a user's) unless `replace` (goodnet's own bookkeeping files)."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{shown_path(path)}: is a directory; name the file to write")
    if os.path.lexists(path) and not replace:
        raise OutputError(
            f"{shown_path(path)}: exists; goodnet never overwrites a file: remove it or name another output"
        )
    if not os.path.isdir(directory):
        raise OutputError(f"{shown_path(path)}: the folder {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".goodnet-", suffix=os.path.splitext(path)[1], dir=directory)
    except OSError as exc:
        raise OutputError(f"{shown_path(path)}: cannot write ({exc.strerror})") from None
    os.close(fd)
    try:
        write(tmp)
        respect_umask(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a read-only mount: one line, nothing left behind
        raise OutputError(f"{shown_path(path)}: cannot write ({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
