"""Every FENRec loss term against an explicit reference computation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fenrec_dist.config import LossConfig, NegativesConfig
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.losses.hard_negatives import explicit_hard_negatives, hard_negative_logits, sample_lam
from fenrec_dist.losses.intent_contrast import NegativeBlock, make_contrast_batch, weighted_info_nce
from fenrec_dist.losses.noise_negatives import nudge_noise, nudge_noise_contrast
from fenrec_dist.losses.shaping import Shaping
from fenrec_dist.losses.soft_labels import soft_label_loss, soft_label_weights

torch.set_default_dtype(torch.float32)


def test_soft_label_weights_gamma_02():
    w = soft_label_weights(torch.tensor([3, 2, 1]), 3, 0.2)
    assert torch.allclose(w[0], torch.tensor([0.8065, 0.1613, 0.0323]), atol=1e-4)
    assert torch.allclose(w[1], torch.tensor([1 / 1.2, 0.2 / 1.2, 0.0]), atol=1e-6)
    assert torch.equal(w[2], torch.tensor([1.0, 0.0, 0.0]))
    onehot = soft_label_weights(torch.tensor([3, 2]), 3, 0.2, soft=False)
    assert torch.equal(onehot, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))


def test_soft_label_loss_matches_explicit_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 11, generator=g)
    future = torch.tensor([[3, 5, 7], [2, 9, 0], [4, 0, 0], [6, 6, 1]])  # last row repeats an item
    flen = torch.tensor([3, 2, 1, 3])
    got = soft_label_loss(logits, future, flen, gamma=0.3)
    logp = torch.log_softmax(logits[:, 1:], dim=1)  # padding column excluded from the softmax
    want = 0.0
    for b in range(4):
        ws = [0.3**k for k in range(int(flen[b]))]
        z = sum(ws)
        want += -sum(w / z * logp[b, int(future[b, k]) - 1] for k, w in enumerate(ws))
    assert got.item() == pytest.approx(float(want) / 4, abs=1e-6)
    # soft=False is plain cross-entropy on the target
    hard = soft_label_loss(logits, future, flen, gamma=0.3, soft=False)
    assert hard.item() == pytest.approx(F.cross_entropy(logits[:, 1:], future[:, 0] - 1).item(), abs=1e-6)


def test_shaping_formulas():
    s = torch.tensor([-3.0, 0.0, 2.0, 10.0])
    sh = Shaping(True, tau=8.0, margin=0.2)
    assert torch.allclose(sh.positive(s), s * torch.tanh(s / 8))
    assert torch.allclose(sh.negative(s), s * (torch.tanh(s / 8) + 0.2))
    off = Shaping(False)
    assert torch.equal(off.positive(s), s) and torch.equal(off.negative(s), s)


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.4, 0.9, "random"])
def test_hard_negatives_closed_form_equals_explicit(lam):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(10, 16, generator=g) * 3).double().requires_grad_(True)
    lam_v = sample_lam((10, 10), 0.1, 0.7, g).double() if lam == "random" else lam
    closed = hard_negative_logits(z, z, lam_v)
    h = explicit_hard_negatives(z, z, lam_v)  # [N, N, d], detached
    explicit = torch.einsum("ad,and->an", z, h)
    assert torch.allclose(closed, explicit, atol=1e-5)
    # Norm is kept: |h_an| = |z_n|
    assert torch.allclose(h.norm(dim=2), z.detach().norm(dim=1)[None, :].expand(10, 10), atol=1e-6)
    # Gradients: h is detached, so d/dz_a of sum(c * h.z_a) = sum_n c_an h_an
    c = torch.randn(10, 10, generator=g).double()
    (g_closed,) = torch.autograd.grad((c * closed).sum(), z)
    (g_explicit,) = torch.autograd.grad((c * torch.einsum("ad,and->an", z, h)).sum(), z)
    assert torch.allclose(g_closed, g_explicit, atol=1e-5)


def test_weighted_info_nce_equals_reference_division_form_and_stays_finite():
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(5, generator=g)
    neg = torch.randn(5, 7, generator=g)
    hard = torch.randn(5, 7, generator=g)
    noise = torch.randn(5, 3, generator=g)
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[0, 1] = mask[3, 4] = True
    w = 0.1
    got = weighted_info_nce(pos, [NegativeBlock(neg, 1.0, mask), NegativeBlock(noise), NegativeBlock(hard, w, mask)],
                            Shaping(False))
    e = torch.exp
    den = e(pos) + (e(neg) * ~mask).sum(1) + e(noise).sum(1) + w * (e(hard) * ~mask).sum(1)
    want = (-torch.log(e(pos) / den)).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # Large logits: the division form overflows, the log-space form does not.
    big = [NegativeBlock(neg * 200, 1.0, mask), NegativeBlock(hard * 200, w, mask)]
    ref = (-torch.log(e(pos * 200) / (e(pos * 200) + (e(neg * 200) * ~mask).sum(1) + w * (e(hard * 200) * ~mask).sum(1)))).mean()
    assert not torch.isfinite(ref)
    assert torch.isfinite(weighted_info_nce(pos * 200, big, Shaping(False)))


def test_contrast_mask_excludes_exactly_same_group_self_and_positive():
    v1 = torch.randn(4, 3)
    v2 = torch.randn(4, 3)
    groups = torch.tensor([7, 8, 7, 9])
    cb = make_contrast_batch(v1, v2, groups, 1.0)
    g = [7, 8, 7, 9, 7, 8, 7, 9]
    for i in range(8):
        for j in range(8):
            assert bool(cb.mask[i, j]) == (g[i] == g[j]), (i, j)
    pos = cb.positives
    assert torch.allclose(pos[:4], (v1 * v2).sum(1)) and torch.allclose(pos[4:], (v1 * v2).sum(1))


def _icsrec_info_nce(z1, z2, groups):
    """ICSRec's info_nce with false-negative masking, written out plainly."""
    z = torch.cat([z1, z2])
    n = z.shape[0]
    b = n // 2
    sim = z @ z.t()
    pos = torch.cat([torch.diag(sim, b), torch.diag(sim, -b)])[:, None]
    g = torch.cat([groups, groups])
    neg = sim.masked_fill(g[:, None] == g[None, :], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))


