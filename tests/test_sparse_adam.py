"""Row-sparse Adam (optim/sparse_adam.py) against dense Adam and its documented lazy semantics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fenrec_dist.config import load_config
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.model import build_encoder
from fenrec_dist.optim import MixedAdam, RowSparseAdam, clip_grad_norm, make_optimizer


def _sparse_grad(rows, vals, shape):
    return torch.sparse_coo_tensor(torch.tensor(rows)[None, :], vals, shape)


def test_same_rows_every_step_equals_dense_adam_and_leaves_the_others():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(12, 3, generator=g, dtype=torch.float64)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    sa = RowSparseAdam([a], lr=0.01)  # (with weight decay, dense Adam moves every row: see the lazy test)
    da = torch.optim.Adam([b], lr=0.01, foreach=False)
    rows = [1, 4, 4, 7]  # a repeated row: its gradients add up
    for _ in range(6):
        vals = torch.randn(4, 3, generator=g, dtype=torch.float64)
        a.grad = _sparse_grad(rows, vals, a.shape)
        b.grad = a.grad.to_dense()
        sa.step()
        da.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    untouched = [r for r in range(12) if r not in rows]
    assert torch.equal(a.detach()[untouched], w0[untouched])
    assert not torch.equal(a.detach()[[1, 4, 7]], w0[[1, 4, 7]])
    # the fused dense kernel (what `full` uses) agrees in float32
    c = w0.float().clone().requires_grad_()
    sc = RowSparseAdam([c], lr=0.01)
    fc = w0.float().clone().requires_grad_()
    fa = torch.optim.Adam([fc], lr=0.01, fused=True)
    for _ in range(6):
        vals = torch.randn(4, 3, generator=g)
        c.grad = _sparse_grad(rows, vals, c.shape)
        fc.grad = c.grad.to_dense()
        sc.step()
        fa.step()
    torch.testing.assert_close(c, fc, rtol=0, atol=1e-6)


def lazy_reference(w0, steps, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    """The documented lazy semantics, one row at a time in numpy float64."""
    w = w0.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, grads in enumerate(steps, start=1):  # grads: {row: gradient}
        for r, gr in grads.items():
            gr = gr + wd * w[r]
            m[r] = b1 * m[r] + (1 - b1) * gr
            v[r] = b2 * v[r] + (1 - b2) * gr * gr
            w[r] = w[r] - lr / (1 - b1 ** t) * m[r] / (np.sqrt(v[r]) / np.sqrt(1 - b2 ** t) + eps)
    return w


def test_varying_rows_follow_the_lazy_semantics_exactly():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(10, 4))
    p = torch.tensor(w0, requires_grad=True)
    opt = RowSparseAdam([p], lr=0.05, weight_decay=0.01)
    steps = []
    for _ in range(8):
        rows = sorted(rng.choice(10, size=3, replace=False).tolist())
        vals = rng.normal(size=(3, 4))
        steps.append(dict(zip(rows, vals)))
        before = p.detach().clone()
        p.grad = _sparse_grad(rows, torch.tensor(vals), p.shape)
        opt.step()
        untouched = [r for r in range(10) if r not in rows]
        assert torch.equal(p.detach()[untouched], before[untouched])  # untouched rows never move
    np.testing.assert_allclose(p.detach().numpy(), lazy_reference(w0, steps, 0.05, wd=0.01), rtol=0, atol=1e-13)
    # dense Adam differs here (it keeps moving rows by their old momentum): the lazy rule is a choice
    q = torch.tensor(w0, requires_grad=True)
    dense = torch.optim.Adam([q], lr=0.05, weight_decay=0.01, foreach=False)
    for s in steps:
        q.grad = _sparse_grad(list(s), torch.tensor(np.stack(list(s.values()))), q.shape).to_dense()
        dense.step()
    assert not torch.allclose(q, p)


def test_dense_gradient_counts_its_nonzero_rows():
    w0 = torch.randn(6, 2, dtype=torch.float64)
    a, b, c = (w0.clone().requires_grad_() for _ in range(3))
    g = torch.zeros(6, 2, dtype=torch.float64)
    g[[0, 3]] = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    a.grad, b.grad, c.grad = g.clone(), g.to_sparse(1), g.to_sparse()  # dense, row-sparse, fully sparse
    for p in (a, b, c):
        RowSparseAdam([p]).step()
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(a.detach()[[1, 2, 4, 5]], w0[[1, 2, 4, 5]])
    assert not torch.equal(a.detach()[3], w0[3])  # a touched row moves in every column it has


def _tiny(rec_softmax):
    cfg = load_config(None, [f"loss.rec_softmax={rec_softmax}", "model.hidden=8", "model.heads=2",
                             "model.dropout=0.0", "model.attn_dropout=0.0", "loss.lambda_coarse=0", "loss.beta_fine=0",
                             "loss.sampled_random=5", "train.lr=0.01"])
    torch.manual_seed(0)
    return cfg, build_encoder(cfg.model, 200, 6)


def _step(model, opt, cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 201, (4, 6), generator=g)
    ids[0, :3] = 0
    future = torch.randint(1, 201, (4, 3), generator=g)
    loss = FENRecLoss(cfg.loss, cfg.negatives, item_counts=torch.ones(201))
    z = model(ids)
    parts = loss(z, z, model.item_weights(), future[:, 0], future, torch.tensor([3, 3, 2, 1]), 0, None, g)
    parts.objective.backward()
    touched = set(ids[ids > 0].tolist()) | set(future[:, :3].reshape(-1).tolist())
    return touched


def test_make_optimizer_full_is_todays_fused_adam():
    cfg, model = _tiny("full")
    opt = make_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam and opt.defaults["fused"] and opt.defaults["lr"] == 0.01
    assert not model.item_emb.sparse


def test_sampled_step_updates_only_touched_item_rows_and_resumes_exactly():
    cfg, model = _tiny("sampled")
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, MixedAdam) and model.item_emb.sparse
    w0 = model.item_emb.weight.detach().clone()
    model.train()
    _step(model, opt, cfg)
    grad = model.item_emb.weight.grad
    assert grad.is_sparse  # the input lookup and the loss's lookups: no catalogue-sized gradient
    rows = set(grad.coalesce().indices()[0].tolist())
    opt.step()
    opt.zero_grad(set_to_none=True)
    changed = set((model.item_emb.weight.detach() != w0).any(1).nonzero().squeeze(1).tolist())
    assert changed == rows - {0}
    assert len(rows) < 60  # inputs, window items and 5 random items of a 200-item catalogue
    # a state_dict round trip continues exactly
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(opt.state_dict())  # (the live state is updated in place)
    _step(model, opt, cfg, seed=1)
    opt.step()
    want = model.item_emb.weight.detach().clone()
    cfg2, model2 = _tiny("sampled")
    model2.load_state_dict(state)
    opt2 = make_optimizer(model2, cfg2)
    opt2.load_state_dict(opt_state)
    _step(model2, opt2, cfg2, seed=1)
    opt2.step()
    assert torch.equal(model2.item_emb.weight.detach(), want)
    with pytest.raises(ValueError, match="expected keys dense and sparse"):
        opt2.load_state_dict(torch.optim.Adam(model2.parameters()).state_dict())


def test_clip_grad_norm_with_sparse_gradients_matches_torch_on_dense_ones():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(8, 3, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    ga = _sparse_grad([1, 1, 6], torch.randn(3, 3, generator=g), a.shape)
    gb = torch.randn(5, generator=g)
    a.grad, b.grad = ga, gb.clone()
    a2 = a.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    a2.grad, b2.grad = ga.to_dense(), gb.clone()
    n1 = clip_grad_norm([a, b], 0.5)
    n2 = torch.nn.utils.clip_grad_norm_([a2, b2], 0.5)
    torch.testing.assert_close(n1, n2)
    assert a.grad.is_sparse
    torch.testing.assert_close(a.grad.to_dense(), a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
