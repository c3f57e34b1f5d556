"""Encoders and the exact speed-ups: same outputs as the plain computation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fenrec_dist.config import ModelConfig
from fenrec_dist.model import GRU4Rec, SASRec, build_encoder
from fenrec_dist.model.base import trim_left_padding
from fenrec_dist.train.batches import PartnerIndex, epoch_batches, epoch_rng


def _batch(lengths, max_len=12, items=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, max_len - n :] = torch.randint(1, items + 1, (n,), generator=g)
    return ids


def test_trim_left_padding_keeps_absolute_offset():
    ids = _batch([2, 5, 3])
    cut, off = trim_left_padding(ids)
    assert off == 12 - 5 and cut.shape == (3, 5)
    assert torch.equal(cut, ids[:, 7:])


@pytest.mark.parametrize("lengths", [[1, 4, 7, 12, 3], [1, 4, 7, 3, 5]], ids=["full-row", "trimmed"])
@pytest.mark.parametrize("trim,last", [(True, False), (False, True), (True, True)])
def test_sasrec_speedups_equal_plain_computation(trim, last, lengths):
    cfg = ModelConfig(hidden=16, heads=2, layers=2, trim_padding=trim, last_position_only=last, pack_tokens=False)
    torch.manual_seed(0)
    fast = SASRec(cfg, num_items=30, max_len=12).eval()
    plain_cfg = dataclasses.replace(cfg, trim_padding=False, last_position_only=False)
    plain = SASRec(plain_cfg, num_items=30, max_len=12).eval()
    plain.load_state_dict(fast.state_dict())
    ids = _batch(lengths)
    assert trim_left_padding(ids)[1] == 12 - max(lengths)  # 'trimmed': 5 padding columns cut
    with torch.no_grad():
        ref = plain.sequence_output(ids)[:, -1]
        assert torch.allclose(plain(ids), ref, atol=1e-6)
        assert torch.allclose(fast(ids), ref, atol=1e-5)


@pytest.mark.parametrize("lengths", [[1, 4, 7, 12, 3], [1, 4, 7, 3, 5]], ids=["full-row", "trimmed"])
@pytest.mark.parametrize("trim,last", [(True, False), (False, True), (True, True)])
def test_sasrec_speedups_train_mode_gradients_equal_plain_computation(trim, last, lengths):
    """Unpacked path (pack_tokens off), train mode with dropout 0: trimmed padding and/or the
    last-position-only block give the plain computation's outputs and every parameter's gradient."""
    cfg = ModelConfig(hidden=16, heads=2, layers=2, dropout=0.0, attn_dropout=0.0, trim_padding=trim,
                      last_position_only=last, pack_tokens=False)
    torch.manual_seed(0)
    fast = SASRec(cfg, num_items=30, max_len=12).train()
    plain = SASRec(dataclasses.replace(cfg, trim_padding=False, last_position_only=False), 30, 12).train()
    plain.load_state_dict(fast.state_dict())
    assert not fast.packs_tokens
    ids = _batch(lengths, seed=2)
    w = torch.randn(len(lengths), 16, generator=torch.Generator().manual_seed(5))
    out_fast, out_plain = fast(ids), plain.sequence_output(ids)[:, -1]
    assert torch.allclose(out_fast, out_plain, atol=1e-5)
    (out_fast * w).sum().backward()
    (out_plain * w).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_sasrec_output_ignores_padding_content_and_batchmates():
    torch.manual_seed(1)
    m = SASRec(ModelConfig(hidden=16, heads=2), num_items=30, max_len=12).eval()
    ids = _batch([3, 9])
    with torch.no_grad():
        together = m(ids)
        alone = m(ids[:1])  # trimmed to length 3 on its own
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_sasrec_init_and_shapes():
    torch.manual_seed(2)
    m = SASRec(ModelConfig(hidden=64, heads=2, init_std=0.02), num_items=500, max_len=50)
    w = m.item_emb.weight.detach()
    assert w.shape == (501, 64)
    assert abs(float(w.std()) - 0.02) < 0.002
    assert m(_batch([3, 5], max_len=50, items=500)).shape == (2, 64)


def test_gru4rec_same_interface_and_padding_invariance():
    torch.manual_seed(3)
    m = build_encoder(ModelConfig(encoder="gru4rec", hidden=16, layers=1), num_items=30, max_len=12).eval()
    assert isinstance(m, GRU4Rec)
    ids = _batch([2, 6])
    with torch.no_grad():
        out = m(ids)
        alone = m(ids[:1, -2:])
    assert out.shape == (2, 16)
    assert torch.allclose(out[0], alone[0], atol=1e-6)
    assert m.scores(out).shape == (2, 31)


def test_epoch_batches_cover_every_sample_once_and_vary_by_epoch():
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    b0 = epoch_batches(lengths, 64, epoch_rng(7, 0), grouping=True, window_batches=4)
    b0again = epoch_batches(lengths, 64, epoch_rng(7, 0), grouping=True, window_batches=4)
    b1 = epoch_batches(lengths, 64, epoch_rng(7, 1), grouping=True, window_batches=4)
    flat = np.concatenate(b0)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(np.array_equal(x, y) for x, y in zip(b0, b0again))
    assert not np.array_equal(np.concatenate(b1), flat)
    padded_grouped = sum(len(b) * lengths[b].max() for b in b0)
    plain = epoch_batches(lengths, 64, epoch_rng(7, 0), grouping=False)
    assert sorted(np.concatenate(plain).tolist()) == list(range(1000))
    padded_plain = sum(len(b) * lengths[b].max() for b in plain)
    assert padded_grouped < 0.75 * padded_plain


def test_length_grouped_batch_order_is_shuffled_across_windows():
    """grouping=True: each batch is a length-sorted cut of one shuffled window, but the batches
    then come in random order over the whole epoch: neither window by window nor by length."""
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    bs, wb = 32, 4
    longest_at = set()
    for seed in range(5):
        batches = epoch_batches(lengths, bs, epoch_rng(seed, 0), grouping=True, window_batches=wb)
        pos = np.empty(1000, dtype=np.int64)  # each sample's place in the epoch's permutation
        pos[epoch_rng(seed, 0).permutation(1000)] = np.arange(1000)
        windows = []
        for b in batches:
            w = np.unique(pos[b] // (bs * wb))
            assert len(w) == 1  # a batch never mixes windows
            windows.append(int(w[0]))
        windows = np.array(windows)
        mean_len = np.array([lengths[b].mean() for b in batches])
        out_of_order = 0
        for w in np.unique(windows):
            mine = [b for b, x in zip(batches, windows) if x == w]
            ranges = sorted((lengths[b].min(), lengths[b].max()) for b in mine)
            assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))  # length-sorted cuts
            out_of_order += bool(np.any(np.diff([lengths[b].mean() for b in mine]) < 0))
        assert np.any(np.diff(windows) < 0)  # not window by window
        assert out_of_order > 0  # inside a window not in length order either
        assert np.any(np.diff(mean_len) < 0) and np.any(np.diff(mean_len) > 0)  # not monotone in length
        longest_at.add(int(np.argmax(mean_len)))
    assert len(longest_at) > 1


def test_default_batches_are_the_shuffled_epoch_cut_in_order():
    """The paper's random batches: by default (config and function) an epoch is one permutation
    cut into consecutive batches, so batch-mates are a random draw whatever their lengths."""
    from fenrec_dist.config import Config

    assert Config().train.length_grouping is False
    lengths = np.random.default_rng(0).integers(1, 50, size=1000)
    perm = epoch_rng(7, 3).permutation(1000)
    plain = epoch_batches(lengths, 64, epoch_rng(7, 3))
    assert len(plain) == 16
    for i, b in enumerate(plain):
        assert np.array_equal(b, perm[64 * i : 64 * (i + 1)])


def test_partner_draws_share_the_target_and_avoid_self():
    target = np.array([5, 3, 5, 5, 2, 3, 9])
    idx = PartnerIndex.build(target, num_items=10)
    rng = np.random.default_rng(0)
    anchors = np.arange(7)
    seen = {i: set() for i in anchors}
    for _ in range(200):
        p = idx.draw(anchors, target, rng)
        assert np.array_equal(target[p], target)
        for a, q in zip(anchors, p):
            seen[a].add(int(q))
    assert seen[0] == {2, 3} and seen[1] == {5} and seen[4] == {4} and seen[6] == {6}


def test_length_chunks_cover_rows_once_and_pad_less_than_four_even_groups():
    from fenrec_dist.train.loop import length_chunks

    lengths = np.random.default_rng(1).choice([1, 2, 3, 5, 8, 13, 50], size=512, p=[.3, .2, .15, .15, .1, .05, .05])
    chunks = length_chunks(lengths)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(512))
    assert all(np.all(np.diff(lengths[c]) >= 0) for c in chunks)
    padded = sum(len(c) * lengths[c].max() for c in chunks)
    even = np.array_split(np.argsort(lengths, kind="stable"), 4)
    assert padded < sum(len(c) * lengths[c].max() for c in even)
    assert len(length_chunks(np.full(7, 4))) == 1 and length_chunks(np.zeros(0, dtype=int)) == []


def test_encode_by_length_equals_one_plain_batch():
    from fenrec_dist.train.loop import encode_by_length

    torch.manual_seed(4)
    m = SASRec(ModelConfig(hidden=16, heads=2), num_items=30, max_len=12).eval()
    plain = SASRec(ModelConfig(hidden=16, heads=2, trim_padding=False, last_position_only=False), 30, 12).eval()
    plain.load_state_dict(m.state_dict())
    ids = _batch([1, 12, 3, 3, 7, 1, 12, 2, 5], seed=3)
    with torch.no_grad():
        got = encode_by_length(m, ids.numpy(), torch.device("cpu"), chunk_overhead=2)
        want = plain.sequence_output(ids)[:, -1]
    assert torch.allclose(got, want, atol=1e-5)


def test_sasrec_eval_attention_kernel_equals_explicit_softmax(monkeypatch):
    import math

    from fenrec_dist.model import sasrec

    torch.manual_seed(5)
    m = SASRec(ModelConfig(hidden=16, heads=2, trim_padding=False, last_position_only=False), 30, 12).eval()
    ids = _batch([1, 4, 12, 7], seed=4)  # includes rows whose padded queries see only masked keys
    with torch.no_grad():
        fused = m.sequence_output(ids)

        def explicit(q, k, v, attn_mask=None):
            return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + attn_mask, dim=-1) @ v

        monkeypatch.setattr(sasrec.F, "scaled_dot_product_attention", explicit)
        want = m.sequence_output(ids)
    assert torch.allclose(fused, want, atol=1e-5)


def test_pack_plan_positions_chunks_and_row_order():
    """Hand-checked plan: rows of lengths 2, 1, 4 and an empty row (kept as its last column),
    width 4 in a window of 6 (positions shift by 2), one chunk per length."""
    from fenrec_dist.model.packing import PackPlan

    ids = torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7], [1, 2, 3, 4], [0, 0, 0, 0]])
    plan = PackPlan.build(ids, max_len=6, chunk_overhead=0)
    # chunk order: rows 1 and 3 (length 1), row 0, row 2
    assert plan.token_ids.tolist() == [7, 0, 5, 6, 1, 2, 3, 4]
    assert plan.token_pos.tolist() == [5, 5, 4, 5, 2, 3, 4, 5]
    assert [(c.start, c.end, c.rows, c.length) for c in plan.chunks] == [(0, 2, 2, 1), (2, 4, 1, 2), (4, 8, 1, 4)]
    assert plan.chunks[2].flat.tolist() == [0, 1, 2, 3] and not plan.chunks[2].pad.any()
    assert plan.last.tolist() == [0, 1, 3, 7]
    assert plan.inverse.tolist() == [2, 0, 3, 1]


@pytest.mark.parametrize("last", [True, False])
@pytest.mark.parametrize("overhead", [0, 10_000])
def test_packed_encoder_equals_plain_computation_and_gradients(last, overhead):
    """Packed tokens (several chunks or one) give the plain computation's outputs in eval mode
    and, with dropout off in train mode, the same gradients for every parameter."""
    from fenrec_dist.model.packing import PackPlan

    cfg = ModelConfig(hidden=16, heads=2, layers=2, dropout=0.0, attn_dropout=0.0, last_position_only=last)
    torch.manual_seed(0)
    fast = SASRec(cfg, num_items=30, max_len=12)
    plain = SASRec(dataclasses.replace(cfg, pack_tokens=False, trim_padding=False, last_position_only=False), 30, 12)
    plain.load_state_dict(fast.state_dict())
    ids = _batch([1, 4, 7, 12, 3, 4, 9, 2, 12, 1], seed=3)[:, 1:]  # width 11 < max_len: right-aligned
    with torch.no_grad():
        ref = plain.eval()(ids)  # the plain path, positions shifted by max_len - width
        got = fast.eval().encode_packed(PackPlan.build(ids, 12, chunk_overhead=overhead))
    assert len(PackPlan.build(ids, 12, chunk_overhead=overhead).chunks) == (7 if overhead == 0 else 1)  # 7 distinct lengths
    assert torch.allclose(got, ref, atol=1e-5)
    fast.train(), plain.train()
    w = torch.randn(10, 16, generator=torch.Generator().manual_seed(4))
    (fast.encode_packed(PackPlan.build(ids, 12, chunk_overhead=overhead)) * w).sum().backward()
    (plain(ids) * w).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    assert fast.packs_tokens and not plain.packs_tokens
    with torch.no_grad():  # forward packs in training (dropout is off here) and trims in eval
        assert torch.allclose(fast(ids), ref, atol=1e-5)
        fast.eval()
        assert not fast.packs_tokens and torch.allclose(fast(ids), ref, atol=1e-5)
