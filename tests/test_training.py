"""Single-process training: run directory contents, exact resume, evaluate, ablation switches."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.train.report import read_metrics
from fenrec_dist.train.single import evaluate_run, train_single

KEYS = {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"}


class Interrupt(Exception):
    pass


def _cfg(data, **kw):
    return load_config(None, tiny_overrides(data, **kw))


def test_run_dir_final_json_and_exact_resume(tiny_data, tmp_path):
    cfg = _cfg(tiny_data)
    full = train_single(cfg, tmp_path / "full", log=lambda *_: None)
    assert set(full) == {"best_epoch", "valid", "test"}
    assert set(full["test"]) == KEYS and set(full["valid"]) == KEYS
    on_disk = json.loads((tmp_path / "full" / "final.json").read_text())
    assert on_disk == full
    for f in ("config.yaml", "metrics.jsonl", "curves.png", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (tmp_path / "full" / f).exists(), f
    assert list((tmp_path / "full" / "tensorboard").iterdir())
    recs = read_metrics(tmp_path / "full")
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert [r["phase"] for r in recs] == ["warmup", "hard", "hard"]

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_single(_cfg(tiny_data), tmp_path / "cut", log=stop_after_epoch_1)
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [0, 1]
    resumed = train_single(_cfg(tiny_data), tmp_path / "cut", resume=True, log=lambda *_: None)
    cut = read_metrics(tmp_path / "cut")
    assert [r["epoch"] for r in cut] == [0, 1, 2]
    for a, b in zip(recs, cut):  # bit-for-bit the same training
        assert a["loss"] == b["loss"] and a["valid"] == b["valid"]
    assert resumed == full
    assert evaluate_run(tmp_path / "cut", log=lambda *_: None) == full


def test_ablation_switches_change_the_objective(tiny_data, tmp_path):
    base = train_single(_cfg(tiny_data, train__epochs=1), tmp_path / "a", log=lambda *_: None)
    no_soft = train_single(_cfg(tiny_data, train__epochs=1, loss__soft_labels=False), tmp_path / "b",
                           log=lambda *_: None)
    ra, rb = read_metrics(tmp_path / "a")[0], read_metrics(tmp_path / "b")[0]
    assert ra["loss"]["rec"] != rb["loss"]["rec"]
    assert base["test"] != no_soft["test"]
    only_rec = train_single(_cfg(tiny_data, train__epochs=1, loss__lambda_coarse=0, loss__beta_fine=0),
                            tmp_path / "c", log=lambda *_: None)
    rc = read_metrics(tmp_path / "c")[0]
    assert rc["loss"]["coarse"] == 0.0 and rc["loss"]["fine"] == 0.0 and rc["time"]["cluster"] < 0.5
    assert only_rec["test"]


def test_time_limit_stops_between_epochs_and_still_tests_the_best(tiny_data, tmp_path):
    lines: list[str] = []
    final = train_single(_cfg(tiny_data, train__time_limit_min=1e-6), tmp_path / "run", log=lines.append)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [0]  # one epoch per start, at least
    assert any("time_limit_min" in line for line in lines)
    assert final["best_epoch"] == 0 and set(final["test"]) == KEYS


def test_fused_adam_matches_the_per_parameter_loop():
    """``make_adam`` (fused kernel) gives the parameters of torch's plain Adam loop after 20
    steps of the same gradients, with and without weight decay."""
    import copy

    import torch

    from fenrec_dist.train.loop import make_adam

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g) for p in net.parameters()] for _ in range(20)]
    for wd in (0.0, 0.01):
        a, b = copy.deepcopy(net), copy.deepcopy(net)
        opts = [make_adam(a.parameters(), 1e-2, wd), torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=wd,
                                                                        foreach=False)]
        for step_grads in grads:
            for m, opt in zip((a, b), opts):
                for p, gr in zip(m.parameters(), step_grads):
                    p.grad = gr.clone()
                opt.step()
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-6, rtol=0)
        assert not torch.equal(a[1].weight, net[1].weight)


def test_save_state_is_atomic_and_loads_without_pickle(tmp_path):
    import torch

    from fenrec_dist.train.checkpoint import load_state, save_state

    path = tmp_path / "ck" / "last.pt"
    save_state(path, {"w": torch.arange(6.0).view(2, 3), "epoch": 3})
    st = load_state(path)
    assert st["epoch"] == 3 and torch.equal(st["w"], torch.arange(6.0).view(2, 3))

    class NotSerialisable:  # torch.save fails part-way: the old checkpoint must survive intact
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_state(path, {"w": torch.zeros(2), "bad": NotSerialisable()})
    assert load_state(path)["epoch"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind

    path.write_bytes(b"not a checkpoint")  # a corrupt or foreign file: a clear error, nothing unpickled
    with pytest.raises(Exception):
        load_state(path)
