"""Running a grid of independent cells: here in order, in a process pool, or as Ray tasks.

`compare` (BadNet x repair) and `batch` (one defense per model) are grids. Each cell is a plain
function of JSON-able arguments returning a JSON-able result; the runner writes every result to
its own file the moment the cell finishes, so a grid that is interrupted (Ctrl-C, a lost node, a
power cut) resumes where it stopped: a cell whose file exists, written for the same arguments, is
not run again. A cell's files (`GridCell.inputs`) count by content: one whose bytes changed runs
again. Only results are kept, never refusals, so a cell refused for a passing reason (a full
disk) runs again next time. Pool workers die with the process that started them (a killed grid
leaves none behind), and an interrupted grid (Ctrl-C, SIGTERM) keeps every finished cell and
kills its running ones at once instead of waiting for them. Cells run with a fixed number of
PyTorch threads (`threads`), whichever runner runs them, because PyTorch's CPU kernels add up in
an order that depends on the thread count: with the same `threads`, sequential, pool and Ray runs
give the same numbers to the last digit.
Ray (an optional extra, `pip install goodnet[ray]`) is imported only when asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from . import errors
from .allocator import keep_freed_memory
from .devices import compute_device, using_device
from .errors import GoodnetError, SettingsError
from .io.dataset_readers import data_sha256, read_from_several_files
from .io.output_dir import release_output, write_file_atomically
from .progress import eta, format_duration

CELL_FORMAT = 1
CELL_ERROR = "__goodnet_error__"
MAX_THREADS = 1024
RAY_CONNECT_SECONDS = 10.0
POOL_STOP_SECONDS = 10.0  # at most this long for a stopped pool to let go of its queues
PARENT_POLL_SECONDS = 1.0  # how often a pool worker checks that the process that started it still runs
_IDENTITIES: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> content digest


def machine_cores() -> int:
    """Cores this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def file_identity(path: str) -> str | None:
    """The sha256 of a file's bytes, or of all the files data is read from (data_sha256; None: nothing
    readable), so a cell follows what its files
    hold, not their names or dates: a file rebuilt or edited in place, even to the same size and
    modification time, counts as new. Digests are remembered for the file's (path, inode, size,
    modification and change times), so asking again about an unchanged file costs one stat (a
    folder or a .npy pair is digested each time)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if read_from_several_files(path):
        # read from several files (an image folder; a .npy pair's labels beside it), which this one
        # file's times do not follow: digested every time
        try:
            return f"sha256:{data_sha256(path)}"
        except (OSError, ValueError, GoodnetError):
            return None
    key = (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    known = _IDENTITIES.get(key)
    if known is not None:
        return known
    try:
        _IDENTITIES[key] = identity = f"sha256:{data_sha256(path)}"
    except (OSError, ValueError):
        return None
    return identity


@dataclass(frozen=True)
class GridCell:
    """One unit of a grid: `task(**arguments)` (a module-level function, so pool and Ray workers can
    import it). `key` names the cell in progress lines and in its result file. `inputs`: the files
    the cell reads, whose content (not name or date) is part of its fingerprint, so a cell whose
    files changed runs again. `cost`: a rough estimate of its run time in any unit, never
    fingerprinted; runners with several workers start the costliest cells first, so that no long
    cell is left running alone at the end (results keep the order of the cells)."""

    key: str
    task: Callable[..., dict[str, Any]]
    arguments: dict[str, Any] = field(default_factory=dict)
    presentation: dict[str, Any] = field(default_factory=dict)  # passed too, never fingerprinted (progress bars)
    inputs: tuple[str, ...] = ()
    cost: float = 1.0

    def call_arguments(self) -> dict[str, Any]:
        return {**self.arguments, **self.presentation}

    def identities(self) -> dict[str, str | None]:
        """Each input file's content digest now (None: missing)."""
        return {path: file_identity(path) for path in self.inputs}

    def fingerprint(
        self, context: dict[str, Any] | None = None, identities: dict[str, str | None] | None = None
    ) -> str:
        """A digest of what the cell computes: its task, its arguments, the content of its input
        files (`identities`, else read now) and how it runs (`context`: threads per cell, device,
        goodnet's version), so a cell is reused only when it would give the same numbers."""
        described = {
            "task": f"{self.task.__module__}.{self.task.__qualname__}",
            "arguments": self.arguments,
            "context": context or {},
            "format": CELL_FORMAT,
        }
        if self.inputs:
            described["inputs"] = self.identities() if identities is None else identities
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def filename(self, context: dict[str, Any] | None = None, identities: dict[str, str | None] | None = None) -> str:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.key)[:80]
        return f"{safe}-{self.fingerprint(context, identities)}.json"


