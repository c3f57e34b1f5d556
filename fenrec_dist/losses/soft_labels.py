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
    hand-written backward: the [B, I + 1] matrix is materialised once (the logits, turned into
    softmax probabilities in one fused kernel) instead of the five full-size temporaries
    that autograd keeps and recomputes for the plain form (cat, exp, sub, mul, scatter)."""

    @staticmethod
    def forward(ctx, z, weights, future, label):  # type: ignore[no-untyped-def]
        logits = score_items(z, weights)  # [B, I + 1]
        logits[:, 0] = float("-inf")  # padding is not a class
        logp = torch.log_softmax(logits, dim=1)  # one fused pass per row
        del logits
        # padded future slots point at column 0 (log p = -inf) with label 0: take them as 0
        picked = torch.where(label > 0, logp.gather(1, future), 0.0)
        ctx.save_for_backward(z, weights, future, label)
        ctx.logp = logp
        return -(label * picked).sum(dim=1).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        z, weights, future, label = ctx.saved_tensors
        logp = ctx.logp
        if logp is None:
            raise RuntimeError("soft_label_loss_from_reprs: backward through the same graph twice")
        ctx.logp = None
        # d/dlogits = (softmax - label) / B; padded future slots carry label 0 (and index 0,
        # whose softmax entry is 0), so column 0 gets no gradient, as in the plain form.
        g = logp.exp_().scatter_add_(1, future, -label)  # in place: softmax - label
        scale = grad / z.shape[0]
        gz = (g @ weights).mul_(scale) if ctx.needs_input_grad[0] else None
        gw = (g.t() @ z).mul_(scale) if ctx.needs_input_grad[1] else None
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

    Same value and gradients as the plain form (tests/test_losses.py), about half its time
    on Beauty's 12,102-item catalogue: the logits are scored, soft-maxed in place of the
    logsumexp passes, and their gradient (softmax - label) reuses the same buffer.

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
