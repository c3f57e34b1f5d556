"""train.cpu_bf16: bf16 catalogue products and encoder autocast on CPU, everything else float32."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.losses.soft_labels import soft_label_loss, soft_label_loss_from_reprs
from fenrec_dist.train.precision import StepPrecision, cpu_has_native_bf16, cpu_step_precision
from fenrec_dist.train.report import read_metrics
from fenrec_dist.train.single import train_single


def _batch(seed: int = 11, b: int = 32, d: int = 16, items: int = 301):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, d, generator=g) * 2).requires_grad_(True)
    emb = torch.randn(items, d, generator=g).requires_grad_(True)
    future = torch.randint(1, items, (b, 3), generator=g)
    flen = torch.randint(1, 4, (b,), generator=g)
    future[flen < 3, 2] = 0
    future[flen < 2, 1] = 0
    return z, emb, future, flen


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def test_bf16_catalogue_loss_equals_its_emulation_and_stays_near_float32():
    """The bf16 path is the plain loss of logits scored from bf16-rounded operands (float32
    sums) and rounded to bf16; its gradients are the float32 formulas with the softmax and
    the operands and results of the two backward products rounded to bf16."""
    z, emb, future, flen = _batch()
    fast = soft_label_loss_from_reprs(z, emb, future, flen, 0.2, matmul_dtype=torch.bfloat16)
    emulated = soft_label_loss(_bf16(_bf16(z) @ _bf16(emb).t()), future, flen, 0.2)
    full = soft_label_loss(z @ emb.t(), future, flen, 0.2)
    assert fast.item() == pytest.approx(emulated.item(), rel=2e-6)
    assert fast.item() != full.item()  # the products really ran in bf16
    assert fast.item() == pytest.approx(full.item(), rel=1e-2)

    gz, gw = torch.autograd.grad(fast, [z, emb])
    with torch.no_grad():  # emulated backward (B = 32 rows, the mean's 1/B in ``row``)
        logits = _bf16(_bf16(z) @ _bf16(emb).t())
        logits[:, 0] = float("-inf")
        e = (logits - logits.amax(1, keepdim=True)).exp()
        total = e.sum(1, keepdim=True)
        label = torch.zeros_like(logits)
        from fenrec_dist.losses.soft_labels import soft_label_weights

        label.scatter_add_(1, future, soft_label_weights(flen, 3, 0.2))
        label[:, 0] = 0
        row = 1.0 / (total * z.shape[0])
        eb = _bf16(e)
        want_gz = _bf16(eb @ _bf16(emb)) * row - (label / z.shape[0]) @ emb
        want_gw = _bf16(eb.t() @ _bf16(z * row)) - (label / z.shape[0]).t() @ z
    assert torch.allclose(gz, want_gz, atol=1e-6, rtol=1e-4)
    assert torch.allclose(gw, want_gw, atol=1e-6, rtol=1e-4)
    full_gz, full_gw = torch.autograd.grad(full, [z, emb])
    assert not torch.equal(gz, full_gz)
    assert (gz - full_gz).norm() / full_gz.norm() < 2e-2
    assert (gw - full_gw).norm() / full_gw.norm() < 2e-2
    assert torch.equal(gw[0], torch.zeros(16))  # padding row: no gradient


def test_float32_catalogue_dtype_is_the_exact_path():
    z, emb, future, flen = _batch(12)
    a = soft_label_loss_from_reprs(z, emb, future, flen, 0.2)
    b = soft_label_loss_from_reprs(z, emb, future, flen, 0.2, matmul_dtype=torch.float32)
    assert torch.equal(a, b)


def test_step_precision_follows_the_config_and_the_device(tmp_path):
    on = load_config(None, ["train.cpu_bf16=true"])
    off = load_config(None, [])
    assert cpu_step_precision(off, torch.device("cpu")) == StepPrecision()
    assert cpu_step_precision(on, torch.device("cuda")) == StepPrecision()  # GPUs use deepspeed.bf16
    p = cpu_step_precision(on, torch.device("cpu"))
    assert p.catalogue_dtype == torch.bfloat16 and p.autocast is not None
    lin = torch.nn.Linear(4, 3)
    with p.autocast():  # type: ignore[attr-defined]
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16


@pytest.mark.parametrize("flags,want", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx2 amx_bf16 amx_tile", True),
    ("fpu avx2 avx512f avx512_vnni", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, want):
    f = tmp_path / "cpuinfo"
    f.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(f) is want
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_has_native_bf16(tmp_path / "noflags") is None
    assert cpu_has_native_bf16(tmp_path / "missing") is None


def test_cpu_bf16_training_reaches_the_step_and_stays_near_float32(tiny_data, tmp_path):
    """One epoch each way from the same seed: the bf16 run's losses differ (the option reaches
    the step) but by well under 1%; weights stay float32 (the checkpoint)."""
    runs = {}
    for name, flag in (("fp32", "false"), ("bf16", "true")):
        cfg = load_config(None, tiny_overrides(tiny_data, train__epochs=2, train__cpu_bf16=flag))
        train_single(cfg, tmp_path / name, log=lambda *_: None)
        runs[name] = read_metrics(tmp_path / name)
    for epoch in (0, 1):  # warm-up and hard-negative epochs
        a, b = runs["fp32"][epoch]["loss"], runs["bf16"][epoch]["loss"]
        assert a["rec"] != b["rec"]
        for k in ("total", "rec", "coarse", "fine"):
            assert b[k] == pytest.approx(a[k], rel=1e-2), (epoch, k)
    state = torch.load(tmp_path / "bf16" / "checkpoints" / "best.pt", weights_only=True)
    tensors = [v for v in (state.get("model", state)).values() if torch.is_tensor(v) and v.is_floating_point()]
    assert tensors and all(t.dtype == torch.float32 for t in tensors)
