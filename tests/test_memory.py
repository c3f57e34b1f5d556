"""Returning freed heap pages to the OS (train/memory.py) and where training does it."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.train import loop
from fenrec_dist.train.memory import release_free_memory, resident_mib
from fenrec_dist.train.single import train_single

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
    monkeypatch.setattr(loop, "release_free_memory", lambda: calls.append("step") or True)
    import fenrec_dist.train.single as single

    monkeypatch.setattr(single, "release_free_memory", lambda: calls.append("phase") or True)
    cfg = load_config(None, tiny_overrides(tiny_data, train__epochs=1, train__trim_every=3))
    train_single(cfg, tmp_path / "run", log=lambda *_: None)
    from fenrec_dist.data.dataset import load_prepared
    from fenrec_dist.train.batches import epoch_batches, epoch_rng

    data = load_prepared(cfg.data.path, max_len=cfg.data.max_len)
    nb = len(epoch_batches(data.train.input_len, cfg.train.batch_size, epoch_rng(cfg.train.seed, 0),
                           cfg.train.length_grouping, cfg.train.length_bucket_batches))
    assert calls.count("step") == nb // 3
    assert calls.count("phase") == 3  # after clustering, training and validation
