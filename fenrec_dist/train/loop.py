"""The per-epoch work, free of any assumption about processes or devices.

Both the single-process driver and the Ray Train worker call these functions; the
distributed parts (gathering representations, reducing metric sums) come in as
arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from fenrec_dist.data.dataset import EvalTable, SampleTable, right_pad
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.metrics import candidate_ranks, first_kept, overlap_recall, rank_metrics, target_ranks, topk_items
from fenrec_dist.model.base import SequenceEncoder
from fenrec_dist.model.packing import length_chunks
from fenrec_dist.train.batches import PartnerIndex, epoch_rng, to_tensor
from fenrec_dist.train.memory import HeapTrimmer

if TYPE_CHECKING:
    from fenrec_dist.negatives.item_index import ItemIndex
    from fenrec_dist.negatives.refresh import EpochIndex

StepFn = Callable[[torch.Tensor], None]


def torch_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0) -> StepFn:
    """The plain optimisation step: backward, clip, step, zero_grad(set_to_none=True)."""

    def step(loss: torch.Tensor) -> None:
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused kernel (one pass over all parameters instead of a loop of ops):
    0.7 ms a step against 3.5 ms for ``foreach`` on this CPU for the Beauty SASRec, and the
    same parameters to 1e-6 after 20 steps (tests/test_training.py)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def encode_by_length(net: Callable[[torch.Tensor], torch.Tensor], ids: np.ndarray, device: torch.device,
                     chunk_overhead: int = 512, packs: bool = False) -> torch.Tensor:
    """Encode rows int [N, L] in length-sorted chunks (``length_chunks``) so each chunk's
    padding is trimmed (anchors may be length-grouped, ``train.length_grouping``; their same-target
    partners never are).
    With ``packs`` (an encoder that groups rows by length itself: SASRec's ``pack_tokens``)
    the whole batch goes through one call. Returns float [N, d] in the original row order;
    each row's output is unchanged."""
    if packs:
        return net(to_tensor(ids, device))
    lengths = (ids != 0).sum(axis=1)
    chunks = length_chunks(lengths, chunk_overhead)
    order = np.concatenate(chunks)
    outs = [net(to_tensor(ids[c], device)) for c in chunks]
    z = torch.cat(outs)
    inv = torch.from_numpy(np.argsort(order, kind="stable")).to(z.device)
    return z[inv]


@dataclass
class EpochResult:
    losses: dict[str, float] = field(default_factory=dict)  # means over batches
    stats: dict[str, float] = field(default_factory=dict)  # negative diagnostics, means over batches
    samples: int = 0
    seconds: float = 0.0
    trims: int = 0  # heap trims during the epoch (``HeapTrimmer``)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def step_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator for the epoch's lam and noise draws: identical on every rank, since
    they act on the gathered global batch."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 101)


def train_epoch(
    net: Callable[[torch.Tensor], torch.Tensor],
    encoder: SequenceEncoder,
    step: StepFn,
    table: SampleTable,
    partners: PartnerIndex,
    partner_table: SampleTable,
    batches: Iterable[np.ndarray],
    loss_fn: FENRecLoss,
    epoch: int,
    intents: IntentClusters | None,
    seed: int,
    device: torch.device,
    rank: int = 0,
    progress: bool = False,
    num_batches: int | None = None,
    autocast: Callable[[], object] | None = None,
    index: "EpochIndex | None" = None,
    trim_every: int = 0,
    trim_growth_mib: float = 0.0,
    item_miner: "Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None" = None,
) -> EpochResult:
    """One epoch of FENRec training.

    Args:
        net: callable long [2B, L] -> float [2B, d] (the model, or its DeepSpeed engine).
        encoder: the underlying encoder (for the item table).
        step: consumes the scalar loss (backward + optimizer step).
        table: the anchors' samples; ``batches`` index into it.
        partners: same-target groups over ``partner_table`` (the whole training set).
        partner_table: where partners are drawn from (equals ``table`` in one process).
        batches: int arrays of row indices of ``table``.
        loss_fn, epoch, intents: the objective, the 0-based epoch, this epoch's clusters.
        seed, rank: make the partner draws and the step generator deterministic.
        index: the epoch's refreshed negative index (``negatives.sources`` has ``index``), or None.
        item_miner: (anchor representations float [B, d], their soft-label windows int [B, H+1])
            -> hard items long [B, K] from the epoch's item index (sampled L_rec), or None.
        trim_every, trim_growth_mib: return freed heap pages to the OS every this many steps
            and/or when the resident size grew by this many MiB since the last trim (0 = never);
            see ``train.memory.HeapTrimmer``.
    """
    if hasattr(net, "train"):
        net.train()  # type: ignore[union-attr]
    encoder.train()
    rng = epoch_rng(seed, epoch, 1000 + rank)
    gen = step_generator(seed, epoch)
    sums: dict[str, float] = {}
    stat_sums: dict[str, float] = {}
    stat_counts: dict[str, int] = {}
    n_batches = 0
    samples = 0
    trimmer = HeapTrimmer(trim_every, trim_growth_mib)
    trimmer.start()
    t0 = time.perf_counter()
    # disable=None: tqdm draws only on a terminal; a log file or pipe (nohup, ray job logs)
    # gets the per-epoch lines without carriage-return redraws between them
    bar = tqdm(batches, total=num_batches, desc=f"epoch {epoch}", leave=False, disable=None if progress else True,
               mininterval=2.0)
    for b in bar:
        # Partners are looked up by global sample index in partner_table.
        anchors_global = table.sample_id[b] if partner_table is not table else b
        p = partners.draw(anchors_global, partner_table.target, rng)
        ids = np.concatenate([table.inputs[b], partner_table.inputs[p]], axis=0)
        ctx = autocast() if autocast is not None else torch.autocast("cpu", enabled=False)
        with ctx:  # type: ignore[attr-defined]
            z = encode_by_length(net, ids, device, packs=bool(getattr(encoder, "packs_tokens", False)))
        z = z.float()
        bsz = len(b)
        mined = item_miner(z[:bsz].detach(), table.future[b]) if item_miner is not None else None
        parts = loss_fn(
            z[:bsz], z[bsz:], encoder.item_weights().float(),
            to_tensor(table.target[b], device), to_tensor(table.future[b], device),
            to_tensor(table.future_len[b], device), epoch, intents, gen,
            anchor_ids=to_tensor(b, device) if index is not None else None,  # rows of the epoch index
            partner_ids=to_tensor(p, device) if index is not None else None,
            index=index, **({"mined_items": mined} if mined is not None else {}),
        )
        if not torch.isfinite(parts.total):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, batch {n_batches}: {parts.as_floats()}")
        step(parts.objective if parts.objective is not None else parts.total)
        for k, v in parts.as_floats().items():
            sums[k] = sums.get(k, 0.0) + v
        for k, v in parts.stats.items():
            if np.isfinite(v):
                stat_sums[k] = stat_sums.get(k, 0.0) + v
                stat_counts[k] = stat_counts.get(k, 0) + 1
        n_batches += 1
        samples += bsz
        trimmer.after_step(n_batches)
        if progress and n_batches % 20 == 0:
            bar.set_postfix(loss=f"{sums['total'] / n_batches:.4f}")
    bar.close()
    return EpochResult(losses={k: v / max(n_batches, 1) for k, v in sums.items()}, samples=samples,
                       seconds=time.perf_counter() - t0, stats={k: v / stat_counts[k] for k, v in stat_sums.items()},
                       trims=trimmer.trims)


@torch.no_grad()
def embed(encoder: SequenceEncoder, inputs: np.ndarray, batch_size: int, device: torch.device,
          rows: np.ndarray | None = None) -> np.ndarray:
    """Eval-mode last-position representations.

    Args:
        inputs: int [N, L] left-padded sequences.
        rows: int64 [n] the rows of ``inputs`` to embed (None: all), read batch by batch, so
            the chosen inputs are never copied as a whole.

    Returns:
        float32 [n, d] in the order of ``rows`` (of ``inputs`` when None; computed in length
        order, so padding is trimmed away batch by batch).
    """
    was_training = encoder.training
    encoder.eval()
    if rows is None:
        lengths = (inputs != 0).sum(axis=1)
    else:
        lengths = np.concatenate([(inputs[rows[i: i + 65536]] != 0).sum(axis=1) for i in range(0, len(rows), 65536)]
                                 or [np.zeros(0, dtype=np.int64)])
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(order), encoder.item_emb.embedding_dim), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        out[idx] = encoder(to_tensor(inputs[idx if rows is None else rows[idx]], device)).float().cpu().numpy()
    encoder.train(was_training)
    return out


