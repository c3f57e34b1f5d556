"""Negative samplers: each turns a ContrastBatch into NegativeBlocks.

All samplers share one interface so that ``negatives.sources`` picks which are used:

- ``in_batch``: the other rows of the batch (false negatives masked);
- ``hard``: enduring hard negatives, the in-batch negatives pulled toward the anchor;
- ``noise``: Gaussian vectors nudged toward the anchors (shared by both terms of a step);
- ``index``: each anchor's neighbours mined from the epoch's FAISS index
  (``negatives/refresh.py``), pulled toward the anchor like the hard negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from fenrec_dist.config import NegativesConfig
from fenrec_dist.losses.hard_negatives import hard_negative_logits, sample_lam
from fenrec_dist.losses.intent_contrast import ContrastBatch, NegativeBlock
from fenrec_dist.losses.mined_negatives import mined_negative_logits
from fenrec_dist.losses.noise_negatives import draw_noise, nudge_noise_contrast
from fenrec_dist.losses.shaping import Shaping

if TYPE_CHECKING:
    from fenrec_dist.negatives.refresh import EpochIndex


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class StepContext:
    """Per-step state shared by the samplers of one optimisation step.

    generator: CPU generator of this step's random draws (lam, noise); the same stream on
        every process, which draws for all rows and keeps its own.
    noise: float [R, d] nudged noise negatives of this step, or None.
    reduce: sums a tensor over the data-parallel processes (the identity in one process).
    extras: per-term data set by the loss before each term's blocks are built:
        "row_keys": long [N] sample id whose mined negatives row n uses (all N rows);
        "row_groups": long [N] the term's group of row n (all N rows) when groups are intents
        (index-mined negatives of the same intent are then masked), absent otherwise;
        "stats": dict of lists, diagnostics the samplers append to.
    """

    generator: torch.Generator
    noise: torch.Tensor | None = None
    reduce: Callable[[torch.Tensor], torch.Tensor] = _identity
    extras: dict = field(default_factory=dict)


class NegativeSampler(Protocol):
    name: str

    def blocks(self, batch: ContrastBatch, ctx: StepContext) -> list[NegativeBlock]:
        """NegativeBlocks for the N anchors of ``batch``."""
        ...


class InBatchNegatives:
    name = "in_batch"

    def blocks(self, batch: ContrastBatch, ctx: StepContext) -> list[NegativeBlock]:
        return [NegativeBlock(batch.sims, 1.0, batch.mask, batch.col_log_weight)]


class HardNegatives:
    """Every valid in-batch negative pulled toward its anchor by lam ~ U[lam_min, lam_max]."""

    name = "hard"

    def __init__(self, weight: float, lam_min: float, lam_max: float) -> None:
        self.weight = weight
        self.lam_min = lam_min
        self.lam_max = lam_max

    def blocks(self, batch: ContrastBatch, ctx: StepContext) -> list[NegativeBlock]:
        n = batch.z.shape[0]
        lam = sample_lam((n, n), self.lam_min, self.lam_max, ctx.generator)  # all rows: one draw stream
        if isinstance(lam, torch.Tensor):
            lam = lam.to(batch.z.device)
            if batch.rows is not None:
                lam = lam[batch.rows]
        logits = hard_negative_logits(batch.anchors, batch.z, lam, gram=batch.gram)
        if batch.temperature != 1.0:
            logits = logits / batch.temperature
        return [NegativeBlock(logits, self.weight, batch.mask, batch.col_log_weight)]


class NoiseNegatives:
    """rho * B Gaussian negatives, nudged on the coarse loss once per step (``prepare``)."""

    name = "noise"

    def __init__(self, ratio: float, steps: int, step_size: float) -> None:
        self.ratio = ratio
        self.steps = steps
        self.step_size = step_size

    def prepare(self, coarse: ContrastBatch, fixed: torch.Tensor, shaping: Shaping, ctx: StepContext) -> None:
        """Draw and nudge this step's noise on the (detached) coarse batch; stores ``ctx.noise``.

        Args:
            coarse: the detached coarse batch.
            fixed: float [R] (detached) log of everything but the noise in each computed row's
                denominator, the positive included: constant during the ascent, so
                loss(noise) = mean(logaddexp(fixed, lse(shape(z noise^T / T))) - pos).
        """
        b = coarse.z.shape[0] // 2
        rows = int(round(self.ratio * b))
        if rows <= 0:
            ctx.noise = None
            return
        # the gradient of that loss is written out (equal to autograd's: tests/test_losses.py)
        noise = draw_noise(rows, coarse.z.shape[1], ctx.generator, coarse.z.device, coarse.z.dtype)
        ctx.noise = nudge_noise_contrast(noise, coarse.anchors, fixed, shaping, coarse.temperature, self.steps,
                                         self.step_size, n_total=coarse.z.shape[0], reduce=ctx.reduce)

    def blocks(self, batch: ContrastBatch, ctx: StepContext) -> list[NegativeBlock]:
        if ctx.noise is None:
            return []
        return [NegativeBlock(batch.anchors @ ctx.noise.t() / batch.temperature, 1.0, None)]


class IndexNegatives:
    """Each anchor's ``index_k`` mined neighbours (epoch-start vectors, constants), pulled
    toward the anchor by lam ~ U[lam_min, lam_max], with their own weight."""

    name = "index"

    def __init__(self, index: "EpochIndex", weight: float, lam_min: float, lam_max: float) -> None:
        self.index = index
        self.weight = weight
        self.lam_min = lam_min
        self.lam_max = lam_max

    def blocks(self, batch: ContrastBatch, ctx: StepContext) -> list[NegativeBlock]:
        keys = ctx.extras.get("row_keys")
        if keys is None:
            return []
        k = self.index.neighbors.shape[1]
        lam = sample_lam((keys.shape[0], k), self.lam_min, self.lam_max, ctx.generator)  # all rows: one stream
        groups = ctx.extras.get("row_groups")
        if isinstance(lam, torch.Tensor):
            lam = lam.to(batch.z.device)
        if batch.rows is not None:  # this process computes its own rows only (keys: its local rows)
            keys = keys[batch.rows.to(keys.device)]
            groups = groups[batch.rows] if groups is not None else None
            lam = lam[batch.rows] if isinstance(lam, torch.Tensor) else lam
        nb = self.index.neighbors[keys.to(self.index.neighbors.device)].to(batch.z.device)  # [R, k]
        missing = nb < 0
        safe = nb.clamp_min(0)
        vecs = self.index.vectors.to(batch.z.device)[safe]  # [R, k, d]
        mask = missing
        if groups is not None and self.index.intent_of is not None:
            mask = mask | (self.index.intent_of.to(batch.z.device)[safe] == groups[:, None])
        logits = mined_negative_logits(batch.anchors, vecs, lam) / batch.temperature
        stats = ctx.extras.get("stats")
        if stats is not None:
            with torch.no_grad():
                cos = torch.nn.functional.cosine_similarity(batch.anchors.detach()[:, None, :], vecs, dim=2)
                ok = ~mask
                stats.setdefault("cos_index", []).append(float(cos[ok].mean()) if ok.any() else float("nan"))
                stats.setdefault("index_used", []).append(float(ok.float().sum(dim=1).mean()))
        return [NegativeBlock(logits, self.weight, mask)]


def build_samplers(cfg: NegativesConfig, after_warmup: bool, index: "EpochIndex | None" = None) -> list[NegativeSampler]:
    """The samplers in use: in-batch only before the warm-up ends, ``cfg.sources`` after
    (``index`` needs the epoch's refreshed index)."""
    if not after_warmup:
        return [InBatchNegatives()]
    out: list[NegativeSampler] = []
    for src in cfg.sources:
        if src == "in_batch":
            out.append(InBatchNegatives())
        elif src == "hard" and cfg.hard_weight > 0:
            out.append(HardNegatives(cfg.hard_weight, cfg.lam_min, cfg.lam_max))
        elif src == "noise" and cfg.noise_ratio > 0:
            out.append(NoiseNegatives(cfg.noise_ratio, cfg.noise_steps, cfg.noise_step_size))
        elif src == "index" and cfg.index_weight > 0 and index is not None:
            out.append(IndexNegatives(index, cfg.index_weight, cfg.lam_min, cfg.lam_max))
    return out