def test_kmeans_restarts_keep_the_lowest_objective():
    """intents.nredo: the first run is the nredo=1 run, so restarts never raise the k-means
    objective, and on these points (seed 0) they lower it."""
    x = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)

    def inertia(c: IntentClusters) -> float:
        d = ((x[:, None, :] - c.centroids[None]) ** 2).sum(-1)
        return float(d.min(1).sum())

    one = IntentClusters.fit(x, 30, niter=10, seed=0)
    three = IntentClusters.fit(x, 30, niter=10, seed=0, nredo=3)
    again = IntentClusters.fit(x, 30, niter=10, seed=0, nredo=1)
    assert np.array_equal(one.centroids, again.centroids)
    assert inertia(three) < inertia(one) - 10.0


def test_fenrec_loss_before_warmup_is_rec_plus_plain_intent_contrast():
    torch.manual_seed(3)
    b, d, items = 6, 8, 20
    z1, z2 = torch.randn(b, d), torch.randn(b, d)
    emb = torch.randn(items + 1, d)
    target = torch.tensor([1, 2, 1, 3, 4, 5])
    future = torch.stack([target, target + 1, target + 2], 1)
    flen = torch.tensor([3, 3, 2, 1, 3, 2])
    intents = IntentClusters.fit(torch.randn(64, d).numpy(), 4, seed=0)
    lc = LossConfig(gamma=0.2, lambda_coarse=0.3, beta_fine=0.1)
    loss = FENRecLoss(lc, NegativesConfig(warmup_epochs=5))
    parts = loss(z1, z2, emb, target, future, flen, epoch=0, intents=intents, generator=torch.Generator().manual_seed(0))
    rec = soft_label_loss(z1 @ emb.t(), future, flen, 0.2)
    coarse = _icsrec_info_nce(z1, z2, target)
    fine = 0.0
    for v in (z1, z2):
        ids, c = intents.assign(v)
        fine = fine + _icsrec_info_nce(v, c, ids)
    assert parts.rec.item() == pytest.approx(rec.item(), abs=1e-5)
    assert parts.coarse.item() == pytest.approx(coarse.item(), abs=1e-5)
    assert parts.fine.item() == pytest.approx(float(fine), abs=1e-5)
    assert parts.total.item() == pytest.approx(rec.item() + 0.3 * coarse.item() + 0.1 * float(fine), abs=1e-5)


