"""Static shapes for CUDA graphs (model/packing.py ``StaticPlan``, ``SASRec.encode_static``):
bucketed token counts and one attention grid give the packed path's outputs and gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fenrec_dist.config import ModelConfig
from fenrec_dist.model import SASRec
from fenrec_dist.model.packing import PackPlan, StaticPlan, round_up


def _batch(lengths, max_len=12, items=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, max_len - n:] = torch.randint(1, items + 1, (n,), generator=g)
    return ids


def test_round_up():
    assert [round_up(n, 4) for n in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]


def test_static_plan_hand_checked():
    """Rows of lengths 2, 1, 4 and an empty row (kept as its last column), width 4 in a window of
    6 (positions shift by 2); 8 tokens rounded up to 12, grid width 4 (multiple 2)."""
    ids = torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7], [1, 2, 3, 4], [0, 0, 0, 0]])
    plan = StaticPlan.build(ids, max_len=6, token_multiple=6, width_multiple=2)
    assert plan.key == (4, 12, 4) and plan.tokens == 8
    assert plan.token_ids.tolist() == [5, 6, 7, 1, 2, 3, 4, 0] + [0] * 4  # batch order, fillers 0
    assert plan.token_pos.tolist() == [4, 5, 5, 2, 3, 4, 5, 5] + [0] * 4
    assert plan.keys.int().tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    p = 12  # padding cells read the zero row appended after the 12 tokens
    assert plan.cell_token.tolist() == [p, p, 0, 1, p, p, p, 2, 3, 4, 5, 6, p, p, p, 7]
    assert plan.token_cell.tolist() == [2, 3, 7, 8, 9, 10, 11, 15] + [0] * 4
    assert plan.last.tolist() == [1, 2, 6, 7]
    narrow = StaticPlan.build(ids[:2], max_len=6, token_multiple=1, width_multiple=1)
    assert narrow.key == (2, 3, 2) and narrow.keys.int().tolist() == [[1, 1], [0, 1]]


def test_bucketed_shapes_take_few_values():
    """Beauty-like batches (512 rows, lengths 1..50): T varies by thousands, the keys by a few."""
    rng = np.random.default_rng(0)
    keys = set()
    counts = set()
    for _ in range(40):
        lengths = np.minimum(rng.geometric(1 / 8, size=512), 50)
        lengths[0] = 50
        ids = np.zeros((512, 50), dtype=np.int64)
        for i, n in enumerate(lengths):
            ids[i, 50 - n:] = rng.integers(1, 100, n)
        plan = StaticPlan.build(ids, 50, token_multiple=512, width_multiple=16)
        keys.add(plan.key)
        counts.add(plan.tokens)
    assert len(counts) > 20 and len(keys) <= 4


def _models(last: bool, **extra):
    cfg = ModelConfig(hidden=16, heads=2, layers=2, dropout=0.0, attn_dropout=0.0, last_position_only=last, **extra)
    torch.manual_seed(0)
    packed = SASRec(cfg, num_items=30, max_len=12)
    static = SASRec(dataclasses.replace(cfg, static_shapes=True), 30, 12)
    static.load_state_dict(packed.state_dict())
    return packed, static


@pytest.mark.parametrize("last", [True, False])
@pytest.mark.parametrize("token_multiple,width_multiple", [(1, 1), (7, 5), (64, 16)])
def test_static_path_equals_packed_path_outputs_and_gradients(last, token_multiple, width_multiple):
    """Outputs (eval and train with dropout 0) and every parameter's gradient equal the packed
    path's (several length chunks) to 1e-6: the fillers and padding cells are masked exactly."""
    packed, static = _models(last)
    ids = _batch([1, 4, 7, 12, 3, 4, 9, 2, 12, 1, 0], seed=3)[:, 1:]  # width 11 < max_len; an empty row
    plan_p = PackPlan.build(ids, 12, chunk_overhead=0)
    plan_s = StaticPlan.build(ids, 12, token_multiple, width_multiple)
    assert len(plan_p.chunks) > 1 and plan_s.key[1] == round_up(plan_s.tokens, token_multiple)
    with torch.no_grad():
        ref = packed.eval().encode_packed(plan_p)
        got = static.eval().encode_static(plan_s)
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    packed.train(), static.train()
    w = torch.randn(ids.shape[0], 16, generator=torch.Generator().manual_seed(4))
    (packed.encode_packed(plan_p) * w).sum().backward()
    out = static(ids)  # forward takes the static path in training
    assert static.packs_tokens and torch.allclose(out, ref, atol=1e-6, rtol=0)
    (out * w).sum().backward()
    for (name, a), b in zip(static.named_parameters(), packed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name


def test_filler_tokens_change_nothing():
    """Filler tokens' items and positions are never read: any content gives bit-identical outputs
    and gradients (so their rows may hold anything a static buffer held before)."""
    _, static = _models(True)
    static.train()
    ids = _batch([3, 5, 12, 1], seed=1)
    plan = StaticPlan.build(ids, 12, token_multiple=32)
    tensors = list(plan.tensors())
    other = [t.clone() for t in tensors]
    fill = slice(plan.tokens, None)
    other[0][fill] = torch.randint(1, 31, other[0][fill].shape)
    other[1][fill] = torch.randint(0, 12, other[1][fill].shape)
    results = []
    for t in (tensors, other):
        static.zero_grad(set_to_none=True)
        out = static.encode_static(StaticPlan.from_tensors(tuple(t)))
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in static.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


def test_static_path_with_dropout_is_seeded_and_finite():
    packed, static = _models(True)
    static = SASRec(dataclasses.replace(static.cfg, dropout=0.3, attn_dropout=0.2), 30, 12).train()
    ids = _batch([2, 6, 12, 9], seed=2)
    torch.manual_seed(5)
    a = static(ids)
    torch.manual_seed(5)
    b = static(ids)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    a.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in static.parameters() if p.grad is not None)


