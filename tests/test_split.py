"""train.split_encoder: the step's rows encoded in two groups on two threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.model.dropout import dropout, keep_mask, mask_generator
from fenrec_dist.train.report import read_metrics
from fenrec_dist.train.single import train_single

QUIET = dict(log=lambda *_: None)


class Interrupt(Exception):
    pass


def _cfg(data, **kw):
    return load_config(None, tiny_overrides(data, **kw))


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_split_training_equals_plain_training_without_dropout(tiny_data, tmp_path):
    """Dropout off: the split step is the plain step up to the order of the gradient sums,
    so two epochs (warm-up and hard negatives) give the same losses, metrics and weights."""
    off = dict(model__dropout=0.0, model__attn_dropout=0.0, train__epochs=2, train__threads=2)
    plain = train_single(_cfg(tiny_data, **off), tmp_path / "plain", **QUIET)
    split = train_single(_cfg(tiny_data, train__split_encoder=True, **off), tmp_path / "split", **QUIET)
    for a, b in zip(read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "split"), strict=True):
        for k in a["loss"]:
            assert b["loss"][k] == pytest.approx(a["loss"][k], rel=1e-5, abs=1e-6), k
        for k in a["valid"]:
            assert b["valid"][k] == pytest.approx(a["valid"][k], abs=1e-6), k
    assert split["test"] == pytest.approx(plain["test"], abs=1e-6)
    wa, wb = _weights(tmp_path / "plain"), _weights(tmp_path / "split")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k


def test_split_training_with_dropout_repeats_and_resumes_exactly(tiny_data, tmp_path):
    cfg = dict(train__split_encoder=True, train__threads=2)
    full = train_single(_cfg(tiny_data, **cfg), tmp_path / "full", **QUIET)
    again = train_single(_cfg(tiny_data, **cfg), tmp_path / "again", **QUIET)
    recs = read_metrics(tmp_path / "full")
    same = lambda r: (r["epoch"], r["loss"], r["valid"])  # noqa: E731  (not the timings)
    assert [same(r) for r in recs] == [same(r) for r in read_metrics(tmp_path / "again")]
    assert again == full

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_single(_cfg(tiny_data, **cfg), tmp_path / "cut", log=stop_after_epoch_1)
    resumed = train_single(_cfg(tiny_data, **cfg), tmp_path / "cut", resume=True, **QUIET)
    for a, b in zip(recs, read_metrics(tmp_path / "cut"), strict=True):  # bit for bit
        assert a["loss"] == b["loss"] and a["valid"] == b["valid"]
    assert resumed == full
    # dropout masks of the split differ from a plain run's (per-group generators)
    plain = train_single(_cfg(tiny_data, train__threads=2), tmp_path / "plain", **QUIET)
    assert read_metrics(tmp_path / "plain")[0]["loss"] != recs[0]["loss"]
    assert plain["test"] != full["test"]
    # the encoding threads end with the run
    assert not [t for t in threading.enumerate() if t.name.startswith("fenrec-encode")]


def test_mask_generator_is_per_thread_and_leaves_the_default_generator_alone():
    ones = torch.ones(1000)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    other: list[torch.Tensor] = []
    with mask_generator(torch.Generator().manual_seed(9)):
        inside = dropout(ones, 0.5, True)
        t = threading.Thread(target=lambda: other.append(dropout(ones, 0.5, True)))  # not this block's
        t.start()
        t.join()
    after = torch.get_rng_state()
    assert torch.equal(inside, keep_mask((1000,), 0.5, torch.Generator().manual_seed(9)) * 2.0)
    # the other thread drew from the default generator, as outside the block
    assert torch.equal(other[0], keep_mask((1000,), 0.5, torch.Generator().manual_seed(5)) * 2.0)
    assert not torch.equal(after, before)
    torch.set_rng_state(before)
    with mask_generator(torch.Generator().manual_seed(9)):
        dropout(ones, 0.5, True)
    assert torch.equal(torch.get_rng_state(), before)  # the block drew nothing from it


def test_split_groups_cover_every_row_once_with_an_equal_length_mix():
    from fenrec_dist.train.split import SplitEncoder

    lengths = np.array([5, 1, 3, 3, 2, 5, 4, 1, 2])
    ids = np.zeros((9, 6), dtype=np.int64)
    for r, n in enumerate(lengths):
        ids[r, 6 - n:] = 1 + r
    enc = SplitEncoder(torch.nn.Identity(), torch.device("cpu"))
    try:
        g = enc.groups(ids)
    finally:
        enc.close()
    assert sorted(np.concatenate(g).tolist()) == list(range(9))
    assert [len(x) for x in g] == [5, 4]
    assert abs(lengths[g[0]].sum() - lengths[g[1]].sum()) <= lengths.max()


def test_split_encoder_is_off_with_a_note_where_it_cannot_apply(tiny_data, tmp_path, monkeypatch):
    """One thread or GRU4Rec: the run trains the plain way (the same losses as without the
    option) and says why; so does a Ray Train run, before anything starts."""
    from fenrec_dist.train.split import split_blocker

    for kw, why in ((dict(train__threads=1), "1 intra-op thread"),
                    (dict(train__threads=2, model__encoder="gru4rec"), "model.encoder=gru4rec")):
        lines: list[str] = []
        train_single(_cfg(tiny_data, train__epochs=1, train__split_encoder=True, **kw), tmp_path / "on",
                     log=lines.append)
        train_single(_cfg(tiny_data, train__epochs=1, **kw), tmp_path / "off", **QUIET)
        assert [x for x in lines if "train.split_encoder is off" in x and why in x], lines
        assert read_metrics(tmp_path / "on")[0]["loss"] == read_metrics(tmp_path / "off")[0]["loss"]
        for d in ("on", "off"):
            import shutil

            shutil.rmtree(tmp_path / d)
    cfg = _cfg(tiny_data, train__split_encoder=True)
    assert "cuda" in split_blocker(cfg, torch.device("cuda"), 2)
    assert split_blocker(cfg, torch.device("cpu"), 2) is None

    from fenrec_dist.distributed import driver

    def stop(*_a, **_k):
        raise Interrupt

    monkeypatch.setattr(driver, "check_embedded_gpus", stop)  # the next thing run_distributed does
    lines = []
    with pytest.raises(Interrupt):
        driver.run_distributed(cfg, tmp_path / "dist", log=lines.append)
    assert any("train.split_encoder is off" in x and "--local" in x for x in lines)