def test_fenrec_loss_after_warmup_matches_explicit_construction():
    torch.manual_seed(4)
    b, d = 5, 6
    z1, z2 = torch.randn(b, d) * 2, torch.randn(b, d) * 2
    emb = torch.randn(11, d)
    target = torch.tensor([1, 2, 1, 3, 4])
    future = target[:, None]
    flen = torch.ones(b, dtype=torch.long)
    neg_cfg = NegativesConfig(warmup_epochs=0, sources=["in_batch", "hard"], hard_weight=0.1, lam_min=0.4,
                              lam_max=0.4, tau=8.0, margin=0.2)
    loss = FENRecLoss(LossConfig(lambda_coarse=1.0, beta_fine=0.0), neg_cfg)
    parts = loss(z1, z2, emb, target, future, flen, epoch=0, intents=None, generator=torch.Generator())
    z = torch.cat([z1, z2])
    g = torch.cat([target, target])
    mask = g[:, None] == g[None, :]
    h = explicit_hard_negatives(z, z, 0.4)
    sim = z @ z.t()
    hard = torch.einsum("ad,and->an", z, h)
    idx = torch.arange(2 * b)
    pos = sim[idx, (idx + b) % (2 * b)]
    sp = pos * torch.tanh(pos / 8)
    sn = lambda s: s * (torch.tanh(s / 8) + 0.2)  # noqa: E731
    den = torch.exp(sp) + (torch.exp(sn(sim)) * ~mask).sum(1) + 0.1 * (torch.exp(sn(hard)) * ~mask).sum(1)
    want = (-(sp - torch.log(den))).mean()
    assert parts.coarse.item() == pytest.approx(want.item(), rel=1e-5)


def test_noise_nudge_ascends_the_loss():
    torch.manual_seed(5)
    z = torch.randn(8, 4)
    noise = torch.randn(6, 4)
    cb = make_contrast_batch(z[:4], z[4:], torch.arange(4), 1.0)

    def loss_fn(x):
        return weighted_info_nce(cb.positives, [NegativeBlock(cb.sims, 1.0, cb.mask), NegativeBlock(cb.z @ x.t())],
                                 Shaping(False))

    moved = nudge_noise(noise, loss_fn, steps=4, step_size=0.05)
    assert not moved.requires_grad
    assert torch.allclose((moved - noise).norm(dim=1), torch.full((6,), 0.2), atol=0.05)
    assert loss_fn(moved) > loss_fn(noise)


@pytest.mark.parametrize("shaped,temperature", [(True, 1.0), (True, 0.5), (False, 1.0), (False, 2.0)])
def test_noise_nudge_with_written_out_gradient_equals_autograd(shaped, temperature):
    """The sampler's closed-form ascent equals nudge_noise on the same loss, through autograd."""
    g = torch.Generator().manual_seed(11)
    n, r, d = 24, 40, 8
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 3
    fixed = torch.randn(n, generator=g, dtype=torch.float64) * 2 + 5
    pos = torch.randn(n, generator=g, dtype=torch.float64)
    noise = torch.randn(r, d, generator=g, dtype=torch.float64)
    shaping = Shaping(shaped, tau=8.0, margin=0.2)

    def loss_fn(x):
        noise_lse = torch.logsumexp(shaping.negative(z @ x.t() / temperature), dim=1)
        return (torch.logaddexp(fixed, noise_lse) - pos).mean()

    want = nudge_noise(noise, loss_fn, steps=4, step_size=0.3)
    got = nudge_noise_contrast(noise, z, fixed, shaping, temperature, steps=4, step_size=0.3)
    assert not got.requires_grad
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert loss_fn(got) > loss_fn(noise)  # it ascends
    # one step, by hand: each vector moves step_size along its normalised gradient
    x = noise.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(x), x)
    one = nudge_noise_contrast(noise, z, fixed, shaping, temperature, steps=1, step_size=0.3)
    assert torch.allclose(one, noise + 0.3 * grad / grad.norm(dim=1, keepdim=True), atol=1e-12)


