"""Sampled soft-label softmax (losses/sampled_softmax.py) against the full soft-label CE."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fenrec_dist.config import LossConfig, NegativesConfig
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.losses.sampled_softmax import (CandidateSampler, SampledSoftmaxSpec, enduring_items,
                                                sampled_soft_label_loss)
from fenrec_dist.losses.soft_labels import soft_label_loss_from_reprs, soft_label_weights


def full_ce(z, w, future, future_len, gamma):
    """The full soft-label CE written out (float64 when the inputs are)."""
    logits = z @ w.t()
    lse = torch.logsumexp(logits[:, 1:], dim=1)
    lab = soft_label_weights(future_len, future.shape[1], gamma).to(z.dtype)
    return (lse - (lab * logits.gather(1, future)).sum(1)).mean()


def _batch(num_items=40, d=6, b=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, d, generator=g, dtype=dtype)
    w = torch.randn(num_items + 1, d, generator=g, dtype=dtype) * 0.7
    future = torch.randint(1, num_items + 1, (b, 3), generator=g)
    future_len = torch.tensor([3, 2, 1, 3, 3])[:b]
    future[1, 2] = 0
    future[2, 1:] = 0
    future[3, 1] = future[3, 0]  # an item repeated in the window (Yelp has repeats)
    return z, w, future, future_len


def test_every_item_as_candidate_equals_full_ce_value_and_gradient():
    z, w, future, flen = _batch()
    all_items = torch.arange(1, w.shape[0]).expand(z.shape[0], -1)
    for sparse in (False, True):
        z1, w1 = z.clone().requires_grad_(), w.clone().requires_grad_()
        z2, w2 = z.clone().requires_grad_(), w.clone().requires_grad_()
        ref = full_ce(z1, w1, future, flen, 0.2)
        got = sampled_soft_label_loss(z2, w2, future, flen, 0.2, mined=all_items, sparse_grad=sparse)
        ref.backward()
        got.backward()
        assert abs(float(got.detach() - ref.detach())) < 1e-12
        gw = w2.grad.to_dense() if sparse else w2.grad
        assert w2.grad.is_sparse == sparse
        torch.testing.assert_close(z2.grad, z1.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(gw, w1.grad, rtol=0, atol=1e-12)
    # the shared (in-batch + random) path, each item once and no correction, gives the same
    z3, w3 = z.clone().requires_grad_(), w.clone().requires_grad_()
    got = sampled_soft_label_loss(z3, w3, future, flen, 0.2, shared=torch.arange(w.shape[0] - 1, 0, -1))
    got.backward()
    assert abs(float(got.detach() - full_ce(z, w, future, flen, 0.2))) < 1e-12
    zr, wr = z.clone().requires_grad_(), w.clone().requires_grad_()
    full_ce(zr, wr, future, flen, 0.2).backward()
    torch.testing.assert_close(w3.grad, wr.grad, rtol=0, atol=1e-12)
    # and the production full path (float32) agrees
    ref32 = soft_label_loss_from_reprs(z.float(), w.float(), future, flen, 0.2)
    assert abs(float(ref32) - float(got.detach())) < 1e-5


def test_mined_item_also_in_shared_counts_once_and_positives_are_never_negatives():
    z, w, future, flen = _batch()
    b = z.shape[0]
    all_items = torch.arange(1, w.shape[0])
    # mined: half the catalogue (positives among them); shared: every item once (positives among
    # them): each item enters the denominator exactly once
    mined = all_items[::2].expand(b, -1).clone()
    got = sampled_soft_label_loss(z, w, future, flen, 0.2, shared=all_items, mined=mined)
    assert abs(float(got - full_ce(z, w, future, flen, 0.2))) < 1e-12
    # padding slots (0) in mined are empty
    mined0 = torch.cat([mined, torch.zeros(b, 3, dtype=torch.long)], 1)
    got0 = sampled_soft_label_loss(z, w, future, flen, 0.2, shared=all_items, mined=mined0)
    assert abs(float(got0 - got)) < 1e-12


def test_sparse_gradient_touches_only_the_candidate_rows():
    z, w, future, flen = _batch(num_items=100)
    w = w.clone().requires_grad_()
    shared = torch.tensor([5, 7, 9, 7])
    mined = torch.tensor([[11, 0], [12, 13], [14, 15], [16, 17], [18, 19]])
    sampled_soft_label_loss(z, w, future, flen, 0.2, shared=shared, mined=mined, sparse_grad=True).backward()
    touched = set(w.grad.coalesce().indices()[0].tolist())
    expect = {5, 7, 9} | set(range(11, 20)) | set(future[future > 0].tolist())
    assert touched == expect
    dense = w.grad.to_dense()
    assert float(dense[0].abs().sum()) == 0.0  # padding row


def test_enduring_items_formula():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64)
    e = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    h = enduring_items(z, e, 0.4)
    for i in range(4):
        for j in range(3):
            ne = e[i, j].norm()
            mix = 0.6 * e[i, j] / ne + 0.4 * z[i] / z[i].norm()
            torch.testing.assert_close(h[i, j], ne * mix / mix.norm())
    assert not h.requires_grad
    # lam = 0 leaves the items; enduring copies add w * e^{z.h} to the denominator
    torch.testing.assert_close(enduring_items(z, e, 0.0), e)
    zz, w, future, flen = _batch()
    mined = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    base = sampled_soft_label_loss(zz, w, future, flen, 0.2, mined=mined)
    with_h = sampled_soft_label_loss(zz, w, future, flen, 0.2, mined=mined, enduring_lam=0.5, enduring_weight=0.1)
    assert float(with_h) > float(base)


def _mc_gradient_error(n_random, logq, draws, counts, z, w, future, flen, exact):
    spec = SampledSoftmaxSpec(in_batch=False, num_random=n_random, popularity=True, logq=logq)
    sampler = CandidateSampler(w.shape[0] - 1, spec, counts)
    gen = torch.Generator().manual_seed(123)
    acc = torch.zeros_like(w)
    for _ in range(draws):
        wr = w.clone().requires_grad_()
        shared = sampler.draw(gen)
        corr = sampler.log_expected_count(shared, 0).double() if logq else None
        sampled_soft_label_loss(z, wr, future, flen, 0.2, shared=shared, shared_correction=corr).backward()
        acc += wr.grad
    return float((acc / draws - exact).norm() / exact.norm())


def test_logq_corrected_gradient_is_closer_to_exact_and_approaches_it_with_n():
    num_items = 60
    z, w, future, flen = _batch(num_items=num_items, d=4, seed=1)
    counts = torch.zeros(num_items + 1)
    counts[1:] = 200.0 / torch.arange(1, num_items + 1).double() ** 1.2  # skewed popularity
    wr = w.clone().requires_grad_()
    full_ce(z, wr, future, flen, 0.2).backward()
    exact = wr.grad
    ns = (8, 128, 512)
    err = {(n, q): _mc_gradient_error(n, q, 400, counts, z, w, future, flen, exact) for n in ns for q in (True, False)}
    for n in ns:  # closer than the uncorrected gradient at every N
        assert err[(n, True)] < err[(n, False)], (n, err)
    # the corrected error shrinks with N toward 0 (measured 0.50, 0.24, 0.08); the uncorrected
    # one stays biased (0.54, 0.43, 0.38: popular items are over-counted whatever N)
    assert err[(8, True)] > err[(128, True)] > err[(512, True)]
    assert err[(512, True)] < 0.15 and err[(512, False)] > 0.3


def test_popularity_draws_follow_the_smoothed_counts():
    counts = torch.tensor([0.0, 9.0, 0.0, 29.0])  # +1 smoothing: q = [10, 1, 30] / 41
    s = CandidateSampler(3, SampledSoftmaxSpec(in_batch=True, num_random=40000, popularity=True), counts)
    ids = s.draw(torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4)[1:].double() / ids.numel()
    torch.testing.assert_close(freq, torch.tensor([10, 1, 30], dtype=torch.float64) / 41, atol=0.01, rtol=0)
    # expected count in a draw of G = 8 in-batch targets (p = counts / 38) and 40000 random items
    got = s.log_expected_count(torch.tensor([1, 2, 3]), 8).double().exp()
    want = 8 * torch.tensor([9, 0, 29]) / 38 + 40000 * torch.tensor([10, 1, 30]) / 41
    torch.testing.assert_close(got, want.double(), rtol=1e-5, atol=0)


class FakeComm:
    """Two ranks in one process: ``gather`` returns both ranks' targets."""

    world_size = 2

    def __init__(self, parts, rank):
        self.parts, self.rank = parts, rank

    def gather(self, *xs):
        return [torch.cat(self.parts)], sum(p.shape[0] for p in self.parts[: self.rank])

    def sum(self, t):
        raise AssertionError("not used when the contrastive terms are off")