@dataclass(frozen=True)
class GridRunner:
    """How a grid runs. workers: cells at once on this machine (1: in this process, in order; more:
    a process pool); threads: PyTorch threads per cell (default: the machine's cores / workers, or 1
    under Ray); ray: run the cells as Ray tasks, on the cluster at this address ('' or 'auto':
    a local Ray, or the cluster `ray start` made on this machine); ray_init: extra ray.init arguments
    (tests start a local Ray with num_cpus=2)."""

    workers: int = 1
    threads: int | None = None
    ray: str | None = None
    ray_init: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise SettingsError(f"--workers must be a whole number >= 1, not {self.workers!r}")
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or not 1 <= self.threads <= MAX_THREADS
        ):
            raise SettingsError(f"--threads must be a whole number from 1 to {MAX_THREADS}, not {self.threads!r}")
        if self.ray is not None and self.workers != 1:
            raise SettingsError("--workers is for the local runner; with --ray, Ray decides how many cells run at once")

    @property
    def cell_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        return 1 if self.ray is not None else max(1, machine_cores() // self.workers)

    def describe(self) -> dict[str, Any]:
        kind = "ray" if self.ray is not None else ("sequential" if self.workers == 1 else "process pool")
        return {
            "runner": kind,
            "workers": self.workers if self.ray is None else None,
            "threads_per_cell": self.cell_threads,
            "ray_address": self.ray or None,
            "device": str(compute_device()),
        }


def run_cell(
    task: Callable[..., dict[str, Any]], arguments: dict[str, Any], threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """Run one cell with `threads` PyTorch threads (restored afterwards, for in-process runs) on
    `device`. A goodnet error comes back as a value (it is re-raised by the runner as the same
    one-line error), so a worker never prints a traceback for a refusal."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with using_device(device):
            return task(**arguments)
    except GoodnetError as exc:
        return {CELL_ERROR: {"type": type(exc).__name__, "message": str(exc)}}
    finally:
        torch.set_num_threads(before)


def _raise_cell_error(cell: GridCell, result: dict[str, Any]) -> None:
    if isinstance(result, dict) and CELL_ERROR in result:
        error = result[CELL_ERROR]
        cls = getattr(errors, str(error.get("type")), None)
        cls = cls if isinstance(cls, type) and issubclass(cls, GoodnetError) else GoodnetError
        raise cls(f"{cell.key}: {error.get('message')}")


def _dump_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def run_context(runner: GridRunner) -> dict[str, Any]:
    """What, besides its arguments, decides a cell's numbers."""
    from . import __version__

    device = compute_device()
    return {"threads": runner.cell_threads, "device": device.type, "goodnet": __version__}


def finished(state_dir: str, cell: GridCell, context: dict[str, Any]) -> dict[str, Any] | None:
    """The cell's kept result, if it finished before with the same arguments and `context`
    (`run_context` of the runner)."""
    path = os.path.join(state_dir, cell.filename(context))
    try:
        with open(path) as f:
            stored = json.load(f)
        if stored.get("fingerprint") == cell.fingerprint(context) and stored.get("key") == cell.key:
            return stored["result"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or damaged: run it again
    return None


def forget(state_dir: str, cell: GridCell, context: dict[str, Any]) -> None:
    """Drop a kept result, so the cell runs again (e.g. its output folder is gone)."""
    try:
        os.remove(os.path.join(state_dir, cell.filename(context)))
    except OSError:
        pass


class _Progress:
    """'[3/12 cells, 4 min 2 s, ETA 12 min 6 s] key: summary' on stderr, one line per finished cell.
    The ETA plays the rest of the grid forward: the cells start in `order` (the runner's) on
    `workers` workers, each taking its cost times the pace so far (seconds per unit of cost over
    the cells finished in this run, never those resumed), the running ones counted from when
    they started. The costliest cells run first, so a count of cells, or costs without the
    cells still running, would make the rest look far longer. With `workers` unknown (Ray decides),
    the pace is the time so far over the cost done."""

    def __init__(self, label: str | None, total: int, resumed: int, order: Sequence[GridCell] = (), workers=None):
        self.label, self.total, self.done, self.resumed = label, total, resumed, resumed
        self.costs = {c.key: max(float(c.cost), 0.0) for c in order}
        self.cost_total = sum(self.costs.values())
        self.cost_done = 0.0
        self.workers = workers
        self.waiting = [c.key for c in order]  # not started yet, in the order the runner starts them
        self.running: dict[str, float] = {}  # key: when it started
        self.spent = self.cost_timed = 0.0  # seconds and cost of the cells finished since they were seen start
        self.start = time.perf_counter()
        self._start_next(self.start)
        if label and resumed:
            print(f"{label}: resuming, {resumed} of {total} cells already done", file=sys.stderr, flush=True)

    def _start_next(self, now: float) -> None:
        while self.workers is not None and self.waiting and len(self.running) < self.workers:
            self.running[self.waiting.pop(0)] = now

    def finished(self, cell: GridCell, result: dict[str, Any], summary: Callable[[dict], str] | None) -> None:
        now = time.perf_counter()
        self.done += 1
        cost = self.costs.get(cell.key, 0.0)
        self.cost_done += cost
        started = self.running.pop(cell.key, None)
        if cell.key in self.waiting:  # finished before a worker was seen free for it
            self.waiting.remove(cell.key)
        elif started is not None and cost > 0:
            self.spent += now - started
            self.cost_timed += cost
        self._start_next(now)
        if not self.label:
            return
        text = summary(result) if summary is not None else ""
        print(
            f"[{self.done}/{self.total} cells, {format_duration(now - self.start)}, {self._eta(now)}] {cell.key}"
            f"{': ' + text if text else ''}",
            file=sys.stderr,
            flush=True,
        )

    def _eta(self, now: float) -> str:
        if not self.waiting and not self.running and self.workers is not None:
            return "done"
        if self.workers is None or self.cost_timed <= 0:  # the whole time so far over the cost done
            elapsed = now - self.start
            if 0 < self.cost_done < self.cost_total:
                return eta(elapsed, self.cost_done, self.cost_total)
            return eta(elapsed, self.done - self.resumed, self.total - self.resumed)
        pace = self.spent / self.cost_timed
        free = [max(now, started + self.costs[key] * pace) for key, started in self.running.items()]
        free += [now] * (self.workers - len(free))
        heapq.heapify(free)
        end = max(free)
        for key in self.waiting:  # each next cell on the first worker free
            finish = heapq.heappop(free) + self.costs[key] * pace
            heapq.heappush(free, finish)
            end = max(end, finish)
        return "ETA " + format_duration(end - now)


def run_grid(
    cells: Sequence[GridCell],
    state_dir: str,
    runner: GridRunner = GridRunner(),
    label: str | None = None,
    summary: Callable[[dict], str] | None = None,
    keep: Callable[[dict], bool] | None = None,
) -> list[dict[str, Any]]:
    """Every cell's result, in the order of `cells`; finished cells are read back from `state_dir`,
    the others run by `runner` and written there as each finishes. `label`: progress lines on
    stderr (None: silent); `summary(result)`: the text after each cell's key; `keep(result)`:
    whether a result is kept for the next run (None: all), so a refusal a task returns as a value
    is returned but not remembered, and its cell runs again next time. A cell whose input files
    changed while it ran is not kept either: what it read is not known."""
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("grid cells need distinct keys")
    os.makedirs(state_dir, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    context = run_context(runner)
    for cell in cells:
        found = finished(state_dir, cell, context)
        if found is not None:
            results[cell.key] = found
    todo = [c for c in cells if c.key not in results]
    planned = {c.key: c.identities() for c in todo}  # the input files as the cells start
    sequential = runner.workers == 1 and runner.ray is None
    order = todo if sequential else sorted(todo, key=lambda c: -c.cost)  # stable: equal costs keep their order
    workers = None if runner.ray is not None else min(runner.workers, max(len(todo), 1))
    progress = _Progress(label, len(cells), len(cells) - len(todo), order, workers)

    def record(cell: GridCell, result: dict[str, Any]) -> None:
        _raise_cell_error(cell, result)  # nothing written: the cell runs again next time
        identities = cell.identities()
        unchanged = all(planned[cell.key].get(path) in (None, now) for path, now in identities.items())
        if unchanged and (keep is None or keep(result)):  # a missing file the cell made counts as it is now
            kept = {
                "key": cell.key,
                "fingerprint": cell.fingerprint(context, identities),
                "context": context,
                "arguments": json.loads(json.dumps(cell.arguments, default=str)),
                "inputs": identities,
                "runner": runner.describe(),
                "result": result,
            }
            write_file_atomically(
                os.path.join(state_dir, cell.filename(context, identities)),
                lambda tmp: _dump_json(tmp, kept),
                replace=True,
            )
        results[cell.key] = result
        progress.finished(cell, result, summary)

    threads, device = runner.cell_threads, str(compute_device())
    if not todo:
        pass
    elif sequential:
        for cell in todo:
            record(cell, run_cell(cell.task, cell.call_arguments(), threads, device))
    elif runner.ray is not None:
        _run_on_ray(order, runner, threads, device, record)
    else:
        _run_in_pool(order, runner.workers, threads, device, record)
    return [results[c.key] for c in cells]


def _die_with(parent: int) -> None:
    """End this process as soon as `parent` is gone: on Linux the kernel kills it (the parent-death
    signal), everywhere a thread checks every PARENT_POLL_SECONDS whether this process was handed
    to another parent. A worker left behind would hold memory, the output folders of its cell, and
    compute a result nobody reads."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc prctl (e.g. a static build): the thread still watches
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(PARENT_POLL_SECONDS)

    if os.getppid() != parent:  # gone before the signal was set
        os._exit(1)
    threading.Thread(target=watch, name="goodnet-parent-watch", daemon=True).start()


def _start_worker(parent: int) -> None:
    """A pool worker's first step: die with `parent`, let go of any output lock a fork handed down
    (the lock must end with the run that took it), and leave Ctrl-C to the parent, which stops the
    pool itself (the terminal sends it to every process of the group). Progress bars (off in
    workers) get a plain thread lock: tqdm's default is a named semaphore, which a worker killed
    by its stopping grid would leave to multiprocessing's tracker, and its warning to the user."""
    release_output(inherited=True)
    keep_freed_memory()
    _die_with(parent)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        import tqdm

        tqdm.tqdm.set_lock(threading.RLock())


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop `pool` now: queued cells are cancelled and the workers killed with the cells they run
    (an interrupted grid keeps only finished cells, so waiting for the running ones would only
    delay the stop by as long as a cell takes)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:  # it notices the workers gone, fails their cells and lets go of the pool's queues
        manager.join(timeout=POOL_STOP_SECONDS)


def _keep_finished(pending: dict, record) -> None:
    """Record every cell whose result already came back, before the pool is stopped."""
    for future, cell in list(pending.items()):
        if future.done() and not future.cancelled():
            with contextlib.suppress(BaseException):  # a refused cell or a repeated interrupt: go on stopping
                record(cell, future.result())


def _run_in_pool(todo: Sequence[GridCell], workers: int, threads: int, device: str, record) -> None:
    # spawn: a fresh interpreter per worker (forking a process that holds PyTorch's thread pools is unsafe)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(),),
    )
    pending: dict = {}
    try:
        for c in todo:
            pending[pool.submit(run_cell, c.task, c.call_arguments(), threads, device)] = c
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            failure = None
            for future in done:  # keep every cell that finished, then raise the first failure
                try:
                    record(pending[future], future.result())
                except BrokenProcessPool:  # a worker was killed from outside (the out-of-memory killer?)
                    failure = failure or GoodnetError(
                        f"{pending[future].key}: a worker process ended abruptly (killed, or out of memory?); "
                        f"the finished cells are kept: run again to go on, with fewer --workers if memory ran short"
                    )
                except Exception as exc:  # noqa: BLE001 - re-raised below
                    failure = failure or exc
                del pending[future]  # not reached on an interrupt: _keep_finished records it
            if failure is not None:
                raise failure
    except BaseException:
        _keep_finished(pending, record)
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def require_ray():
    """The `ray` module, or a one-line error saying how to get it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SettingsError("--ray needs Ray: pip install 'goodnet[ray]' (or pip install ray)") from None
    return ray


def check_ray_address(address: str | None) -> None:
    """Before any work: Ray is installed, and a cluster address (not a local Ray) answers."""
    if address is None:
        return
    require_ray()
    if address not in ("", "auto", "local"):
        _check_reachable(address)


def _check_reachable(address: str) -> None:
    """A cluster address must answer within RAY_CONNECT_SECONDS: Ray itself retries for minutes."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise SettingsError(f"--ray {address}: not an address (HOST:PORT, or ray://HOST:PORT)")
    try:
        with socket.create_connection((host, port), timeout=RAY_CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise SettingsError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _run_on_ray(todo: Sequence[GridCell], runner: GridRunner, threads: int, device: str, record) -> None:
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here and runner.ray not in ("", "auto", "local"):
        _check_reachable(runner.ray)
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **runner.ray_init}
        address = runner.ray or None
        try:
            ray.init(address=address, **options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... name it in one line
            raise SettingsError(
                f"--ray {runner.ray or '(local)'}: could not start or reach Ray "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
    try:
        gpus = 1 if device.startswith("cuda") else 0  # a cell on a GPU holds one, which Ray makes its "cuda"
        task_device = "cuda" if gpus else device
        remote = ray.remote(run_cell).options(num_cpus=threads, num_gpus=gpus, max_retries=1)
        pending = {remote.remote(c.task, c.call_arguments(), threads, task_device): c for c in todo}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    record(pending.pop(ref), ray.get(ref))
        except BaseException:
            ready = []
            with contextlib.suppress(Exception):
                ready = ray.wait(list(pending), num_returns=len(pending), timeout=0)[0] if pending else []
            for ref in ready:  # cells that finished while the grid stopped are kept too
                with contextlib.suppress(BaseException):
                    record(pending[ref], ray.get(ref))
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["GridCell", "GridRunner", "check_ray_address", "machine_cores", "require_ray", "run_cell", "run_grid"]