def exclude_block(values: np.ndarray, offsets: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 of a ragged int array, right-padded with 0 to their longest row."""
    offs = offsets[start : stop + 1]
    return right_pad(values, offs, max(1, int(np.diff(offs).max(initial=0))))


ANN_RECALL_K = 20  # eval.ann: the recall reported is that of the exact top-20


@torch.no_grad()
def split_ranks(
    encoder: SequenceEncoder,
    table: EvalTable,
    split: str,
    max_len: int,
    batch_size: int,
    item_chunk: int,
    device: torch.device,
) -> torch.Tensor:
    """long [U]: the 0-based full-ranking rank (``metrics.target_ranks``) of each of the table's
    users' ``split`` target ('valid' or 'test'), history excluded, in the table's user order."""
    items = encoder.item_weights().detach().float()
    ranks = [target_ranks(torch.from_numpy(reprs).to(device), items, targets, ex, item_chunk).cpu()
             for _, reprs, targets, ex in _eval_batches(encoder, table, split, max_len, batch_size, device)]
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def _eval_batches(encoder: SequenceEncoder, table: EvalTable, split: str, max_len: int, batch_size: int,
                  device: torch.device) -> Iterator[tuple[slice, np.ndarray, torch.Tensor, torch.Tensor]]:
    """The ``split``'s users in batches, in table order: (their rows, representations float32
    [b, d], targets long [b] and history long [b, H] to exclude, 0-padded, on ``device``)."""
    inputs = table.inputs(split, max_len)
    targets = table.valid if split == "valid" else table.test
    ex_values, ex_offsets = table.exclude(split)
    reprs = embed(encoder, inputs, batch_size, device)
    for i in range(0, len(inputs), batch_size):
        j = min(i + batch_size, len(inputs))
        yield (slice(i, j), reprs[i:j], to_tensor(targets[i:j], device),
               to_tensor(exclude_block(ex_values, ex_offsets, i, j), device))


@torch.no_grad()
def ann_split_ranks(
    encoder: SequenceEncoder,
    table: EvalTable,
    split: str,
    max_len: int,
    batch_size: int,
    item_chunk: int,
    device: torch.device,
    index: "ItemIndex",
    depth: int,
    recall_rows: np.ndarray,
) -> tuple[torch.Tensor, float, int]:
    """``split_ranks`` with the item index (``eval.ann``): each user's top ``max(depth,
    ANN_RECALL_K) + H`` items are retrieved (H: the batch's history width) and the target is
    ranked among them (``metrics.candidate_ranks``; not retrieved = rank I, past every cut-off).

    Args:
        index: the item index of the encoder's current item table; depth: max(eval.ks);
        recall_rows: bool [U], the users whose ANN top-20 (history excluded) is compared with
            the exact top-20 (``metrics.topk_items``).

    Returns:
        (ranks long [U] in the table's user order, sum of the recall rows' recall of the exact
        top-20, number of recall rows).
    """
    items = encoder.item_weights().detach().float()
    ranks, recall, n_recall = [], 0.0, 0
    for at, reprs, targets, ex in _eval_batches(encoder, table, split, max_len, batch_size, device):
        _, cand = index.search(reprs, max(depth, ANN_RECALL_K) + ex.shape[1])
        q, cand_t = torch.from_numpy(reprs).to(device), torch.from_numpy(cand).to(device)
        ranks.append(candidate_ranks(q, items, cand_t, targets, ex, items.shape[0] - 1).cpu())
        rows = torch.from_numpy(np.flatnonzero(recall_rows[at])).to(device)
        if len(rows):
            exact = topk_items(q[rows], items, ex[rows], ANN_RECALL_K, item_chunk)[1]
            recall += float(overlap_recall(first_kept(cand_t[rows], ex[rows], ANN_RECALL_K), exact).sum())
            n_recall += len(rows)
    return (torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)), recall, n_recall


def evaluate_sums(
    encoder: SequenceEncoder,
    table: EvalTable,
    split: str,
    max_len: int,
    batch_size: int,
    item_chunk: int,
    ks: list[int],
    device: torch.device,
    index: "ItemIndex | None" = None,
    recall_rows: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metric *sums* (and 'count') of ``split`` ('valid' or 'test') over the table's users.

    With an ``index`` (``eval.ann``) the ranks are ``ann_split_ranks``' and the sums also hold
    'ann_recall_sum' and 'ann_recall_count' (the recall of the exact top-20 on ``recall_rows``,
    bool [U]; every user when None)."""
    if index is None:
        return rank_metrics(split_ranks(encoder, table, split, max_len, batch_size, item_chunk, device), ks)
    rows = np.ones(len(table.user), dtype=bool) if recall_rows is None else recall_rows
    ranks, recall, n = ann_split_ranks(encoder, table, split, max_len, batch_size, item_chunk, device, index,
                                       max(ks), rows)
    return {**rank_metrics(ranks, ks), "ann_recall_sum": recall, "ann_recall_count": float(n)}
