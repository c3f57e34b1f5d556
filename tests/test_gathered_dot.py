"""The mined items' logits (``losses.sampled_softmax.gathered_dot``) equal autograd's own
``(rows[idx] * z[:, None, :]).sum(-1)`` in value and in both gradients, repeated ids included."""

import torch

from fenrec_dist.losses.sampled_softmax import gathered_dot


def test_gathered_dot_equals_autograds_gather_and_product():
    g = torch.Generator().manual_seed(0)
    rows0 = torch.randn(50, 8, generator=g, dtype=torch.float64)
    z0 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 50, (6, 40), generator=g)  # 240 draws from 50 rows: repeats within and across rows
    up = torch.randn(6, 40, generator=g, dtype=torch.float64)
    outs = []
    for fn in (lambda r, z: (r[idx] * z[:, None, :]).sum(-1), lambda r, z: gathered_dot(r, idx, z)):
        r, z = rows0.clone().requires_grad_(), z0.clone().requires_grad_()
        out = fn(r, z)
        out.backward(up)
        outs.append((out.detach(), r.grad, z.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert outs[0][1].abs().sum() > 0 and (outs[0][1] != 0).sum() < outs[0][1].numel()  # some rows untouched


def test_gathered_dot_passes_gradcheck():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 7, (4, 5), generator=g)
    assert torch.autograd.gradcheck(lambda r, q: gathered_dot(r, idx, q), (rows, z))
