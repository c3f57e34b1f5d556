"""Warm DeepSpeed's CPU communication op once (``make test`` runs this before pytest).

On CPU every DeepSpeed initialisation compiles ``deepspeed_shm_comm`` on first use
(30-55 s); the result is cached in TORCH_EXTENSIONS_DIR.
"""

from __future__ import annotations

import os
import socket
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(k, v)
    t0 = time.perf_counter()
    from fenrec_dist.distributed.buildlock import clear_stale_build_lock

    clear_stale_build_lock()
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="gloo")
    model = torch.nn.Linear(4, 4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters()),
                                      config={"train_micro_batch_size_per_gpu": 1})
    loss = engine(torch.randn(1, 4)).sum()
    engine.backward(loss)
    engine.step()
    print(f"deepspeed {deepspeed.__version__} ready on CPU in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