def test_hard_negative_path_is_finite_from_a_fresh_model_scale():
    torch.manual_seed(6)
    z1, z2 = torch.randn(64, 64) * 8, torch.randn(64, 64) * 8  # LayerNorm outputs have |z| ~ 8
    target = torch.randint(1, 30, (64,))
    neg_cfg = NegativesConfig(warmup_epochs=0, noise_ratio=2.0)
    loss = FENRecLoss(LossConfig(), neg_cfg)
    intents = IntentClusters.fit((torch.randn(300, 64) * 8).numpy(), 16, seed=0)
    parts = loss(z1.requires_grad_(), z2, torch.randn(31, 64), target, target[:, None], torch.ones(64, dtype=torch.long),
                 epoch=0, intents=intents, generator=torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in parts.as_floats().values())
    parts.total.backward()
    assert torch.isfinite(z1.grad).all()


# ----------------------------------------------------------------- exact speed-ups (custom autograd)


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("soft", [True, False])
def test_soft_label_loss_from_reprs_equals_plain_value_and_gradients(soft):
    from fenrec_dist.losses.soft_labels import soft_label_loss_from_reprs

    g = torch.Generator().manual_seed(7)
    z = (torch.randn(16, 8, generator=g) * 3).requires_grad_(True)
    emb = torch.randn(41, 8, generator=g).requires_grad_(True)
    future = torch.randint(1, 41, (16, 3), generator=g)
    flen = torch.randint(1, 4, (16,), generator=g)
    future[flen < 3, 2] = 0  # padded slots point at the padding column
    future[flen < 2, 1] = 0
    future[0] = torch.tensor([5, 5, 9])  # a repeated item
    flen[0] = 3
    plain = soft_label_loss(z @ emb.t(), future, flen, 0.2, soft)
    fast = soft_label_loss_from_reprs(z, emb, future, flen, 0.2, soft)
    assert fast.item() == pytest.approx(plain.item(), rel=1e-6)
    want, got = _grads(plain * 1.7, [z, emb]), _grads(fast * 1.7, [z, emb])
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert torch.equal(got[1][0], torch.zeros(8))  # padding row: no gradient


def test_soft_label_loss_from_reprs_large_logits_stay_finite():
    from fenrec_dist.losses.soft_labels import soft_label_loss_from_reprs

    g = torch.Generator().manual_seed(8)
    z = (torch.randn(4, 8, generator=g) * 40).requires_grad_(True)  # logit gaps far beyond exp's range
    emb = torch.randn(30, 8, generator=g) * 40
    future = torch.tensor([[3, 4, 0], [7, 0, 0], [1, 2, 3], [9, 8, 0]])
    flen = torch.tensor([2, 1, 3, 2])
    plain = soft_label_loss(z @ emb.t(), future, flen, 0.2)
    fast = soft_label_loss_from_reprs(z, emb, future, flen, 0.2)
    assert torch.isfinite(fast) and fast.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.isfinite(_grads(fast, [z])[0]).all()


