"""How the C library's allocator treats the memory PyTorch frees on the CPU (Linux with glibc).

A training loop on the CPU allocates and frees the same large buffers at every step (activations,
gradients, a batch). With glibc's defaults, blocks above its mmap threshold are mapped for each
allocation and unmapped when freed, and the top of the heap is trimmed back to the system, so the
next step faults every page in again, zeroed by the kernel. On goodnet's small models that is
up to two fifths of a run spent in the kernel, and it varies from run to run with how the heap
happens to lie. `keep_freed_memory` has glibc take every block from its heap and keep what is
freed there for reuse (no per-block mappings, no trimming below KEEP_BYTES). No number changes:
the arithmetic is the same, only where its buffers live. The price is memory: a process keeps its
peak heap, up to KEEP_BYTES of it unused, until it ends.

goodnet's command line and its pool workers call it when they start; a program using goodnet as
a library may call it too. It does nothing off glibc, and nothing where the user has set glibc's
own malloc settings (a MALLOC_*_ variable or GLIBC_TUNABLES with glibc.malloc), which then stand.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30  # freed memory at the top of the heap kept for reuse before any goes back
TOP_PAD_BYTES = 64 << 20  # each time the heap grows, it grows by this much more (fewer system calls)
_USER_SETTINGS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
)
_applied: bool | None = None  # None: not tried in this process yet


def user_malloc_settings() -> list[str]:
    """The glibc malloc settings the environment gives, which goodnet leaves as they are."""
    given = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        given.append("GLIBC_TUNABLES")
    return given


def keep_freed_memory() -> bool:
    """Have glibc serve every allocation from its heap and keep freed memory for reuse (see the
    module's docstring); True when this process's allocator now works so. Safe to call again."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or not _glibc() or user_malloc_settings():
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 for a setting taken
    _applied = all(
        [mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES), mallopt(_M_TOP_PAD, TOP_PAD_BYTES)]
    )
    return _applied


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


__all__ = ["KEEP_BYTES", "keep_freed_memory", "user_malloc_settings"]
