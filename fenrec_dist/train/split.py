"""Inter-op parallel encoding of a training step (``train.split_encoder``).

A step encodes 2B rows (the anchors and their same-target partners). Here they are dealt
into ``parts`` groups of equal length mix (rows sorted by length, dealt round-robin), and
each group is encoded, forward and later backward, on its own Python thread with its own
intra-op thread count; PyTorch releases the GIL inside its operators, so the groups run on
separate cores at once. The loss sees the joined representations as one leaf tensor; after
its backward each group's encoder backward runs on its thread (``torch.autograd.grad``
with the leaf's gradient), and the groups' parameter gradients are added to ``.grad`` in
group order, so a step is deterministic.

Outputs are each row's own (the encoder treats rows independently): with dropout off a
step equals the plain step up to the order of the gradient sums (tests/test_split.py).
With dropout on, each group draws its masks from its own generator, seeded per step from
torch's default generator on the calling thread: a run repeats and resumes exactly, but
its masks are not those of a run without the split.

Why: on a 2-core machine the step's many small operators scale poorly with intra-op
threads (0.89-1.41x from 1 to 2 threads, by machine), while two encoders side by side
scale 1.7x (``bench/bench_threads.py``, ``bench/bench_split.py``).
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from fenrec_dist.config import Config
from fenrec_dist.model.dropout import mask_generator
from fenrec_dist.train.loop import encode_by_length

Finish = Callable[[], None]


def _own_thread_count(n: int) -> None:
    """Give the calling thread ``n`` intra-op threads. ATen sets a thread's count from a
    process-wide default at its first parallel call, so that happens first; after it, later
    ``torch.set_num_threads`` calls of other threads leave this one alone."""
    torch.get_num_threads()
    torch.set_num_threads(n)


def split_blocker(cfg: Config, device: torch.device, threads: int) -> str | None:
    """Why ``train.split_encoder`` cannot apply to a one-process run, or None when it can."""
    if device.type != "cpu":
        return f"it splits CPU work, and this run trains on {device}"
    if cfg.model.encoder != "sasrec":
        return f"model.encoder={cfg.model.encoder} draws its dropout masks from the shared generator"
    if threads < 2:
        return f"{threads} intra-op thread (train.threads); the two encoding threads need 2"
    return None


class SplitEncoder:
    """Encode a step's rows in ``parts`` groups on as many threads.

    Args:
        encoder: the module (train mode) mapping long [n, L] -> float [n, d].
        device: a CPU device.
        parts: number of groups and threads (>= 2).
        threads_per_part: intra-op threads of each group's thread.
    """

    def __init__(self, encoder: torch.nn.Module, device: torch.device, parts: int = 2,
                 threads_per_part: int = 1) -> None:
        if parts < 2:
            raise ValueError(f"parts must be >= 2, got {parts}")
        self.encoder = encoder
        self.device = device
        self.parts = parts
        caller = torch.get_num_threads()
        self.pool = ThreadPoolExecutor(parts, thread_name_prefix="fenrec-encode",
                                       initializer=_own_thread_count, initargs=(threads_per_part,))
        # start every thread now (a barrier makes each task wait for a thread of its own), then give
        # the caller its count back: set_num_threads also sets the default of threads not yet started
        barrier = threading.Barrier(parts)
        list(self.pool.map(lambda _: barrier.wait(), range(parts)))
        torch.set_num_threads(caller)
        # the threads end with this object when a run stops on an exception before ``close``
        self._finalizer = weakref.finalize(self, self.pool.shutdown, wait=False)

    def groups(self, ids: np.ndarray) -> list[np.ndarray]:
        """Row indices of each group: rows sorted by length (stable), dealt round-robin."""
        order = np.argsort((ids != 0).sum(axis=1), kind="stable")
        return [order[k::self.parts] for k in range(self.parts)]

    def encode(self, ids: np.ndarray) -> tuple[torch.Tensor, Finish]:
        """ids int [N, L] -> (z float [N, d] in row order, finish).

        ``z`` is built from detached per-group leaves: call ``finish()`` after the loss's
        backward has filled their gradients, to run the encoder's backward and add its
        parameter gradients to ``.grad``.
        """
        groups = [g for g in self.groups(ids) if len(g)]
        seeds = torch.randint(0, 2**62, (len(groups),)).tolist()  # from the default generator: checkpointed

        def forward(k: int) -> torch.Tensor:
            with mask_generator(torch.Generator().manual_seed(int(seeds[k]))):
                return encode_by_length(self.encoder, ids[groups[k]], self.device,
                                        packs=bool(getattr(self.encoder, "packs_tokens", False)))

        outs = list(self.pool.map(forward, range(len(groups))))
        leaves = [o.detach().requires_grad_() for o in outs]
        inverse = torch.from_numpy(np.argsort(np.concatenate(groups), kind="stable")).to(self.device)
        z = torch.cat(leaves)[inverse]
        params = [p for p in self.encoder.parameters() if p.requires_grad]

        def backward(k: int) -> tuple[torch.Tensor | None, ...] | None:
            if leaves[k].grad is None:
                return None
            return torch.autograd.grad(outs[k], params, leaves[k].grad, allow_unused=True)

        def finish() -> None:
            for grads in list(self.pool.map(backward, range(len(groups)))):
                if grads is None:
                    continue
                for p, g in zip(params, grads):
                    if g is not None:
                        p.grad = g if p.grad is None else p.grad.add_(g)

        return z, finish

    def close(self) -> None:
        self._finalizer.detach()
        self.pool.shutdown(wait=True)