@pytest.mark.parametrize("shaped,scale", [(True, 4.0), (False, 4.0), (True, 100.0)])
def test_fused_denominator_equals_plain_value_and_gradients(shaped, scale):
    """Scale 100 puts the shaping deep into tanh's saturation (|s| / tau up to 50)."""
    from fenrec_dist.losses.intent_contrast import denominator_lse, denominator_lse_plain

    g = torch.Generator().manual_seed(9)
    n = 12
    pos = (torch.randn(n, generator=g) * scale).requires_grad_(True)
    neg = (torch.randn(n, n, generator=g) * scale).requires_grad_(True)
    hard = (torch.randn(n, n, generator=g) * scale).requires_grad_(True)
    noise = (torch.randn(n, 5, generator=g) * scale).requires_grad_(True)
    mask = torch.rand(n, n, generator=g) < 0.3
    mask[3] = True  # a row with every in-batch and hard negative masked
    blocks = [NegativeBlock(neg, 1.0, mask), NegativeBlock(hard, 0.1, mask), NegativeBlock(noise),
              NegativeBlock(torch.randn(n, 3), 0.0), NegativeBlock(torch.randn(n, 0))]  # skipped blocks
    shaping = Shaping(shaped, tau=8.0, margin=0.2)
    c = torch.randn(n, generator=g)
    plain = denominator_lse_plain(pos, blocks, shaping)
    fast = denominator_lse(pos, blocks, shaping)
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-6)
    ins = [pos, neg, hard, noise]
    for a, b in zip(_grads((plain * c).sum(), ins), _grads((fast * c).sum(), ins)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # constants (no grad) and no_grad use, as in the noise nudge
    with torch.no_grad():
        assert torch.allclose(denominator_lse(pos, [NegativeBlock(neg.detach(), 1.0, mask)], shaping),
                              denominator_lse_plain(pos, [NegativeBlock(neg.detach(), 1.0, mask)], shaping), atol=1e-5)


def _hard_negative_logits_autograd(anchors, keys, lam, eps=1e-12):
    """The closed form written in plain autograd ops (the previous implementation)."""
    a_det, k_det = anchors.detach(), keys.detach()
    na = a_det.norm(dim=1).clamp_min(eps)
    nk = k_det.norm(dim=1).clamp_min(eps)
    cos = (a_det @ k_det.t()) / (na[:, None] * nk[None, :])
    lam_t = torch.as_tensor(lam, dtype=anchors.dtype)
    denom = torch.sqrt(((1 - lam_t) ** 2 + lam_t**2 + 2 * lam_t * (1 - lam_t) * cos).clamp_min(eps))
    toward_self = (anchors * a_det).sum(dim=1) / na
    return ((1 - lam_t) * (anchors @ k_det.t()) + lam_t * nk[None, :] * toward_self[:, None]) / denom


@pytest.mark.parametrize("lam", [0.4, "random"])
def test_hard_negative_custom_backward_equals_autograd_in_float32(lam):
    g = torch.Generator().manual_seed(10)
    z = (torch.randn(64, 16, generator=g) * 8).requires_grad_(True)  # fresh-model scale
    lam_v = sample_lam((64, 64), 0.2, 0.6, g) if lam == "random" else lam
    c = torch.randn(64, 64, generator=g)
    plain = _hard_negative_logits_autograd(z, z, lam_v)
    fast = hard_negative_logits(z, z, lam_v)
    assert torch.allclose(fast, plain, atol=1e-4, rtol=1e-5)
    (ga,) = _grads((plain * c).sum(), [z])
    (gb,) = _grads((fast * c).sum(), [z])
    assert torch.allclose(ga, gb, atol=1e-4, rtol=1e-5)


def test_score_items_equals_the_plain_product_on_every_path():
    from fenrec_dist import scoring as sl

    g = torch.Generator().manual_seed(3)
    z, w = torch.randn(37, 16, generator=g), torch.randn(501, 16, generator=g)
    want = z @ w.t()
    got = sl.score_items(z, w)
    assert got.shape == (37, 501) and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(sl.score_items(z[:, ::2], w[:, ::2]), z[:, ::2] @ w[:, ::2].t(), atol=1e-5)  # strided views
    assert torch.equal(sl.score_items(z.double(), w.double()), z.double() @ w.double().t())  # float64: plain path
    zg = z.clone().requires_grad_(True)
    out = sl.score_items(zg, w)  # under autograd: the plain product, so gradients flow
    out.sum().backward()
    assert torch.allclose(zg.grad, w.sum(0).expand(37, 16), atol=1e-4)
    if sl._LINEAR is not None:  # the oneDNN path is the one taken here, not the fallback
        assert torch.allclose(sl._LINEAR(z, w, None, "none", [], ""), want, rtol=1e-5, atol=1e-5)


class _SplitComm:
    """Rank ``rank`` of a pretend 2-process group whose other rows are the given constants."""

    world_size = 2

    def __init__(self, rank: int, b: int, fulls: list[torch.Tensor]) -> None:
        self.rank, self.b, self.fulls = rank, b, list(fulls)

    def gather(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        off = self.rank * self.b
        return [torch.cat([full[:off], x, full[off + len(x):]]) for full, x in zip(self.fulls, xs)], off

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t


def test_row_split_contrast_shares_add_up_to_the_global_loss(monkeypatch):
    """Each process computes its own rows of the [2B, 2B] blocks (sims [B, 2B] here, half the
    work), and the two processes' contrastive shares add up to the one-process value."""
    import fenrec_dist.losses.fenrec as fenrec_mod

    torch.manual_seed(5)
    b, d = 4, 6
    z1, z2 = torch.randn(2 * b, d) * 2, torch.randn(2 * b, d) * 2
    emb = torch.randn(11, d)
    target = torch.tensor([1, 2, 1, 3, 4, 5, 2, 6])
    future, flen = target[:, None], torch.ones(2 * b, dtype=torch.long)
    intents = IntentClusters.fit(torch.randn(64, d).numpy(), 3, seed=0)
    neg_cfg = NegativesConfig(warmup_epochs=0, sources=["in_batch", "hard"], hard_weight=0.3, lam_min=0.2, lam_max=0.6)
    lc = LossConfig(lambda_coarse=0.7, beta_fine=0.2)
    shapes = []
    real = fenrec_mod.make_contrast_batch

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        cb = real(*a, **k)
        shapes.append(tuple(cb.sims.shape))
        return cb

    monkeypatch.setattr(fenrec_mod, "make_contrast_batch", spy)
    single = FENRecLoss(lc, neg_cfg)(z1, z2, emb, target, future, flen, 0, intents, torch.Generator().manual_seed(9))
    assert shapes == [(2 * b * 2, 2 * b * 2)] * 3  # coarse + two fine terms, all rows
    shares = 0.0
    for rank in (0, 1):
        shapes.clear()
        sl = slice(rank * b, (rank + 1) * b)
        comm = _SplitComm(rank, b, [torch.cat([z1, z2], 1), target])
        parts = FENRecLoss(lc, neg_cfg, comm=comm)(z1[sl], z2[sl], emb, target[sl], future[sl], flen[sl], 0, intents,
                                                   torch.Generator().manual_seed(9))
        assert shapes == [(2 * b, 4 * b)] * 3  # this process's rows only, against every column
        shares += float(parts.objective - parts.rec) / 2
    assert shares == pytest.approx(0.7 * float(single.coarse) + 0.2 * float(single.fine), rel=1e-5)


# ------------------------------------------- the fine term's distinct centroids; one coarse pass


def test_column_log_weight_equals_repeating_the_column_and_pos_none_is_the_negatives_alone():
    from fenrec_dist.losses.intent_contrast import denominator_lse, denominator_lse_plain

    g = torch.Generator().manual_seed(21)
    n = 7
    pos = torch.randn(n, generator=g, dtype=torch.float64) * 3
    cols = (torch.randn(n, 4, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    counts = torch.tensor([1, 3, 2, 1])
    mask = torch.rand(n, 4, generator=g) < 0.2
    mask[:, 0] = False  # every row keeps a negative
    shaping = Shaping(True, tau=8.0, margin=0.2)
    weighted = [NegativeBlock(cols, 0.1, mask, counts.double().log())]
    for p in (pos, None):
        repeated = [NegativeBlock(cols.repeat_interleave(counts, dim=1), 0.1, mask.repeat_interleave(counts, dim=1))]
        fast = denominator_lse(p, weighted, shaping)
        want = denominator_lse_plain(p, repeated, shaping)
        assert torch.allclose(fast, want, atol=1e-12)
        assert torch.allclose(denominator_lse_plain(p, weighted, shaping), want, atol=1e-12)
        assert torch.allclose(_grads(fast.sum(), [cols])[0], _grads(want.sum(), [cols])[0], atol=1e-12)
    # with the positive: logaddexp(pos, negatives alone)
    assert torch.allclose(denominator_lse(pos, weighted, shaping),
                          torch.logaddexp(pos, denominator_lse(None, weighted, shaping)), atol=1e-12)


def test_hard_negative_logits_reuse_the_callers_gram_without_writing_it():
    g = torch.Generator().manual_seed(22)
    a = (torch.randn(9, 5, generator=g) * 4).requires_grad_(True)
    k = torch.randn(11, 5, generator=g) * 4
    for lam in (0.4, sample_lam((9, 11), 0.2, 0.6, g)):
        gram = a.detach() @ k.t()
        kept = gram.clone()
        c = torch.randn(9, 11, generator=g)
        own = hard_negative_logits(a, k, lam)
        given = hard_negative_logits(a, k, lam, gram=gram)
        assert torch.equal(gram, kept)
        assert torch.allclose(given, own, atol=1e-6)
        assert torch.allclose(_grads((given * c).sum(), [a])[0], _grads((own * c).sum(), [a])[0], atol=1e-6)


def _noise_sources(**kw):
    return NegativesConfig(warmup_epochs=0, sources=["in_batch", "hard", "noise"], hard_weight=0.1, lam_min=0.4,
                           lam_max=0.4, noise_ratio=1.5, noise_steps=3, noise_step_size=0.05, **kw)


@pytest.mark.parametrize("shaped,temperature", [(True, 1.0), (False, 1.0), (True, 0.5)])
def test_dedup_intent_batch_equals_the_full_batch_value_and_gradients(shaped, temperature):
    """The fine term over B samples + U distinct centroids (column weights log count, each sample's
    centroid row restored by logaddexp) equals the [2B, 2B] batch with every centroid repeated,
    with in-batch, hard and noise negatives, in value and in the gradient of the samples."""
    from fenrec_dist.losses.intent_contrast import contrast_loss, dedup_intent_batch, intent_contrast_loss
    from fenrec_dist.losses.samplers import StepContext, build_samplers

    g = torch.Generator().manual_seed(23)
    b, d, k = 10, 6, 5
    view = (torch.randn(b, d, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    cents = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    ids = torch.tensor([0, 2, 2, 4, 0, 2, 1, 4, 4, 2])  # 4 distinct of 5, repeats
    samplers = build_samplers(_noise_sources(shaping=shaped), True)
    ctx = StepContext(generator=g, noise=torch.randn(7, d, generator=g, dtype=torch.float64) * 3)
    shaping = Shaping(shaped, tau=8.0, margin=0.2)

    def blocks(batch):  # type: ignore[no-untyped-def]
        return [blk for s in samplers for blk in s.blocks(batch, ctx)]

    full = make_contrast_batch(view, cents[ids], ids, temperature)
    want = contrast_loss(full, blocks(full), shaping)
    db = dedup_intent_batch(view, ids, cents, temperature)
    assert db.z.shape[0] == b + 4 and db.sims.shape == (b + 4, b + 4)
    got = intent_contrast_loss(db, blocks(db), shaping)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.allclose(_grads(got, [view])[0], _grads(want, [view])[0], atol=1e-12)


def _explicit_fenrec_contrast(z1, z2, target, intents, noise0, steps, step_size, lam, w, tau, m):
    """Coarse and fine terms written out from FENREC.md: explicit [N, N, d] hard negatives, the
    noise nudged by autograd on the explicit coarse loss, every centroid repeated per sample."""
    sp = lambda s: s * torch.tanh(s / tau)  # noqa: E731
    sn = lambda s: s * (torch.tanh(s / tau) + m)  # noqa: E731

    def info_nce(a, c, groups, noise):  # type: ignore[no-untyped-def]
        z = torch.cat([a, c])
        gg = torch.cat([groups, groups])
        n = z.shape[0]
        mask = gg[:, None] == gg[None, :]
        idx = torch.arange(n)
        sim = z @ z.t()
        pos = sim[idx, (idx + n // 2) % n]
        hard = torch.einsum("ad,and->an", z, explicit_hard_negatives(z, z, lam))
        den = (torch.exp(sp(pos)) + (torch.exp(sn(sim)) * ~mask).sum(1) + w * (torch.exp(sn(hard)) * ~mask).sum(1)
               + torch.exp(sn(z @ noise.t())).sum(1))
        return (torch.log(den) - sp(pos)).mean()

    z1d, z2d = z1.detach(), z2.detach()
    noise = nudge_noise(noise0, lambda x: info_nce(z1d, z2d, target, x), steps, step_size)
    coarse = info_nce(z1, z2, target, noise)
    fine = 0.0
    for v in (z1, z2):
        ids, c = intents.assign(v)
        fine = fine + info_nce(v, c, ids, noise)
    return coarse, fine


def test_fenrec_loss_with_noise_and_intents_matches_explicit_construction():
    """The whole contrastive part after the warm-up (in-batch, hard and noise negatives, shaping,
    coarse and fine terms) against ``_explicit_fenrec_contrast``, with the fine term's distinct
    centroids on and off; the two paths also give the same gradients."""
    torch.manual_seed(24)
    b, d = 12, 6
    z1, z2 = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    emb = torch.randn(15, d, dtype=torch.float64)
    target = torch.tensor([1, 2, 1, 3, 4, 5, 6, 2, 7, 8, 9, 1])
    future, flen = target[:, None], torch.ones(b, dtype=torch.long)
    intents = IntentClusters.fit(torch.randn(200, d).numpy(), 4, seed=0)
    lc = LossConfig(lambda_coarse=0.7, beta_fine=0.2)
    neg = _noise_sources()
    # the generator's first draw is the noise (lam is fixed): the same vectors for the explicit form
    noise0 = torch.randn(int(round(1.5 * b)), d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    coarse, fine = _explicit_fenrec_contrast(z1, z2, target, intents, noise0, 3, 0.05, 0.4, 0.1, 8.0, 0.2)
    # every part matters at this scale: without the nudge, the coarse term is another value
    unmoved, _ = _explicit_fenrec_contrast(z1, z2, target, intents, noise0, 0, 0.05, 0.4, 0.1, 8.0, 0.2)
    assert abs(unmoved.item() - coarse.item()) > 1e-4
    grads = []
    for dedup in (True, False):
        a, p = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        parts = FENRecLoss(dataclasses.replace(lc, dedup_intents=dedup), neg)(
            a, p, emb, target, future, flen, 0, intents, torch.Generator().manual_seed(3))
        assert parts.coarse.item() == pytest.approx(coarse.item(), rel=1e-9)
        assert parts.fine.item() == pytest.approx(float(fine), rel=1e-9)
        grads.append(_grads(parts.total, [a, p]))
    for x, y in zip(*grads):
        assert torch.allclose(x, y, atol=1e-10)


def _spread_centroids() -> np.ndarray:
    """Centroids of very different lengths, so the nearest raw centroid (L2) and the best
    normalised centroid (inner product) disagree for many points."""
    rng = np.random.default_rng(11)
    c = rng.standard_normal((6, 5)).astype(np.float32)
    return c * np.array([0.1, 0.5, 1.0, 3.0, 8.0, 20.0], dtype=np.float32)[:, None]


def test_intent_centroids_are_unit_rows_in_the_raw_directions():
    raw = _spread_centroids()
    fitted = IntentClusters.fit((np.random.default_rng(0).standard_normal((300, 5)) * 5).astype(np.float32), 7, seed=0)
    for clusters in (IntentClusters(raw), fitted):
        normed = clusters.normed("cpu")
        assert normed.shape == clusters.centroids.shape and normed.dtype == torch.float32
        assert torch.allclose(normed.norm(dim=1), torch.ones(clusters.k), atol=1e-6)
        # the same directions as the raw centroids: normed * |c| = c
        scale = np.linalg.norm(clusters.centroids, axis=1, keepdims=True)
        assert np.allclose(normed.numpy() * scale, clusters.centroids, atol=1e-5)
        _, c = clusters.assign(torch.randn(10, clusters.centroids.shape[1]))
        assert torch.allclose(c.norm(dim=1), torch.ones(10), atol=1e-6)


def test_intent_assignment_is_the_nearest_raw_centroid_in_l2():
    """intents.py: 'each representation's intent is its nearest (raw) centroid, found through a
    FAISS flat L2 index — the k-means assignment rule'. Brute force in numpy, on points where
    the inner product with the normalised centroids would choose otherwise."""
    raw = _spread_centroids()
    clusters = IntentClusters(raw)
    x = (np.random.default_rng(1).standard_normal((500, 5)) * 4).astype(np.float32)
    d2 = ((x[:, None, :].astype(np.float64) - raw[None].astype(np.float64)) ** 2).sum(-1)
    want = d2.argmin(1)
    by_cosine = (x @ (raw / np.linalg.norm(raw, axis=1, keepdims=True)).T).argmax(1)
    assert (want != by_cosine).mean() > 0.2  # the points tell the two rules apart
    got = clusters.assign_numpy(x)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    ids, c = clusters.assign(torch.from_numpy(x).double())
    assert ids.dtype == torch.long and np.array_equal(ids.numpy(), want)
    assert c.dtype == torch.float64 and torch.allclose(c.float(), clusters.normed("cpu")[torch.from_numpy(want)])
    assert np.array_equal(clusters.sizes(x), np.bincount(want, minlength=6))
