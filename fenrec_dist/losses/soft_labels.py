"""Time-dependent soft labels (FENRec §1): future items share the label mass."""

from __future__ import annotations

import torch

from fenrec_dist.scoring import score_items


def soft_label_weights(future_len: torch.Tensor, width: int, gamma: float, soft: bool = True) -> torch.Tensor:
    """Label weights over each sample's future window.

    Args:
        future_len: long [B], number of valid future items (>= 1; item 0 is the target).
        width: H + 1, the padded width of the future window.
        gamma: decay; the k-th item gets gamma^k before normalisation.
        soft: False gives a one-hot label on the target.

    Returns:
        float [B, width]: rows sum to 1, zeros past ``future_len``.
        gamma = 0.2 and a full window of 3 gives [0.8065, 0.1613, 0.0323].
    """
    k = torch.arange(width, device=future_len.device)
    if not soft:
        return (k[None, :] == 0).float().expand(future_len.shape[0], width).clone()
    w = (gamma ** k.float())[None, :].expand(future_len.shape[0], width)
    w = w * (k[None, :] < future_len[:, None]).float()
    return w / w.sum(dim=1, keepdim=True)


def soft_label_loss(
    logits: torch.Tensor,
    future: torch.Tensor,
    future_len: torch.Tensor,
    gamma: float,
    soft: bool = True,
) -> torch.Tensor:
    """Cross-entropy between the soft label and softmax(logits) over the catalogue.

    Args:
        logits: float [B, I + 1], scores of every item; column 0 (padding) is excluded.
        future: long [B, H + 1], the target then the following training items, 0-padded.
        future_len: long [B], valid entries of ``future``.
        gamma: soft-label decay.
        soft: False gives plain cross-entropy on the target.

    Returns:
        scalar: mean over the batch of -sum_k w_k log p(future_k).
    """
    logits = logits.float()
    masked = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    lse = torch.logsumexp(masked, dim=1)  # [B]
    w = soft_label_weights(future_len, future.shape[1], gamma, soft)
    picked = torch.gather(logits, 1, future)  # [B, H+1]; padded slots have weight 0
    return (lse - (w * picked).sum(dim=1)).mean()


class _SoftLabelCE(torch.autograd.Function):
    """mean_b [ lse_b(z_b . E^T without column 0) - sum_k w_bk (z_b . E_{future_bk}) ] with a
    hand-written backward. The [B, I + 1] matrix is materialised once: the logits become
    e^{l - max} in place (one exponential per entry; autograd's plain form keeps five
    full-size temporaries and log_softmax followed by exp runs two). The softmax is never
    divided out: its row factor 1/sum goes into the [B, d] operands of the two backward
    products, and the label part -w of (softmax - label) is a gather (for z) and an
    index_add (for E) over the B x (H + 1) labelled items instead of a pass over the matrix:
        d/dz_b = (e_b / s_b) E - sum_k w_bk E_{f_bk},   d/dE = e^T (z / s) - sum_bk w_bk z_b 1_{f_bk}.
    """

    @staticmethod
    def forward(ctx, z, weights, future, label):  # type: ignore[no-untyped-def]
        logits = score_items(z, weights)  # [B, I + 1]
        logits[:, 0] = float("-inf")  # padding is not a class
        picked = logits.gather(1, future)  # [B, H + 1]
        top = logits.amax(dim=1)  # [B]
        e = logits.sub_(top[:, None]).exp_()  # e^{l - max}, in place
        total = e.sum(dim=1)
        lse = top + total.log()
        # padded future slots point at column 0 (-inf) with label 0: take them as 0
        logp = torch.where(label > 0, picked - lse[:, None], 0.0)
        ctx.save_for_backward(z, weights, future, label, total)
        ctx.e = e
        return -(label * logp).sum(dim=1).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        z, weights, future, label, total = ctx.saved_tensors
        e = ctx.e
        if e is None:
            raise RuntimeError("soft_label_loss_from_reprs: backward through the same graph twice")
        ctx.e = None
        scale = grad / z.shape[0]
        row = (scale / total)[:, None]  # [B, 1]: softmax = e / total, times d loss / d logits' scale
        wl = label * scale  # [B, H + 1]
        gz = gw = None
        if ctx.needs_input_grad[0]:
            gz = (e @ weights).mul_(row)
            gz.sub_(torch.einsum("bk,bkd->bd", wl, weights[future]))
        if ctx.needs_input_grad[1]:
            gw = e.t() @ (z * row)
            d = z.shape[1]
            gw.index_add_(0, future.reshape(-1), (wl[:, :, None] * z[:, None, :]).reshape(-1, d), alpha=-1.0)
        return gz, gw, None, None


def soft_label_loss_from_reprs(
    z: torch.Tensor,
    item_weights: torch.Tensor,
    future: torch.Tensor,
    future_len: torch.Tensor,
    gamma: float,
    soft: bool = True,
) -> torch.Tensor:
    """``soft_label_loss(z @ item_weights.T, ...)`` computed in one custom autograd node.

    Same value and gradients as the plain form (tests/test_losses.py), well under half its
    time on Beauty's 12,102-item catalogue: the logits are scored and exponentiated in
    place once, and the backward products read that buffer directly (``_SoftLabelCE``).

    Args:
        z: float [B, d] representations; item_weights: float [I + 1, d] scoring table.
        future, future_len, gamma, soft: as in ``soft_label_loss``.

    Returns:
        scalar loss; gradients flow to ``z`` and ``item_weights``.
    """
    z = z.float()
    item_weights = item_weights.float()
    label = soft_label_weights(future_len, future.shape[1], gamma, soft).to(z.dtype)
    return _SoftLabelCE.apply(z, item_weights, future, label)
