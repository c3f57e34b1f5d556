"""The graph-capturable step (model/graphed.py): static-shape encoder + the eager FENRec loss.

On CPU the capturable step runs its code path without capture; its loss and gradients must be
the eager packed step's. On CUDA (the GPU machine runs this file in bench/gpu/gpu_check.sh) the
captured graphs must give the uncaptured values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fenrec_dist.config import LossConfig, ModelConfig, NegativesConfig
from fenrec_dist.negatives.intents import IntentClusters
from fenrec_dist.losses.fenrec import FENRecLoss
from fenrec_dist.model import SASRec
from fenrec_dist.model.graphed import GraphedEncoder
from fenrec_dist.model.packing import StaticPlan

ITEMS, MAX_LEN, D = 40, 12, 16


def _batch(rows: int, seed: int) -> dict[str, np.ndarray]:
    """A training batch: anchors and partners' inputs [2 * rows, MAX_LEN], targets, future windows."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((2 * rows, MAX_LEN), dtype=np.int64)
    for i, n in enumerate(rng.integers(1, MAX_LEN + 1, 2 * rows)):
        ids[i, MAX_LEN - n:] = rng.integers(1, ITEMS + 1, n)
    target = rng.integers(1, ITEMS // 2, rows)  # repeats: same-target false negatives masked
    future = np.stack([target, rng.integers(1, ITEMS + 1, rows), rng.integers(1, ITEMS + 1, rows)], 1)
    return {"ids": ids, "target": target, "future": future, "future_len": rng.integers(1, 4, rows)}


def _models(device: str = "cpu") -> tuple[SASRec, SASRec]:
    cfg = ModelConfig(hidden=D, heads=2, layers=2, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    eager = SASRec(cfg, ITEMS, MAX_LEN).to(device).train()
    static = SASRec(dataclasses.replace(cfg, static_shapes=True, token_multiple=16), ITEMS, MAX_LEN).to(device).train()
    static.load_state_dict(eager.state_dict())
    return eager, static


def _loss(model: SASRec, z: torch.Tensor, batch: dict[str, np.ndarray], epoch: int,
          intents: IntentClusters | None, device: str) -> torch.Tensor:
    loss_fn = FENRecLoss(LossConfig(lambda_coarse=0.3, beta_fine=0.1),
                         NegativesConfig(warmup_epochs=1, noise_ratio=2.0, lam_min=0.4, lam_max=0.4))
    b = len(batch["target"])
    t = {k: torch.from_numpy(v).to(device) for k, v in batch.items() if k != "ids"}
    parts = loss_fn(z[:b], z[b:], model.item_weights().float(), t["target"], t["future"], t["future_len"],
                    epoch, intents, torch.Generator().manual_seed(7))
    return parts.objective


def _grads(model: SASRec) -> list[torch.Tensor]:
    out = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("epoch", [0, 1], ids=["warmup", "hard+noise"])
def test_capturable_step_equals_eager_step_on_cpu(epoch):
    """Same inputs -> the same loss and gradients: the eager packed step of the trainer (the
    model called on the whole batch, which packs it in training, + FENRecLoss) and the capturable step (StaticPlan + GraphedEncoder +
    the same loss), with the fine term's intents from the torch backend."""
    eager, static = _models()
    batch = _batch(12, seed=epoch)
    reprs = torch.randn(200, D, generator=torch.Generator().manual_seed(1))
    intents = IntentClusters.fit(reprs, 6, niter=5, seed=0, backend="torch", device="cpu")
    assert eager.packs_tokens
    z = eager(torch.from_numpy(batch["ids"]))
    ref = _loss(eager, z, batch, epoch, intents, "cpu")
    ref.backward()
    ref_grads = _grads(eager)
    enc = GraphedEncoder(static)
    assert not enc.enabled  # CPU: the same code path, uncaptured
    got = _loss(static, enc(static.static_plan(batch["ids"])), batch, epoch, intents, "cpu")
    got.backward()
    assert enc.eager_calls == 1
    assert float(got.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
    for (name, a), b in zip(static.named_parameters(), ref_grads):
        assert torch.allclose(a.grad, b, atol=1e-6, rtol=1e-5), name


def test_graphed_encoder_refuses_capture_off_cuda():
    _, static = _models()
    with pytest.raises(ValueError, match="CUDA"):
        GraphedEncoder(static, enabled=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_encoder_replays_equal_the_eager_encoder_on_cuda():
    """Captured per shape key; each replay (new data copied into the static inputs) gives the
    eager values; gradients reach the parameters through the graphed backward."""
    _, static = _models("cuda")
    eager_enc = GraphedEncoder(static, enabled=False)
    graphed = GraphedEncoder(static, enabled=True)
    keys = set()
    for seed in range(6):
        batch = _batch(12 + 4 * (seed % 3), seed)
        plan = static.static_plan(batch["ids"], device="cuda")
        keys.add(plan.key)
        w = torch.randn(plan.key[0], D, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        (eager_enc(plan) * w).sum().backward()
        want = _grads(static)
        z = graphed(plan)
        (z * w).sum().backward()
        with torch.no_grad():
            assert torch.allclose(z, eager_enc(plan), atol=1e-5)
        for a, b in zip(_grads(static), want):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert graphed.graphs == len(keys) and graphed.eager_calls == 0


def _fenrec_compute(model: SASRec, intents: IntentClusters, epoch: int, dedup: bool):
    """The whole warm-up step as a function of tensors (plan, target, future, future_len)."""
    loss_fn = FENRecLoss(LossConfig(lambda_coarse=0.3, beta_fine=0.1, dedup_intents=dedup),
                         NegativesConfig(warmup_epochs=1, noise_ratio=2.0, lam_min=0.4, lam_max=0.4))
    gen = torch.Generator().manual_seed(7)

    def compute(*tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        *plan, target, future, future_len = tensors
        z = model.encode_static(StaticPlan.from_tensors(tuple(plan)))
        b = target.shape[0]
        parts = loss_fn(z[:b], z[b:], model.item_weights().float(), target, future, future_len, epoch, intents, gen)
        return {"objective": parts.objective, "total": parts.total.detach(), "rec": parts.rec.detach()}

    return compute


def _step_inputs(model: SASRec, batch: dict[str, np.ndarray], device: str) -> tuple[torch.Tensor, ...]:
    plan = model.static_plan(batch["ids"], device=device)
    rest = tuple(torch.from_numpy(batch[k]).to(device) for k in ("target", "future", "future_len"))
    return plan.tensors() + rest


def test_whole_captured_step_equals_eager_step_on_cpu():
    """CapturedStep's computation (uncaptured on CPU): the warm-up step with dedup_intents off
    gives the trainer's eager step (packed encoder, dedup on) loss and gradients."""
    from fenrec_dist.model.graphed import CapturedStep

    eager, static = _models()
    batch = _batch(12, seed=5)
    reprs = torch.randn(200, D, generator=torch.Generator().manual_seed(1))
    intents = IntentClusters.fit(reprs, 6, niter=5, seed=0, backend="torch", device="cpu")
    z = eager(torch.from_numpy(batch["ids"]))
    want = _loss(eager, z, batch, 0, intents, "cpu")
    want.backward()
    want_grads = _grads(eager)
    step = CapturedStep(list(static.parameters()), _fenrec_compute(static, intents, 0, dedup=False))
    assert not step.enabled
    outs = step(*_step_inputs(static, batch, "cpu"))
    assert float(outs["objective"]) == pytest.approx(float(want.detach()), abs=1e-6)
    for (name, a), b in zip(static.named_parameters(), want_grads):
        assert torch.allclose(a.grad, b, atol=1e-6, rtol=1e-5), name
    assert step.eager_calls == 1 and step.graphs == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_whole_captured_step_replays_equal_eager_on_cuda():
    from fenrec_dist.model.graphed import CapturedStep

    _, static = _models("cuda")
    reprs = torch.randn(200, D, device="cuda")
    intents = IntentClusters.fit(reprs, 6, niter=5, seed=0, backend="torch", device="cuda")
    compute = _fenrec_compute(static, intents, 0, dedup=False)
    eager = CapturedStep(list(static.parameters()), compute, enabled=False)
    captured = CapturedStep(list(static.parameters()), compute, enabled=True)
    shapes = set()
    for seed in range(5):
        inputs = _step_inputs(static, _batch(12 + 4 * (seed % 2), seed), "cuda")
        shapes.add(tuple(tuple(t.shape) for t in inputs))
        want = eager(*inputs)
        want_grads = _grads(static)
        got = captured(*inputs)
        assert torch.allclose(got["objective"], want["objective"], atol=1e-5)
        for a, b in zip(_grads(static), want_grads):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert captured.graphs == len(shapes) and captured.failure is None


def test_cuda_graphs_flag_is_transparent_off_cuda():
    """model.cuda_graphs: on CPU forward takes the static path (no graphs); the graphs live
    outside the module's state: state_dict, deepcopy and pickling are unchanged."""
    import copy
    import pickle

    _, static = _models()
    graphs = SASRec(dataclasses.replace(static.cfg, cuda_graphs=True), ITEMS, MAX_LEN).train()
    graphs.load_state_dict(static.state_dict())
    ids = torch.from_numpy(_batch(8, seed=2)["ids"])
    assert torch.equal(graphs(ids), static(ids))
    enc = graphs.graphed_encoder()
    assert not enc.enabled and graphs.graphed_encoder() is enc
    assert list(graphs.state_dict()) == list(static.state_dict())
    twin = copy.deepcopy(graphs)
    assert "_graphed_encoder" not in twin.__dict__ and torch.equal(twin(ids), graphs(ids))
    assert "_graphed_encoder" not in pickle.loads(pickle.dumps(graphs)).__dict__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("token_multiple", [16, 0], ids=["buckets", "full-grid"])
def test_model_forward_with_cuda_graphs_under_the_trainers_autocast(token_multiple):
    """model(ids) inside torch.autocast(bf16) (the trainer's CUDA policy, weight cache on) with
    model.cuda_graphs: captured per shape, the values of the uncaptured static path (bucketed
    host plans, and the full grid planned on the device)."""
    _, static = _models("cuda")
    static.cfg = dataclasses.replace(static.cfg, token_multiple=token_multiple)
    graphs = SASRec(dataclasses.replace(static.cfg, cuda_graphs=True), ITEMS, MAX_LEN).cuda().train()
    graphs.load_state_dict(static.state_dict())
    keys = set()
    for seed in range(4):
        ids = torch.from_numpy(_batch(12 + 4 * (seed % 2), seed)["ids"]).cuda()
        keys.add(graphs.static_plan(ids).key)
        w = torch.randn(ids.shape[0], D, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want = static(ids).float()
        (want * w).sum().backward()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = graphs(ids).float()
        (got * w).sum().backward()
        assert torch.allclose(got, want, atol=2e-2, rtol=2e-2)
        for a, b in zip(graphs.parameters(), static.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=2e-2, rtol=5e-2)
        graphs.zero_grad(set_to_none=True), static.zero_grad(set_to_none=True)
    enc = graphs.graphed_encoder()
    assert enc.failure is None and enc.graphs == len(keys) and enc.eager_calls == 0
