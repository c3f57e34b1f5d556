"""Returning freed heap pages to the OS (train/memory.py) and where training does it."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.train import memory
from fenrec_dist.train.memory import HeapTrimmer, release_free_memory, resident_mib
from fenrec_dist.train.local import train_local

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                           reason="malloc_trim is glibc's")


@glibc
def test_release_gives_back_a_fragmented_heap():
    """Freed 96 KiB blocks between live ones (holes, not the heap's top) stay resident until trimmed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 96 * 1024  # under glibc's mmap threshold: the blocks come from the heap
    blocks = []
    for _ in range(2048):  # 192 MiB, touched so that it is resident
        p = libc.malloc(size)
        libc.memset(p, 1, size)
        blocks.append(p)
    for p in blocks[0::2]:  # 96 MiB of holes, each pinned by a live neighbour
        libc.free(p)
    held = resident_mib()
    assert release_free_memory() is True
    after = resident_mib()
    for p in blocks[1::2]:
        libc.free(p)
    assert held - after > 80  # the holes' pages went back to the OS


def test_train_epoch_trims_every_n_steps_and_between_phases(tiny_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append("step") or True)
    import fenrec_dist.train.trainer as single

    monkeypatch.setattr(single, "release_free_memory", lambda: calls.append("phase") or True)
    cfg = load_config(None, tiny_overrides(tiny_data, train__epochs=1, train__trim_every=3,
                                           train__trim_growth_mib=0))
    train_local(cfg, tmp_path / "run", log=lambda *_: None)
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.train.batches import epoch_batches, epoch_rng

    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len)
    nb = len(epoch_batches(data.train.input_len, cfg.train.batch_size, epoch_rng(cfg.train.seed, 0),
                           cfg.train.length_grouping, cfg.train.length_bucket_batches))
    assert calls.count("step") == nb // 3
    assert calls.count("phase") == 3  # after clustering, training and validation


def test_heap_trimmer_every_n_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    t = HeapTrimmer(every=3)
    t.start()
    done = [n for n in range(1, 11) if t.after_step(n)]
    assert done == [3, 6, 9] and t.trims == 3 and len(calls) == 3


def test_heap_trimmer_growth_rebases_after_each_trim(monkeypatch):
    """Trims when the resident size exceeds the last post-trim size by growth_mib; memory that
    stays live after a trim raises the bar instead of causing a trim per step."""
    rss = iter([100.0,            # start
                150.0, 199.0,     # steps 1-2: under 100 + 100
                201.0, 180.0,     # step 3 over the bar: trim, 180 stays live -> bar 280
                250.0, 279.0,     # steps 4-5: under 280
                281.0, 120.0,     # step 6: trim, back to 120 -> bar 220
                219.0])           # step 7: under
    monkeypatch.setattr(memory, "resident_mib", lambda: next(rss))
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    t = HeapTrimmer(growth_mib=100.0)
    t.start()
    done = [n for n in range(1, 8) if t.after_step(n)]
    assert done == [3, 6] and t.trims == 2 and len(calls) == 2


def test_train_epoch_reports_growth_trims(tiny_data, tmp_path, monkeypatch):
    """train.trim_growth_mib reaches the epoch loop: a bar of 0.001 MiB trims after nearly every step
    (any page the step touched), and the count is the epoch's ``trims``."""
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    seq = iter(range(10**6))
    monkeypatch.setattr(memory, "resident_mib", lambda: float(next(seq)))  # grows 1 MiB a reading
    cfg = load_config(None, tiny_overrides(tiny_data, train__epochs=1, train__trim_every=0,
                                           train__trim_growth_mib=1.5))
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.train.batches import epoch_batches, epoch_rng

    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len)
    nb = len(epoch_batches(data.train.input_len, cfg.train.batch_size, epoch_rng(cfg.train.seed, 0),
                           cfg.train.length_grouping, cfg.train.length_bucket_batches))
    train_local(cfg, tmp_path / "run", log=lambda *_: None)
    # readings: start r0; each step reads once, r_k - base > 1.5 happens every second step after a
    # trim re-reads the base (one reading), so a trim every 2nd step
    assert len(calls) == nb // 2


def test_negative_trim_settings_are_rejected():
    from fenrec_dist.config import ConfigError

    for key in ("train.trim_every=-1", "train.trim_growth_mib=-5"):
        with pytest.raises(ConfigError, match=rf"{key.split('=')[0]}: must be >= 0"):
            load_config(None, [key])


def test_phase_peaks_measure_each_phase_and_the_overall_peak_keeps_them():
    """``start_phase`` resets the kernel's peak mark: a phase that allocates 200 MiB shows it,
    the next (smaller) phase does not, and ``peak_rss_mib`` still holds the larger peak."""
    import numpy as np
    import pytest

    from fenrec_dist.train import memory

    if not memory.start_phase():
        pytest.skip("no /proc/self/clear_refs here")
    base = memory.phase_peak_mib()
    a = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    big = memory.phase_peak_mib()
    del a
    memory.release_free_memory()
    memory.start_phase()
    b = np.ones(20 * 2**20 // 8)
    small = memory.phase_peak_mib()
    del b
    assert big - base >= 190
    assert small < big - 150
    assert memory.peak_rss_mib() >= big - 1  # the kernel counts RSS in per-CPU batches: within a few pages
