"""The FENRec objective: L_rec + lambda_0 L_coarse + beta_0 L_fine, with the warm-up.

Before ``negatives.warmup_epochs`` the contrastive terms are plain InfoNCE with
in-batch negatives; afterwards the configured negative sources (hard, noise, index)
join and similarity shaping is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from fenrec_dist.config import LossConfig, NegativesConfig
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.losses.intent_contrast import (
    ContrastBatch,
    contrast_loss,
    dedup_intent_batch,
    denominator_lse,
    intent_contrast_loss,
    local_rows,
    make_contrast_batch,
)
from fenrec_dist.losses.sampled_softmax import CandidateSampler, SampledSoftmaxSpec, sampled_soft_label_loss
from fenrec_dist.losses.shaping import Shaping
from fenrec_dist.losses.soft_labels import soft_label_loss_from_reprs
from fenrec_dist.losses.samplers import NoiseNegatives, StepContext, build_samplers

if TYPE_CHECKING:
    from fenrec_dist.negatives.refresh import EpochIndex


class BatchComm(Protocol):
    """How a data-parallel process sees the global batch (``distributed.collectives.ProcessGroupComm``).

    world_size: W processes.
    gather(*xs): (each of the row-aligned tensors ``xs`` [b_r, ...] concatenated over processes
        in rank order [sum b_r, ...], the offset of this process's rows in them). The gradient
        that reaches a result from every process's loss is summed back into each process's
        own rows.
    sum(t): ``t`` summed over the processes (no gradient).
    """

    world_size: int

    def gather(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], int]: ...

    def sum(self, t: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LossParts:
    """The loss terms of a batch; ``objective`` is what to back-propagate (equal to
    ``total`` in one process). With W data-parallel processes, ``coarse`` and ``fine`` are the
    global batch's values (summed over processes, detached), ``rec`` this process's, and
    ``objective`` is rec + W x (this process's share of the contrastive terms): averaged over
    processes, its gradients equal the one-process gradient on the global batch."""

    total: torch.Tensor
    rec: torch.Tensor
    coarse: torch.Tensor
    fine: torch.Tensor
    objective: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)  # negative diagnostics (index runs)

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "rec", "coarse", "fine")}


class FENRecLoss:
    """Computes the FENRec loss of one batch.

    Args:
        loss_cfg: weights, gamma and temperature.
        neg_cfg: warm-up, negative sources and shaping.
        comm: the data-parallel process group's view of the batch, or None in one process.
            Negatives are global: every process gathers the global batch's representations
            and computes the contrastive loss of its own rows against all of them (the
            [2B, 2B] blocks split by rows, so the work divides by W); gradients reach the
            other processes' rows through ``comm.gather``. Data-parallel training averages
            gradients over processes, so the contrastive part of ``objective`` is scaled by W.
        item_counts: float or long [I + 1], how often each item is a training target; needed by
            ``loss.rec_softmax: sampled`` for popularity draws and the in-batch logQ correction.
        sparse_item_grad: with ``loss.rec_softmax: sampled``, the item table's gradient from L_rec
            is a sparse tensor of the touched rows (for ``optim.make_optimizer``'s row-sparse Adam);
            None: True exactly when L_rec is sampled.
    """

    def __init__(self, loss_cfg: LossConfig, neg_cfg: NegativesConfig, comm: BatchComm | None = None,
                 item_counts: torch.Tensor | None = None, sparse_item_grad: bool | None = None) -> None:
        self.loss_cfg = loss_cfg
        self.neg_cfg = neg_cfg
        self.comm = comm
        self.world_size = 1 if comm is None else comm.world_size
        self.sampled = loss_cfg.rec_softmax == "sampled"
        self.sparse_item_grad = self.sampled if sparse_item_grad is None else bool(sparse_item_grad and self.sampled)
        self.spec = SampledSoftmaxSpec(loss_cfg.sampled_in_batch, loss_cfg.sampled_random, loss_cfg.sampled_popularity,
                                       loss_cfg.sampled_logq, loss_cfg.sampled_enduring_lam,
                                       loss_cfg.sampled_enduring_weight)
        self.item_counts = item_counts
        self._candidates: CandidateSampler | None = None

    def after_warmup(self, epoch: int) -> bool:
        return epoch >= self.neg_cfg.warmup_epochs

    def shaping(self, epoch: int) -> Shaping:
        on = self.after_warmup(epoch) and self.neg_cfg.shaping
        return Shaping(on, self.neg_cfg.tau, self.neg_cfg.margin)

    def __call__(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        item_weights: torch.Tensor,
        target: torch.Tensor,
        future: torch.Tensor,
        future_len: torch.Tensor,
        epoch: int,
        intents: IntentClusters | None,
        generator: torch.Generator,
        anchor_ids: torch.Tensor | None = None,
        partner_ids: torch.Tensor | None = None,
        index: "EpochIndex | None" = None,
        mined_items: torch.Tensor | None = None,
    ) -> LossParts:
        """Loss of a batch.

        Args:
            z1: float [B, d] anchors' representations (last position).
            z2: float [B, d] same-target partners' representations.
            item_weights: float [I + 1, d] item embedding table (scoring layer).
            target: long [B]; future: long [B, H + 1]; future_len: long [B].
            epoch: 0-based epoch (selects the warm-up phase).
            intents: this epoch's clusters, or None to skip the fine term.
            generator: CPU generator for lam and noise draws.
            anchor_ids, partner_ids: long [B] rows of anchors and partners in the epoch index (this
                rank's local rows; in one process the sample ids) (needed by
                index-mined negatives).
            index: the epoch's refreshed negative index, or None.
            mined_items: long [B, K] hard items per anchor from the item index (sampled L_rec; 0 =
                an empty slot), or None.
        """
        cfg = self.loss_cfg
        if self.sampled:
            rec = self.sampled_rec(z1, item_weights, target, future, future_len, generator, mined_items)
        else:
            rec = soft_label_loss_from_reprs(z1, item_weights, future, future_len, cfg.gamma, cfg.soft_labels)
        zero = rec.new_zeros(())
        coarse = fine = zero
        if cfg.lambda_coarse <= 0 and (cfg.beta_fine <= 0 or intents is None):
            return LossParts(rec, rec, zero, zero, rec)

        comm = self.comm
        rows = None
        if comm is None:
            g1, g2, gt = z1, z2, target
        else:
            d = z1.shape[1]
            extra = [anchor_ids, partner_ids] if anchor_ids is not None and partner_ids is not None else []
            gathered, offset = comm.gather(torch.cat([z1, z2], dim=1), target, *extra)  # one collective
            both, gt = gathered[0], gathered[1]
            g1, g2 = both[:, :d], both[:, d:]
            rows = local_rows(offset, z1.shape[0], g1.shape[0], z1.device)
        shaping = self.shaping(epoch)
        samplers = build_samplers(self.neg_cfg, self.after_warmup(epoch), index)
        ctx = StepContext(generator=generator) if comm is None else StepContext(generator=generator, reduce=comm.sum)
        coarse_batch = make_contrast_batch(g1, g2, gt, cfg.temperature, rows)
        use_index = any(s.name == "index" for s in samplers)
        keys1 = keys2 = None
        stats: dict[str, list[float]] = {}
        if use_index:
            if anchor_ids is None or partner_ids is None:
                raise ValueError("index-mined negatives need anchor_ids and partner_ids")
            keys1, keys2 = (anchor_ids, partner_ids) if comm is None else (gathered[2], gathered[3])
            ctx.extras["row_keys"] = torch.cat([keys1, keys2])
            stats["cos_in_batch"] = [in_batch_cosine(coarse_batch)]
        noise = next((s for s in samplers if isinstance(s, NoiseNegatives)), None)
        others = [s for s in samplers if not isinstance(s, NoiseNegatives)]

        def blocks(batch):  # type: ignore[no-untyped-def]
            return [blk for s in samplers for blk in s.blocks(batch, ctx)]

        if cfg.lambda_coarse > 0 or noise is not None:
            coarse = self._coarse(coarse_batch, others, noise, shaping, ctx, stats if use_index else None)
        if cfg.beta_fine > 0 and intents is not None:
            lam_fixed = self.neg_cfg.lam_max <= self.neg_cfg.lam_min or not any(s.name == "hard" for s in samplers)
            dedup = cfg.dedup_intents and comm is None and not use_index and lam_fixed
            for view, keys in ((g1, keys1), (g2, keys2)):
                ids, cents = intents.assign(view)
                if dedup and int(torch.unique(ids).numel()) >= 2:
                    db = dedup_intent_batch(view, ids, intents.normed(view.device), cfg.temperature)
                    fine = fine + intent_contrast_loss(db, blocks(db), shaping)
                    continue
                fb = make_contrast_batch(view, cents, ids, cfg.temperature, rows)
                if use_index:
                    # both rows of a pair (the sample and its centroid) use the sample's negatives;
                    # mined negatives of the row's own intent are masked, as in-batch ones are
                    ctx.extras["row_keys"] = torch.cat([keys, keys])
                    ctx.extras["row_groups"] = torch.cat([ids, ids])
                fine = fine + contrast_loss(fb, blocks(fb), shaping)
        contrast = cfg.lambda_coarse * coarse + cfg.beta_fine * fine
        if comm is None:
            total = objective = rec + contrast
        else:  # coarse and fine are this process's shares: report the global values
            objective = rec + self.world_size * contrast
            coarse, fine = comm.sum(torch.stack([coarse.detach(), fine.detach()]))
            total = rec.detach() + cfg.lambda_coarse * coarse + cfg.beta_fine * fine
        return LossParts(total, rec, coarse, fine, objective,
                         stats={k: sum(v) / len(v) for k, v in stats.items() if v})

    def sampled_rec(self, z: torch.Tensor, item_weights: torch.Tensor, target: torch.Tensor, future: torch.Tensor,
                    future_len: torch.Tensor, generator: torch.Generator,
                    mined_items: torch.Tensor | None) -> torch.Tensor:
        """The sampled L_rec of this process's rows (``losses/sampled_softmax.py``): in-batch
        candidates are the global batch's targets (``comm.gather``), random ones drawn from
        ``generator`` (the same on every process)."""
        cfg, spec = self.loss_cfg, self.spec
        if self._candidates is None:
            self._candidates = CandidateSampler(item_weights.shape[0] - 1, spec, self.item_counts)
        parts = []
        g = 0
        if spec.in_batch:
            gt = target if self.comm is None else self.comm.gather(target)[0][0]
            parts.append(gt)
            g = gt.shape[0]
        if spec.num_random > 0:
            parts.append(self._candidates.draw(generator).to(target.device))
        shared = torch.cat(parts) if parts else None
        corr = self._candidates.log_expected_count(shared, g) if spec.logq and shared is not None else None
        return sampled_soft_label_loss(z, item_weights, future, future_len, cfg.gamma, cfg.soft_labels,
                                       shared=shared, shared_correction=corr, mined=mined_items,
                                       enduring_lam=spec.enduring_lam, enduring_weight=spec.enduring_weight,
                                       sparse_grad=self.sparse_item_grad)

    def _coarse(self, batch: ContrastBatch, others: list, noise: NoiseNegatives | None, shaping: Shaping,
                ctx: StepContext, stats: dict[str, list[float]] | None) -> torch.Tensor:
        """The coarse term (zero when ``lambda_coarse`` is 0); first draws and nudges this step's
        noise (``ctx.noise``) when ``noise`` is set.

        The non-noise negatives are constant during the noise ascent: their log-denominator
        (positive included) is computed once, with gradient, and its detached value is the
        ascent's ``fixed`` term; the noise block's own log-sum then joins it by logaddexp
        (the same value as one ``denominator_lse`` over every block).
        """
        pos = shaping.positive(batch.positives)
        n_total = None if batch.rows is None else batch.z.shape[0]
        want_loss = self.loss_cfg.lambda_coarse > 0
        if stats is not None and want_loss:
            ctx.extras["stats"] = stats
        with torch.set_grad_enabled(want_loss and torch.is_grad_enabled()):
            lse = denominator_lse(pos, [blk for s in others for blk in s.blocks(batch, ctx)], shaping)
        ctx.extras.pop("stats", None)
        if noise is not None:
            noise.prepare(batch.detach(), lse.detach(), shaping, ctx)
        if not want_loss:
            return pos.new_zeros(())
        noise_blocks = noise.blocks(batch, ctx) if noise is not None else []
        if noise_blocks:
            lse = torch.logaddexp(lse, denominator_lse(None, noise_blocks, shaping))
        per_row = lse - pos
        return per_row.mean() if n_total is None else per_row.sum() / n_total


@torch.no_grad()
def in_batch_cosine(batch) -> float:  # type: ignore[no-untyped-def]
    """Mean cosine of every row to its valid in-batch negatives (a hardness diagnostic)."""
    zn = torch.nn.functional.normalize(batch.z.detach(), dim=1)
    cos = (zn if batch.rows is None else zn[batch.rows]) @ zn.t()
    ok = ~batch.mask
    return float(cos[ok].mean()) if bool(ok.any()) else float("nan")
