"""Time-dependent soft labels (FENRec §1): future items share the label mass."""

from __future__ import annotations

import torch


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
