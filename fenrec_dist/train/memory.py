"""Give freed heap memory back to the operating system between training phases.

PyTorch's CPU tensors come from glibc ``malloc``. A FENRec step allocates and frees
hundreds of tensors of varying shapes (length chunks, 512 x 512 contrast blocks, the
B x |items| logits), and glibc keeps the freed pages of its heap: the process's resident
size climbed by about 0.5 GiB over the first hundred steps (observed on Beauty) and the
phases' peaks (the clustering pass, evaluation) stacked on top of it. ``malloc_trim(0)`` returns every free
page (also those in the middle of the heap, through ``madvise``) without moving live
memory. It is called at phase boundaries and, during training, by ``HeapTrimmer``: every
``train.trim_every`` steps and/or whenever the resident size has grown by
``train.trim_growth_mib`` since the last trim.

Every trimmed page that the heap needs again comes back as a page fault, about 4 us of system
time each on this KVM machine (``bench/bench_trim.py``, 300 Beauty steps: 20.4 ms of system
time a step at 4,900 faults a step when trimming every 25 steps; 3.6 ms at 650 without
trimming). Trimming every step cost about 40% of the step. A growth bound trims only when the
heap has actually grown (7-8 times in those 300 steps): 3,700 faults a step, the same or a
lower peak than every 25 steps.

On a platform without glibc (macOS, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass, field


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


_peak_before_mib = 0.0  # the highest peak of the phases before the last ``start_phase``


def _vm_hwm_mib() -> float | None:
    """The kernel's peak-RSS mark (VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size so far in MiB, over every phase (the marks that
    ``start_phase`` reset included)."""
    now = _vm_hwm_mib()
    if now is None:
        import resource

        now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return max(_peak_before_mib, now)


def start_phase() -> bool:
    """Start measuring a phase's own peak: the process's peak so far is kept for
    ``peak_rss_mib`` and the kernel's mark is reset to the current size (Linux: ``5`` into
    ``/proc/self/clear_refs``). False where it cannot be reset (``phase_peak_mib`` then
    returns NaN)."""
    global _peak_before_mib, _phase_ok
    _peak_before_mib = peak_rss_mib()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _phase_ok = True
    except OSError:
        _phase_ok = False
    return _phase_ok


_phase_ok = False


def phase_peak_mib() -> float:
    """The peak resident size since the last ``start_phase``, MiB (NaN where unavailable)."""
    now = _vm_hwm_mib() if _phase_ok else None
    return float("nan") if now is None else now


@dataclass
class HeapTrimmer:
    """When to trim during a training epoch: call ``after_step(n)`` after the n-th step (1-based).

    every: trim every this many steps (0 = never on a count).
    growth_mib: trim when the resident size exceeds the size right after the last trim (or at
        ``start``) by this many MiB (0 = never on growth). Measured after each trim, so memory
        that stays live (not a free hole) raises the bar instead of triggering a trim per step.
    """

    every: int = 0
    growth_mib: float = 0.0
    trims: int = 0
    _base: float = field(default=float("nan"), repr=False)

    def start(self) -> None:
        """Take the current resident size as the reference (call before the first step)."""
        self._base = resident_mib()

    def after_step(self, n: int) -> bool:
        """Trim if a rule says so; True if it did."""
        due = self.every > 0 and n % self.every == 0
        if not due and self.growth_mib > 0:
            rss = resident_mib()
            if self._base != self._base:  # NaN: start() not called
                self._base = rss
            due = rss > self._base + self.growth_mib
        if not due:
            return False
        release_free_memory()
        self.trims += 1
        if self.growth_mib > 0:
            self._base = resident_mib()
        return True
