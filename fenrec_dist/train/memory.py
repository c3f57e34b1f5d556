"""Give freed heap memory back to the operating system between training phases.

PyTorch's CPU tensors come from glibc ``malloc``. A FENRec step allocates and frees
hundreds of tensors of varying shapes (length chunks, 512 x 512 contrast blocks, the
B x |items| logits), and glibc keeps the freed pages of its heap: the process's resident
size climbed by about 0.5 GiB over the first hundred steps (observed on Beauty) and the
phases' peaks (the clustering pass, evaluation) stacked on top of it. ``malloc_trim(0)`` returns every free
page (also those in the middle of the heap, through ``madvise``) without moving live
memory. It is called at phase boundaries and every ``train.trim_every`` steps; trimming
every step cost about 40% of the step here (the pages are faulted back in); every 25
steps (the default since token packing, whose step-to-step shapes vary more) cost nothing
that epoch timings here could separate from their noise (train 105.4 s against 106.3 s at
100) and kept the epoch's peak at 1,338 MiB against 1,452-1,710 MiB at 100.

On a platform without glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


@functools.lru_cache(maxsize=1)
def _malloc_trim():  # type: ignore[no-untyped-def]
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS. True if the C library could do it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def resident_mib() -> float:
    """This process's current resident set size in MiB (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
