"""goodnet's processes keep the memory PyTorch frees for reuse (glibc), so a training step does not
fault its buffers in again every time; the user's own glibc malloc settings stand. Counted in page
faults of a fresh interpreter, never in time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from goodnet.grid import GridCell, GridRunner, run_grid

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
pytestmark = pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")

# a 64 MB buffer allocated, written and freed ten times, as a training step does with its
# activations: the page faults counted over the ten, after a first one has grown the heap
PROGRAM = """
import ctypes, resource
from goodnet.allocator import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def step():
    buffer = libc.malloc(64 << 20)
    ctypes.memset(buffer, 1, 64 << 20)
    libc.free(buffer)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**environment) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env={**env, **environment}, capture_output=True, text=True, check=True
    )
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = _faults()
    assert applied
    # the user's own setting stands, and the buffers are mapped and faulted in anew each time
    # (64 MB is above glibc's largest automatic threshold): every page, ten times
    declined, default = _faults(MALLOC_ARENA_MAX="4")
    assert not declined
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert default >= 10 * pages * 0.9 and kept < default / 20


def _allocator_applied() -> dict:
    from goodnet import allocator

    return {"applied": allocator._applied}  # None: never asked in this process


def test_pool_workers_keep_freed_memory(tmp_path):
    [result] = run_grid([GridCell("one", _allocator_applied)], str(tmp_path), GridRunner(workers=2))
    assert result == {"applied": True}