def test_global_in_batch_candidates_with_two_workers_equal_one_process_at_2b():
    num_items, b = 30, 4
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2 * b, 6, generator=g)
    w = torch.randn(num_items + 1, 6, generator=g)
    target = torch.randint(1, num_items + 1, (2 * b,), generator=g)
    future = torch.stack([target, torch.randint(1, num_items + 1, (2 * b,), generator=g),
                          torch.randint(1, num_items + 1, (2 * b,), generator=g)], 1)
    flen = torch.tensor([3, 2, 1, 3, 3, 2, 3, 1])
    counts = torch.bincount(target, minlength=num_items + 1).float() + 1.0
    cfg = dataclasses.replace(LossConfig(), lambda_coarse=0.0, beta_fine=0.0, rec_softmax="sampled",
                              sampled_random=16, sampled_popularity=True)
    neg = NegativesConfig()

    def run(loss, rows, wt):
        return loss(z[rows], z[rows], wt, target[rows], future[rows], flen[rows], 0, None,
                    torch.Generator().manual_seed(9)).objective

    w1 = w.clone().requires_grad_()
    one = run(FENRecLoss(cfg, neg, item_counts=counts, sparse_item_grad=False), slice(0, 2 * b), w1)
    one.backward()
    w2 = w.clone().requires_grad_()
    halves = [target[:b], target[b:]]
    per_rank = [run(FENRecLoss(cfg, neg, comm=FakeComm(halves, r), item_counts=counts), slice(r * b, (r + 1) * b), w2)
                for r in (0, 1)]
    avg = (per_rank[0] + per_rank[1]) / 2  # data-parallel gradient averaging
    avg.backward()
    assert w2.grad.is_sparse
    torch.testing.assert_close(avg, one, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w2.grad.to_dense(), w1.grad, rtol=1e-5, atol=1e-7)