def test_static_path_is_training_only():
    """Evaluation keeps the trimmed path (no plan), as with pack_tokens."""
    _, static = _models(True)
    static.eval()
    assert not static.packs_tokens


def test_full_grid_plan_hand_checked():
    """token_multiple 0: every cell is a token (the grid is the input), built with tensor ops."""
    ids = torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7], [1, 2, 3, 4], [0, 0, 0, 0]])
    plan = StaticPlan.full_grid(ids, max_len=6)
    assert plan.key == (4, 16, 4) and plan.tokens == -1
    assert plan.token_ids.tolist() == ids.flatten().tolist()
    assert plan.token_pos.tolist() == [2, 3, 4, 5] * 4
    assert plan.keys.int().tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    p = 16
    assert plan.cell_token.tolist() == [p, p, 2, 3, p, p, p, 7, 8, 9, 10, 11, p, p, p, 15]
    assert plan.token_cell.tolist() == list(range(16)) and plan.last.tolist() == [3, 7, 11, 15]


@pytest.mark.parametrize("last", [True, False])
def test_full_grid_path_equals_packed_path_outputs_and_gradients(last):
    """model.token_multiple=0 (the plan on the device, no host read): the packed path's outputs and
    gradients to 1e-6, through forward in training."""
    packed, _ = _models(last)
    full = SASRec(dataclasses.replace(packed.cfg, static_shapes=True, token_multiple=0), 30, 12)
    full.load_state_dict(packed.state_dict())
    ids = _batch([1, 4, 7, 12, 3, 4, 9, 2, 12, 1, 0], seed=3)[:, 1:]
    packed.train(), full.train()
    plan = full.static_plan(ids)
    assert plan.key == (11, 11 * 11, 11)
    w = torch.randn(ids.shape[0], 16, generator=torch.Generator().manual_seed(4))
    ref = packed.encode_packed(PackPlan.build(ids, 12, chunk_overhead=0))
    (ref * w).sum().backward()
    out = full(ids)
    (out * w).sum().backward()
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    for (name, a), b in zip(full.named_parameters(), packed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name


def test_cuda_graphs_needs_static_shapes():
    from fenrec_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.cuda_graphs: needs model.static_shapes=true"):
        load_config(None, ["model.cuda_graphs=true"])
    cfg = load_config(None, ["model.cuda_graphs=true", "model.static_shapes=true", "model.token_multiple=0"])
    assert cfg.model.cuda_graphs and cfg.model.token_multiple == 0