def test_sampled_config_needs_candidates():
    from fenrec_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^loss.rec_softmax: sampled needs candidates"):
        load_config(None, ["loss.rec_softmax=sampled", "loss.sampled_in_batch=false", "loss.sampled_random=0"])
    assert load_config(None, ["loss.rec_softmax=sampled"]).loss.sampled_random == 1024


# --------------------------------------------------------------------------- two gloo workers

G_ITEMS, G_LEN, G_HIDDEN, G_BATCH = 40, 8, 16, 12


def _gloo_problem():
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(2 * G_BATCH, G_LEN, dtype=torch.long)
    for i, n in enumerate(torch.randint(1, G_LEN + 1, (2 * G_BATCH,), generator=g).tolist()):
        ids[i, G_LEN - n:] = torch.randint(1, G_ITEMS + 1, (n,), generator=g)
    target = torch.randint(1, 10, (G_BATCH,), generator=g)  # repeated targets: in-batch masking matters
    future = torch.stack([target, torch.randint(1, G_ITEMS + 1, (G_BATCH,), generator=g),
                          torch.randint(1, G_ITEMS + 1, (G_BATCH,), generator=g)], 1)
    flen = torch.randint(1, 4, (G_BATCH,), generator=g)
    mined = torch.randint(0, G_ITEMS + 1, (G_BATCH, 5), generator=g)
    return ids, target, future, flen, mined


def _gloo_step(rows, comm):  # type: ignore[no-untyped-def]
    from fenrec_dist.config import ModelConfig
    from fenrec_dist.model import build_encoder

    ids, target, future, flen, mined = _gloo_problem()
    torch.manual_seed(0)
    model = build_encoder(ModelConfig(hidden=G_HIDDEN, heads=2, dropout=0.0, attn_dropout=0.0), G_ITEMS, G_LEN)
    cfg = dataclasses.replace(LossConfig(), rec_softmax="sampled", sampled_random=8, sampled_popularity=True,
                              lambda_coarse=0.3, beta_fine=0.0)
    counts = torch.bincount(target, minlength=G_ITEMS + 1).float()
    loss = FENRecLoss(cfg, NegativesConfig(warmup_epochs=5), comm=comm, item_counts=counts)
    b = G_BATCH
    z = model(torch.cat([ids[:b][rows], ids[b:][rows]]))
    n = z.shape[0] // 2
    parts = loss(z[:n], z[n:], model.item_weights(), target[rows], future[rows], flen[rows], 0, None,
                 torch.Generator().manual_seed(7), mined_items=mined[rows])
    parts.objective.backward()
    return {k: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for k, p in model.named_parameters()
            if p.grad is not None}


def _gloo_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from fenrec_dist.comm import ProcessGroupComm

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = G_BATCH // 2
        grads = _gloo_step(slice(rank * half, (rank + 1) * half), ProcessGroupComm(max_rows=half))
        for g in grads.values():  # data-parallel averaging
            dist.all_reduce(g)
            g /= 2
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_equal_one_process_at_2b(tmp_path):
    """The sampled L_rec (global in-batch candidates through comm.gather, shared random draws,
    mined items) with the coarse contrast, on 2 gloo processes at B/2 each: the averaged
    gradients equal one process at B."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "g.pt"
    mp.spawn(_gloo_worker, args=(port, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    want = _gloo_step(slice(0, G_BATCH), None)
    assert set(got) == set(want) and "item_emb.weight" in got
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)
