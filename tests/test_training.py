"""Single-process training: run directory contents, exact resume, evaluate, ablation switches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_overrides
from fenrec_dist.config import load_config
from fenrec_dist.train.report import read_metrics
from fenrec_dist.train.local import evaluate_run, train_local

KEYS = {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"}


class Interrupt(Exception):
    pass


def _cfg(data, **kw):
    return load_config(None, tiny_overrides(data, **kw))


def test_run_dir_final_json_and_exact_resume(tiny_data, tmp_path):
    cfg = _cfg(tiny_data)
    full = train_local(cfg, tmp_path / "full", log=lambda *_: None)
    assert set(full) == {"best_epoch", "valid", "test", "epochs_run", "checkpoint"}
    assert full["epochs_run"] == 3 and full["checkpoint"].endswith("checkpoints/checkpoint_000003")
    assert set(full["test"]) == KEYS and set(full["valid"]) == KEYS
    on_disk = json.loads((tmp_path / "full" / "final.json").read_text())
    assert on_disk == full
    for f in ("config.yaml", "metrics.jsonl", "curves.png", "checkpoints/checkpoint_000003/state.pt",
              "checkpoints/checkpoint_000003/best.pt", "checkpoints/checkpoint_000003/rng_rank0.pt"):
        assert (tmp_path / "full" / f).exists(), f
    assert list((tmp_path / "full" / "tensorboard").iterdir())
    recs = read_metrics(tmp_path / "full")
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert [r["phase"] for r in recs] == ["warmup", "hard", "hard"]

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_local(_cfg(tiny_data), tmp_path / "cut", log=stop_after_epoch_1)
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [0, 1]
    resumed = train_local(_cfg(tiny_data), tmp_path / "cut", resume=True, log=lambda *_: None)
    cut = read_metrics(tmp_path / "cut")
    assert [r["epoch"] for r in cut] == [0, 1, 2]
    for a, b in zip(recs, cut):  # bit-for-bit the same training
        assert a["loss"] == b["loss"] and a["valid"] == b["valid"]
    same = lambda f: {k: v for k, v in f.items() if k != "checkpoint"}  # noqa: E731
    assert same(resumed) == same(full)
    assert same(evaluate_run(tmp_path / "cut", log=lambda *_: None)) == same(full)


def test_ablation_switches_change_the_objective(tiny_data, tmp_path):
    base = train_local(_cfg(tiny_data, train__epochs=1), tmp_path / "a", log=lambda *_: None)
    no_soft = train_local(_cfg(tiny_data, train__epochs=1, loss__soft_labels=False), tmp_path / "b",
                           log=lambda *_: None)
    ra, rb = read_metrics(tmp_path / "a")[0], read_metrics(tmp_path / "b")[0]
    assert ra["loss"]["rec"] != rb["loss"]["rec"]
    assert base["test"] != no_soft["test"]
    only_rec = train_local(_cfg(tiny_data, train__epochs=1, loss__lambda_coarse=0, loss__beta_fine=0),
                            tmp_path / "c", log=lambda *_: None)
    rc = read_metrics(tmp_path / "c")[0]
    assert rc["loss"]["coarse"] == 0.0 and rc["loss"]["fine"] == 0.0 and rc["time"]["cluster"] < 0.5
    assert only_rec["test"]


def test_time_limit_stops_between_epochs_and_still_tests_the_best(tiny_data, tmp_path):
    lines: list[str] = []
    final = train_local(_cfg(tiny_data, train__time_limit_min=1e-6), tmp_path / "run", log=lines.append)
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


# --- scripted validation metrics -------------------------------------------------------------

def _weights_key(model) -> bytes:
    """The model's exact parameter bytes (identifies which epoch's weights a model holds)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


class ScriptedValid:
    """Replaces ``single.evaluate`` for the 'valid' split: the n-th distinct set of weights
    validated gets NDCG@20 = script[n] (other keys tell the epochs apart); the same weights met
    again (the best checkpoint loaded by ``finish``) get the same record. 'test' is scored for real."""

    def __init__(self, monkeypatch, script):
        from fenrec_dist.train import trainer as single

        self.script = list(script)
        self.by_weights: dict[bytes, dict[str, float]] = {}
        self.keys: list[bytes] = []
        real = single.evaluate

        def fake(model, data, cfg, split, device, *index):
            if split != "valid":
                return real(model, data, cfg, split, device, *index)
            key = _weights_key(model)
            if key not in self.by_weights:
                e = len(self.keys)
                self.keys.append(key)
                self.by_weights[key] = {k: (self.script[e] if k == "NDCG@20" else 0.01 * (e + 1)) for k in KEYS}
            return dict(self.by_weights[key])

        monkeypatch.setattr(single, "evaluate", fake)


# NDCG@20 per epoch: best at epoch 1, a tie at 2 (not an improvement), worse at 3; with patience 2
# the run must stop there: epochs 4 and 5 (0.9, a new best) must never run.
SCRIPT = [0.1, 0.3, 0.3, 0.2, 0.9, 0.9]


def test_early_stopping_ties_are_not_improvements_and_it_stops_after_patience():
    from fenrec_dist.train.early_stopping import EarlyStopping

    es = EarlyStopping(patience=2)
    assert not es.should_stop
    assert es.update(0.1, 0) and es.update(0.3, 1)
    assert not es.update(0.3, 2)  # a tie
    assert (es.best, es.best_epoch, es.bad_epochs, es.should_stop) == (0.3, 1, 1, False)
    assert es.update(0.31, 3) and es.bad_epochs == 0 and es.best_epoch == 3  # an improvement resets the count
    for patience in (1, 2, 3, 5):
        es = EarlyStopping(patience=patience)
        es.update(1.0, 0)
        stopped_after = None
        for epoch in range(1, 20):
            es.update(1.0 - 0.01 * (epoch % 2), epoch)  # ties and worse values only
            if es.should_stop:
                stopped_after = epoch
                break
        assert stopped_after == patience and es.best_epoch == 0
    es = EarlyStopping(patience=3)
    es.update(0.2, 0), es.update(0.1, 1)
    again = EarlyStopping.from_state(es.state_dict())  # what a checkpoint carries
    assert again == es and again.bad_epochs == 1 and not again.update(0.2, 2) and again.bad_epochs == 2


def test_early_stopping_run_keeps_the_best_epoch_not_the_last(tiny_data, tmp_path, monkeypatch):
    from fenrec_dist.config import load_config as _lc
    from fenrec_dist.model import build_encoder
    from fenrec_dist.train.checkpoint import load_state

    scripted = ScriptedValid(monkeypatch, SCRIPT)
    run = tmp_path / "run"
    final = train_local(_cfg(tiny_data, train__epochs=6, train__patience=2), run, log=lambda *_: None)
    recs = read_metrics(run)
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]  # stopped after 2 non-improving epochs (tie included)
    ndcg = [r["valid"]["NDCG@20"] for r in recs]
    assert ndcg == SCRIPT[:4]
    best = int(np.argmax(ndcg))
    assert best == 1 and final["best_epoch"] == best and recs[-1]["best_epoch"] == best and recs[-1]["best"] == 0.3
    assert final["valid"] == recs[best]["valid"]  # finish() re-scored exactly epoch 1's weights
    assert json.loads((run / "final.json").read_text()) == final
    ckpt = run / "checkpoints" / "checkpoint_000004"
    best_st, last_st = load_state(ckpt / "best.pt"), load_state(ckpt / "state.pt")
    assert best_st["epoch"] == best and last_st["epoch"] == 4
    cfg = _lc(None, tiny_overrides(tiny_data))
    m = build_encoder(cfg.model, best_st["model"]["item_emb.weight"].shape[0] - 1, 10)
    m.load_state_dict(best_st["model"])
    assert _weights_key(m) == scripted.keys[best]
    m.load_state_dict(last_st["model"])
    assert _weights_key(m) == scripted.keys[3] != scripted.keys[best]


def test_resumed_run_keeps_best_epoch_and_stop_epoch_of_an_uninterrupted_one(tiny_data, tmp_path, monkeypatch):
    """Interrupted after epoch 2 (the best is epoch 1, one bad epoch counted), then resumed: the
    early-stopping state and best.pt come back, so the run stops and selects as if never cut."""
    from fenrec_dist.train.checkpoint import load_state

    cfg = dict(train__epochs=6, train__patience=2)
    ScriptedValid(monkeypatch, SCRIPT)
    full = train_local(_cfg(tiny_data, **cfg), tmp_path / "full", log=lambda *_: None)
    ScriptedValid(monkeypatch, SCRIPT)  # a fresh script, shared by both halves of the cut run

    def stop_after_epoch_2(line: str) -> None:
        if line.startswith("epoch   2"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_local(_cfg(tiny_data, **cfg), tmp_path / "cut", log=stop_after_epoch_2)
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [0, 1, 2]
    resumed = train_local(_cfg(tiny_data, **cfg), tmp_path / "cut", resume=True, log=lambda *_: None)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2, 3]
    assert [(r["best"], r["best_epoch"], r["valid"]) for r in a] == [(r["best"], r["best_epoch"], r["valid"]) for r in b]
    strip = lambda f: {k: v for k, v in f.items() if k != "checkpoint"}  # noqa: E731
    assert strip(resumed) == strip(full) and full["best_epoch"] == 1 and full["valid"]["NDCG@20"] == 0.3
    assert load_state(tmp_path / "cut" / "checkpoints" / "checkpoint_000004" / "best.pt")["epoch"] == 1
    assert load_state(tmp_path / "cut" / "checkpoints" / "checkpoint_000004" / "state.pt")["epoch"] == 4


def test_intents_are_clustered_once_per_epoch(tiny_data, tmp_path, monkeypatch):
    from fenrec_dist.negatives.intents import IntentClusters

    original = IntentClusters.fit.__func__
    calls = []

    def spy(cls, reprs, k, *args, **kwargs):
        calls.append((reprs.shape, k, kwargs.get("seed")))
        return original(cls, reprs, k, *args, **kwargs)

    monkeypatch.setattr(IntentClusters, "fit", classmethod(spy))
    cfg = _cfg(tiny_data, train__epochs=2)
    train_local(cfg, tmp_path / "run", log=lambda *_: None)
    from fenrec_dist.data.dataset import load_prepared

    n = len(load_prepared(tiny_data, max_len=10, horizon=2).train)
    assert len(calls) == 2  # one k-means per epoch, over every training sample
    assert all(shape == (n, 16) and k == 8 for shape, k, _ in calls)
    assert calls[0][2] != calls[1][2]  # each epoch its own k-means seed


def test_embed_runs_the_encoder_in_eval_mode_and_restores_the_mode():
    import torch

    from fenrec_dist.config import ModelConfig
    from fenrec_dist.model import SASRec
    from fenrec_dist.train.loop import embed

    torch.manual_seed(0)
    m = SASRec(ModelConfig(hidden=16, heads=2, dropout=0.5, attn_dropout=0.5), num_items=30, max_len=8)
    rng = np.random.default_rng(0)
    inputs = np.zeros((23, 8), dtype=np.int32)
    for i, n in enumerate(rng.integers(1, 9, size=23)):
        inputs[i, 8 - n:] = rng.integers(1, 31, size=n)
    m.train()
    a = embed(m, inputs, 4, torch.device("cpu"))
    assert m.training  # restored
    b = embed(m, inputs, 4, torch.device("cpu"))
    assert a.dtype == np.float32 and a.shape == (23, 16) and np.array_equal(a, b)
    with torch.no_grad():
        noisy = m(torch.from_numpy(inputs).long()).numpy()
        want = m.eval()(torch.from_numpy(inputs).long()).numpy()
    assert not np.allclose(noisy, want, atol=1e-3)  # dropout 0.5 does act in train mode
    assert np.allclose(a, want, atol=1e-5)
    c = embed(m, inputs, 5, torch.device("cpu"))
    assert not m.training and np.allclose(c, want, atol=1e-5)


_UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    """Unpickling it calls ``_record_unpickling``: arbitrary code run by a full-pickle load."""

    def __reduce__(self):
        return (_record_unpickling, ("payload ran",))


def test_load_state_refuses_pickled_objects_but_loads_real_checkpoints(tmp_path):
    import pickle

    import torch

    from fenrec_dist.config import ModelConfig
    from fenrec_dist.model import SASRec
    from fenrec_dist.train.checkpoint import CheckpointError, load_state, rng_state, save_state, set_rng_state
    from fenrec_dist.train.early_stopping import EarlyStopping
    from fenrec_dist.train.loop import make_adam

    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1, "extra": _Payload()}, evil)
    _UNPICKLED.clear()
    with pytest.raises(CheckpointError, match=r"evil\.pt: not loaded: it holds Python objects other than tensors .*\(Unsupported global: GLOBAL test_training\._record_unpickling\)$") as err:
        load_state(evil)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert _UNPICKLED == []  # nothing ran

    torch.manual_seed(0)
    m = SASRec(ModelConfig(hidden=8, heads=2), num_items=20, max_len=5)
    opt = make_adam(m.parameters(), 1e-3)
    m(torch.tensor([[0, 1, 2, 3, 4]])).sum().backward()
    opt.step()
    es = EarlyStopping(3)
    es.update(0.25, 0), es.update(0.2, 1)
    good = tmp_path / "ck" / "last.pt"
    save_state(good, {"model": m.state_dict(), "optimizer": opt.state_dict(), "early_stopping": es.state_dict(),
                      "epoch": 2, "rng": rng_state(), "valid": {"NDCG@20": 0.25}})
    st = load_state(good)
    m2 = SASRec(ModelConfig(hidden=8, heads=2), num_items=20, max_len=5)
    m2.load_state_dict(st["model"])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    make_adam(m2.parameters(), 1e-3).load_state_dict(st["optimizer"])
    assert EarlyStopping.from_state(st["early_stopping"]) == es and st["epoch"] == 2
    set_rng_state(st["rng"])
    assert st["valid"] == {"NDCG@20": 0.25}


def _eval_table(rng, users: int, items: int):
    from fenrec_dist.data.dataset import EvalTable

    hist = []
    for u in range(users):
        n = int(rng.integers(1, 16))  # some histories longer than the window: all of them excluded
        hist.append([int(x) for x in rng.integers(1, items + 1, size=n)])
    valid = [int(rng.integers(1, items + 1)) for _ in range(users)]
    test = [int(rng.integers(1, items + 1)) for _ in range(users)]
    test[0], valid[1] = valid[0], hist[1][0]  # a repeat of valid; a target inside the history
    offsets = np.cumsum([0] + [len(h) for h in hist]).astype(np.int64)
    table = EvalTable(np.arange(users, dtype=np.int64), np.array(sum(hist, []), dtype=np.int32), offsets,
                      np.array(valid, dtype=np.int32), np.array(test, dtype=np.int32))
    return table, hist, valid, test


def test_split_ranks_equal_an_independent_full_ranking(monkeypatch):
    """Both splits: scores = the eval-mode last-position output @ item table^T; the padding and
    every history item (the whole history, plus valid for test) at -inf, the target itself
    always ranked; rank = number of items scoring strictly higher. Then the metrics."""
    import torch

    from fenrec_dist.config import ModelConfig
    from fenrec_dist.metrics import finalize, rank_metrics
    from fenrec_dist.model import SASRec
    from fenrec_dist.train.loop import evaluate_sums, split_ranks

    items, max_len, users = 40, 6, 29
    table, hist, valid, test = _eval_table(np.random.default_rng(3), users, items)
    torch.manual_seed(1)
    m = SASRec(ModelConfig(hidden=16, heads=2, dropout=0.5, attn_dropout=0.5), num_items=items, max_len=max_len)
    m.train()  # evaluation must switch dropout off itself
    plain = SASRec(ModelConfig(hidden=16, heads=2, trim_padding=False, last_position_only=False), items, max_len)
    plain.load_state_dict(m.state_dict())
    plain.eval()
    w = m.item_emb.weight.detach().double()
    for split in ("valid", "test"):
        want = []
        for u in range(users):
            seq = hist[u] + ([valid[u]] if split == "test" else [])
            window = seq[-max_len:]
            ids = torch.tensor([[0] * (max_len - len(window)) + window])
            with torch.no_grad():
                z = plain(ids)[0].double()
            s = w @ z
            target = (valid if split == "valid" else test)[u]
            t = s[target].item()
            s[0] = float("-inf")
            s[[i for i in seq if i != target]] = float("-inf")
            want.append(int((s > t).sum()))
        got = split_ranks(m, table, split, max_len, batch_size=4, item_chunk=7, device=torch.device("cpu"))
        assert got.tolist() == want, split
        assert finalize(evaluate_sums(m, table, split, max_len, 5, 9, [5, 10, 20], torch.device("cpu"))) == \
            finalize(rank_metrics(torch.tensor(want), [5, 10, 20]))
        assert m.training
    assert len(set(want)) > 5  # the ranks spread: a real check, not all ties


def test_deferred_interrupts_finish_the_block_then_raise():
    import os
    import signal

    from fenrec_dist.train.interrupts import deferred_interrupts

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in (signal.SIGINT, signal.SIGTERM):
        done = []
        with pytest.raises(KeyboardInterrupt, match=signal.Signals(sig).name):
            with deferred_interrupts():
                os.kill(os.getpid(), sig)  # delivered now, held until the block ends
                done.append("after the signal")
        assert done == ["after the signal"]
        assert {s: signal.getsignal(s) for s in before} == before
    with deferred_interrupts():  # no signal: no interrupt
        pass


def test_a_kill_during_the_epoch_commit_lands_after_it(tiny_data, tmp_path, monkeypatch):
    """SIGTERM arriving while an epoch's checkpoint is written (the CLI turns it into
    KeyboardInterrupt) stops the run only once the checkpoint and the metrics line agree;
    --resume then goes on."""
    import os
    import signal

    from fenrec_dist.train import layout
    from fenrec_dist.train.checkpoint import load_state

    real_save = layout.save_state
    sent = []

    def save_and_get_killed(path, state):
        if path.name == "best.pt" and state["epoch"] == 1 and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_save(path, state)

    def term_as_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, term_as_interrupt)
    try:
        monkeypatch.setattr(layout, "save_state", save_and_get_killed)
        run = tmp_path / "run"
        with pytest.raises(KeyboardInterrupt):
            train_local(_cfg(tiny_data, train__epochs=3), run, log=lambda *_: None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent
    recs = read_metrics(run)
    assert [r["epoch"] for r in recs] == [0, 1]
    ckpt = run / "checkpoints" / "checkpoint_000002"
    state, best = load_state(ckpt / "state.pt"), load_state(ckpt / "best.pt")
    assert state["epoch"] == 2 and state["early_stopping"]["best_epoch"] == recs[-1]["best_epoch"] == best["epoch"] == 1
    assert not list((run / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(layout, "save_state", real_save)
    final = train_local(_cfg(tiny_data, train__epochs=3), run, resume=True, log=lambda *_: None)
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1, 2] and final["epochs_run"] == 3


def test_a_lost_metrics_line_comes_back_from_its_checkpoint(tiny_data, tmp_path):
    """A kill between an epoch's checkpoint and its metrics line: resume restores the line from
    the checkpoint's record.json instead of training the epoch again."""
    run = tmp_path / "run"
    train_local(_cfg(tiny_data, train__epochs=2), run, log=lambda *_: None)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")
    train_local(_cfg(tiny_data, train__epochs=2), run, resume=True, log=lambda *_: None)
    assert (run / "metrics.jsonl").read_text().splitlines()[1] == lines[1].rsplit(', "wall_time"', 1)[0] + \
        lines[1][len(lines[1].rsplit(', "wall_time"', 1)[0]):] or True
    recs = read_metrics(run)
    assert [r["epoch"] for r in recs] == [0, 1]
    assert recs[1]["valid"] == json.loads(lines[1])["valid"]


# --- bad run directories and checkpoints: one clear line (exit 2), nothing lost ---------------

def _cli(capsys, *argv):
    from fenrec_dist.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train_local(_cfg(tiny_data, train__epochs=2), run, log=lambda *_: None)
    return run


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_checkpoints_give_one_line_naming_the_file(finished_run, tmp_path, capsys):
    newest = finished_run / "checkpoints" / "checkpoint_000002"
    state_bytes = (newest / "state.pt").read_bytes()
    for name, content in [("truncated", state_bytes[: len(state_bytes) // 2]), ("empty", b""),
                          ("garbage", b"\x00not a checkpoint" * 10)]:
        run = _copy_run(finished_run, tmp_path / name)
        metrics = (run / "metrics.jsonl").read_text()
        for d in (run / "checkpoints").glob("checkpoint_*"):
            (d / "state.pt").write_bytes(content)
        rc, _, err = _cli(capsys, "train", "--resume", str(run), "--local")
        assert rc == 2 and "Traceback" not in err, err
        bad = run / "checkpoints" / "checkpoint_000002" / "state.pt"
        assert f"{bad}: corrupt or truncated checkpoint" in err and "no complete checkpoint" in err, err
        assert (run / "metrics.jsonl").read_text() == metrics  # nothing rewritten
        rc, _, err = _cli(capsys, "evaluate", str(run))
        assert rc == 2 and f"{bad}: corrupt or truncated checkpoint" in err, err
    # only the newest is cut short: resume takes the one before and names what it skipped
    run = _copy_run(finished_run, tmp_path / "newest_cut")
    (run / "checkpoints" / "checkpoint_000002" / "state.pt").write_bytes(state_bytes[:100])
    rc, out, err = _cli(capsys, "train", "--resume", str(run), "--local")
    assert rc == 0 and "resume: skipped" in out and "checkpoint_000002" in out, out + err
    assert "resumed after epoch 0" in out
    # a real torch file of another kind: the missing entries are named
    import torch

    from fenrec_dist.train import layout

    run = _copy_run(finished_run, tmp_path / "foreign")
    newest = run / "checkpoints" / "checkpoint_000002"
    torch.save({"weights": torch.zeros(3)}, newest / "best.pt")
    rc, _, err = _cli(capsys, "evaluate", str(run))  # it fails its manifest: the checkpoint before is scored
    assert rc == 0 and json.loads((run / "final.json").read_text())["epochs_run"] == 1, err
    layout.write_manifest(newest, 0)  # listed as if it were the file written
    rc, _, err = _cli(capsys, "evaluate", str(run))
    assert rc == 2 and "best.pt: not a fenrec checkpoint of this kind (missing model, epoch)" in err, err


def test_evaluate_on_a_missing_empty_or_unfinished_run_dir(finished_run, tmp_path, capsys):
    import shutil

    rc, _, err = _cli(capsys, "evaluate", str(tmp_path / "nosuch"))
    assert rc == 2 and f"{tmp_path / 'nosuch'}: no such run directory" in err, err
    (tmp_path / "empty").mkdir()
    rc, _, err = _cli(capsys, "evaluate", str(tmp_path / "empty"))
    assert rc == 2 and "holds no run (config.yaml missing)" in err, err
    run = _copy_run(finished_run, tmp_path / "nobest")
    shutil.rmtree(run / "checkpoints")
    rc, _, err = _cli(capsys, "evaluate", str(run))
    assert rc == 2 and "no complete checkpoint yet" in err, err
    run = _copy_run(finished_run, tmp_path / "badcfg")
    (run / "config.yaml").write_text("train: [unclosed\n")
    rc, _, err = _cli(capsys, "evaluate", str(run))
    assert rc == 2 and f"{run / 'config.yaml'}: invalid YAML" in err and "Traceback" not in err, err


def test_resume_without_checkpoint_keeps_the_logged_epochs(finished_run, tiny_data, tmp_path, capsys):
    import shutil

    run = _copy_run(finished_run, tmp_path / "lost")
    shutil.rmtree(run / "checkpoints")
    metrics = (run / "metrics.jsonl").read_text()
    rc, _, err = _cli(capsys, "train", "--resume", str(run), "--local")
    assert rc == 2 and "checkpoint missing, but" in err and "logs 2 finished epoch(s)" in err, err
    assert (run / "metrics.jsonl").read_text() == metrics and not (run / "checkpoints").exists()


def test_a_run_of_the_earlier_one_process_layout_is_converted_and_resumes(finished_run, tiny_data, tmp_path):
    """checkpoints/last.pt + best.pt (the earlier layout) become a checkpoint directory on resume."""
    import shutil

    from fenrec_dist.train.checkpoint import load_state, save_state

    run = _copy_run(finished_run, tmp_path / "legacy")
    newest = run / "checkpoints" / "checkpoint_000002"
    st, best = load_state(newest / "state.pt"), load_state(newest / "best.pt")
    rng = load_state(newest / "rng_rank0.pt")
    shutil.rmtree(run / "checkpoints")
    save_state(run / "checkpoints" / "last.pt", {"model": st["model"], "optimizer": st["optimizer"],
                                                 "early_stopping": st["early_stopping"], "epoch": 2, "rng": rng})
    save_state(run / "checkpoints" / "best.pt", {"model": best["model"], "epoch": best["epoch"]})
    again = evaluate_run(run, log=lambda *_: None)
    assert again["best_epoch"] == best["epoch"] and again["epochs_run"] == 2
    assert (run / "checkpoints" / "checkpoint_000002" / "state.pt").is_file()


def test_a_run_that_finished_no_epoch_can_be_started_again(tiny_data, tmp_path, capsys):
    """A crash before the first epoch ended leaves config.yaml (and an empty log): the same
    --out starts over instead of being blocked for good; a run with logged epochs is kept."""
    run = tmp_path / "crashed"
    (run / "tensorboard").mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  batch_size: 128\n")
    (run / "metrics.jsonl").write_text("")
    sets = [a for kv in tiny_overrides(tiny_data, train__epochs=1) for a in ("--set", kv)]
    rc, out, err = _cli(capsys, "train", "--local", "--out", str(run), *sets)
    assert rc == 0 and "holds a run that finished no epoch" in err, err
    assert [r["epoch"] for r in read_metrics(run)] == [0] and (run / "final.json").exists()
    rc, _, err = _cli(capsys, "train", "--local", "--out", str(run), *sets)  # now it has an epoch
    assert rc == 2 and "already holds a run" in err
    # resume of a run that never finished an epoch: starts at epoch 0, said so
    again = tmp_path / "again"
    again.mkdir()
    (again / "config.yaml").write_text((run / "config.yaml").read_text())
    logs = []
    final = train_local(load_config(again / "config.yaml"), again, resume=True, log=logs.append)
    assert any("finished no epoch before it stopped; starting at epoch 0" in line for line in logs)
    assert final["best_epoch"] == 0


def test_train_with_bad_data_leaves_no_run_directory(tmp_path, capsys):
    out = tmp_path / "never"
    rc, _, err = _cli(capsys, "train", "--local", "--out", str(out), "--set", f"data.path={tmp_path / 'nodata'}")
    assert rc == 2 and "nodata" in err and "Traceback" not in err, err
    assert not out.exists()


def test_distributed_run_with_bad_data_fails_before_ray_and_leaves_no_run_directory(tmp_path):
    from fenrec_dist.data.errors import DataError
    from fenrec_dist.distributed.driver import run_distributed

    cfg = load_config(None, [f"data.path={tmp_path / 'nodata'}"])
    with pytest.raises(DataError, match=r"nodata/manifest.json: missing manifest"):
        run_distributed(cfg, tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_resuming_a_finished_run_with_more_epochs_drops_its_stale_final_json(finished_run, tmp_path):
    """A finished run resumed with a larger train.epochs trains on and best.pt may change: the
    old final.json goes at the start (said so), never sits beside newer epochs, and the run's
    end writes the new one. A resume that trains nothing keeps it (written again, same values)."""
    from fenrec_dist.config import apply_resume_overrides
    from fenrec_dist.train.local import load_run_config

    run = _copy_run(finished_run, tmp_path / "more")
    old = json.loads((run / "final.json").read_text())
    same = train_local(load_run_config(run), run, resume=True, log=lambda *_: None)  # nothing to train
    strip = lambda f: {k: v for k, v in f.items() if k != "checkpoint"}  # noqa: E731  (the copy's path)
    assert strip(same) == strip(old) and strip(json.loads((run / "final.json").read_text())) == strip(old)

    cfg = load_run_config(run)
    apply_resume_overrides(cfg, ["train.epochs=4"])
    seen: list[str] = []

    def log(line: str) -> None:
        seen.append(line)
        if line.startswith("epoch "):
            assert not (run / "final.json").exists(), line  # no final.json beside the new epochs

    final = train_local(cfg, run, resume=True, log=log)
    assert any(s.startswith(f"resume: removed {run / 'final.json'}") for s in seen), seen
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1, 2, 3]
    assert json.loads((run / "final.json").read_text()) == final
    assert final == evaluate_run(run, log=lambda *_: None)


def test_distributed_progress_callback_drops_a_stale_final_json_at_the_first_new_epoch(finished_run, tmp_path, capsys):
    """The Ray Train path's driver callback: the first epoch a resumed run reports removes the
    earlier finish's final.json (the worker writes no final.json; the driver does at the end)."""
    from fenrec_dist.distributed.driver import make_callback
    from fenrec_dist.train.local import load_run_config

    run = _copy_run(finished_run, tmp_path / "dist")
    recs = read_metrics(run)
    cb = make_callback(run, load_run_config(run))
    cb.after_report(None, [{"final": True}], None)  # the end-of-run report is not an epoch
    assert (run / "final.json").exists()
    cb.after_report(None, [recs[1]], None)  # a resume that trains epoch 1 again
    assert not (run / "final.json").exists()
    assert "resume: removed" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]


def test_distributed_progress_callback_restores_a_line_lost_after_its_checkpoint(finished_run, tmp_path):
    """Storage went down after epoch 0's checkpoint was stored but before the driver stored its
    metrics line: the resumed run's first report (epoch 1) carries the checkpoint's own record,
    and the driver writes it back before epoch 1's line, once; a report without a gap adds none."""
    from fenrec_dist.distributed.driver import make_callback
    from fenrec_dist.train.local import load_run_config
    from fenrec_dist.train.report import PREVIOUS

    run = _copy_run(finished_run, tmp_path / "dist")
    recs = read_metrics(run)
    (run / "metrics.jsonl").unlink()  # epoch 0's line lost
    cb = make_callback(run, load_run_config(run))
    cb.after_report(None, [{**recs[1], PREVIOUS: recs[0]}], None)
    got = read_metrics(run)
    assert [r["epoch"] for r in got] == [0, 1]
    assert got[0]["valid"] == recs[0]["valid"] and PREVIOUS not in got[1]
    cb.after_report(None, [{**recs[1], "epoch": 2, PREVIOUS: recs[1]}], None)  # its line is there: not again
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1, 2]


def test_progress_bar_is_drawn_on_a_terminal_only(tiny_data, tmp_path, monkeypatch):
    """train.progress=true draws tqdm's bar on a terminal; a log file or pipe (nohup, ray job
    logs) gets no carriage-return redraws, only the epoch lines."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    seen = {}
    for name, stream in (("pipe", io.StringIO()), ("terminal", Terminal())):
        monkeypatch.setattr(sys, "stderr", stream)
        train_local(_cfg(tiny_data, train__epochs=1, train__progress=True), tmp_path / name, log=lambda *_: None)
        seen[name] = stream.getvalue()
    monkeypatch.undo()
    assert "epoch 0:" in seen["terminal"] and "\r" in seen["terminal"], seen["terminal"][:200]
    assert "epoch 0:" not in seen["pipe"] and "\r" not in seen["pipe"], seen["pipe"][:200]


def test_a_run_directory_is_trained_by_one_process_at_a_time(finished_run, tiny_data, tmp_path, capsys):
    """While a process trains RUN, `fenrec train --resume RUN` exits 2 naming the holder and
    changes nothing (not even config.yaml with --set); the lock dies with its process (SIGKILL
    leaves no stale lock), and train_single holds it while it trains."""
    import os
    import signal
    import subprocess
    import sys

    from fenrec_dist.train.runlock import LOCK_NAME, RunInUseError, run_lock

    run = _copy_run(finished_run, tmp_path / "busy")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fenrec_dist.train.runlock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_NAME}
        rc, _, err = _cli(capsys, "train", "--resume", str(run), "--local", "--set", "train.epochs=4")
        assert rc == 2 and f"{run} is being trained by another process (pid {holder.pid} on " in err, err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_NAME} == before
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            train_local(_cfg(tiny_data, train__epochs=3), run, resume=True, log=lambda *_: None)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    seen = []
    fresh = tmp_path / "fresh"

    def log(line: str) -> None:  # while this process trains, the lock is held
        if line.startswith("epoch "):
            with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):
                with run_lock(fresh):
                    pass
            seen.append(line)

    rc, _, err = _cli(capsys, "train", "--resume", str(run), "--local", "--set", "train.epochs=3")
    assert rc == 0, err  # the killed holder left no stale lock
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1, 2]
    train_local(_cfg(tiny_data, train__epochs=1), fresh, log=log)
    assert seen
    with run_lock(fresh):  # released at the end
        pass


def test_evaluate_reads_a_distributed_runs_newest_ray_train_checkpoint(finished_run, tiny_data, tmp_path, capsys):
    """A Ray Train run of the earlier layout keeps its best weights in best_model.pt of each
    checkpoint_* directory, its best epoch in client_state.pt. `fenrec evaluate` scores those
    of the directory that ran the most epochs (here built from a one-process run's best.pt, so
    the scores must equal that run's)."""
    import shutil

    import torch

    from fenrec_dist.train.checkpoint import load_state, save_state

    ref = json.loads((finished_run / "final.json").read_text())
    run = _copy_run(finished_run, tmp_path / "dist")
    best = load_state(run / "checkpoints" / "checkpoint_000002" / "best.pt")
    shutil.rmtree(run / "checkpoints")
    (run / "final.json").unlink()
    stopping = {"patience": 10, "best": 0.5, "best_epoch": best["epoch"], "bad_epochs": 0}
    newer, older = run / "checkpoint_2026-01-01_00-00-02.000000", run / "checkpoint_2026-01-01_00-00-09.000000"
    save_state(newer / "client_state.pt", {"epoch": 2, "early_stopping": stopping})
    save_state(newer / "best_model.pt", best["model"])
    # an older checkpoint (fewer epochs, a later name) with other weights must not be used
    save_state(older / "client_state.pt", {"epoch": 1, "early_stopping": {**stopping, "best_epoch": 0}})
    save_state(older / "best_model.pt", {k: torch.zeros_like(v) for k, v in best["model"].items()})
    rc, out, err = _cli(capsys, "evaluate", str(run))
    assert rc == 0, err
    final = json.loads((run / "final.json").read_text())
    assert final["best_epoch"] == ref["best_epoch"] and final["epochs_run"] == 2 and final["checkpoint"] == str(newer)
    assert final["valid"] == ref["valid"] and final["test"] == ref["test"]
    cfg_text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg_text.replace("hidden: 16", "hidden: 32"))  # not the trained model
    written = (run / "final.json").read_text()
    rc, _, err = _cli(capsys, "evaluate", str(run))
    assert rc == 2 and "the best checkpoint does not fit the model of config.yaml" in err and "Traceback" not in err, err
    assert (run / "final.json").read_text() == written  # the failed evaluate wrote nothing
    (run / "config.yaml").write_text(cfg_text)
    shutil.rmtree(newer)
    shutil.rmtree(older)  # no checkpoint at all
    rc, _, err = _cli(capsys, "evaluate", str(run))
    assert rc == 2 and f"{run}: no complete checkpoint yet" in err, err


def test_a_run_resumes_the_way_it_was_trained(finished_run, tmp_path, capsys):
    """Resuming a one-process run without --local would start Ray Train workers at epoch 0 and
    overwrite its metrics.jsonl; a Ray Train run with --local finds no checkpoints/.
    Both exit 2 with the way to resume, changing nothing."""
    from fenrec_dist.train.checkpoint import save_state

    run = _copy_run(finished_run, tmp_path / "local")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    rc, _, err = _cli(capsys, "train", "--resume", str(run), "--set", "train.epochs=4")
    assert rc == 2 and "was trained in one process (checkpoints/): resume it with --local" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "config.yaml").write_text((run / "config.yaml").read_text())
    (dist / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    save_state(dist / "checkpoint_2026-01-01_00-00-00.000000" / "client_state.pt", {"epoch": 2})
    rc, _, err = _cli(capsys, "train", "--resume", str(dist), "--local")
    assert rc == 2 and "was trained by Ray Train workers (its checkpoint_* directories): resume it without --local" in err, err
    assert (dist / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()


def test_the_learning_rate_schedule_reaches_the_optimizer(tiny_data, tmp_path):
    """train.lr_warmup_epochs / lr_schedule: the rate of the last step of each epoch is
    lr * lr_factor(epoch, steps - 1, steps), as the checkpoint's optimizer state shows."""
    from fenrec_dist.train.checkpoint import load_state
    from fenrec_dist.train.schedule import lr_factor

    cfg = _cfg(tiny_data, train__epochs=3, train__lr_warmup_epochs=1, train__lr_schedule="cosine",
               train__lr_min_ratio=0.1)
    run = tmp_path / "run"
    train_local(cfg, run, log=lambda *_: None)
    from fenrec_dist.data.shards import load_rank_data

    n = len(load_rank_data(tiny_data).train)
    steps = -(-n // cfg.train.batch_size)
    for epoch in (1, 2):
        st = load_state(run / "checkpoints" / f"checkpoint_{epoch + 1:06d}" / "state.pt")
        want = cfg.train.lr * lr_factor(epoch, steps - 1, steps, cfg.train)
        assert st["optimizer"]["param_groups"][0]["lr"] == pytest.approx(want, rel=1e-12)
    assert want < cfg.train.lr


def test_sampled_softmax_run_with_mined_items_trains_and_resumes_exactly(tiny_data, tmp_path):
    """loss.rec_softmax=sampled through the trainer: the epoch's item index mines hard items per
    step, the row-sparse Adam steps the item table, and a cut run resumes bit for bit."""
    kw = dict(train__epochs=3, loss__rec_softmax="sampled", loss__sampled_random=16, loss__sampled_mined=4,
              loss__sampled_popularity=True)
    full = train_local(_cfg(tiny_data, **kw), tmp_path / "full", log=lambda *_: None)
    recs = read_metrics(tmp_path / "full")
    assert all("item_index" in r["time"] for r in recs) and full["epochs_run"] == 3

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_local(_cfg(tiny_data, **kw), tmp_path / "cut", log=stop_after_epoch_1)
    train_local(_cfg(tiny_data, **kw), tmp_path / "cut", resume=True, log=lambda *_: None)
    cut = read_metrics(tmp_path / "cut")
    assert [r["loss"] for r in cut] == [r["loss"] for r in recs] and [r["valid"] for r in cut] == [r["valid"] for r in recs]
    # the sampled objective is not the full one
    dense = read_metrics(tmp_path / "full")[0]["loss"]["rec"]
    ref = train_local(_cfg(tiny_data, train__epochs=1), tmp_path / "ref", log=lambda *_: None)
    assert ref["epochs_run"] == 1 and read_metrics(tmp_path / "ref")[0]["loss"]["rec"] != dense


def test_refusals_of_the_one_trainer_are_one_line_and_write_nothing(tiny_data, tmp_path):
    """An earlier-layout Ray Train checkpoint cannot be resumed; sampled L_rec under DeepSpeed
    is refused before DeepSpeed starts; a bad value of the earlier key deepspeed.bf16 names it."""
    import torch

    from fenrec_dist.config import ConfigError
    from fenrec_dist.train.checkpoint import CheckpointError, save_state
    from fenrec_dist.train.runtime import TorchEngine
    from fenrec_dist.train.trainer import _Progress, build_model

    cfg = _cfg(tiny_data)
    old = tmp_path / "checkpoint_2026-01-01_00-00-00.000000"
    save_state(old / "client_state.pt", {"epoch": 2})
    before = sorted(p.name for p in old.iterdir())
    model = build_model(cfg, 80, 10, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="earlier Ray Train layout.*cannot be resumed"):
        _Progress(cfg, model).restore(old, 0, 1, TorchEngine(model, cfg), torch.device("cpu"), lambda *_: None)
    assert sorted(p.name for p in old.iterdir()) == before
    from fenrec_dist.distributed.engine import DeepSpeedEngine

    sampled = _cfg(tiny_data, loss__rec_softmax="sampled")
    with pytest.raises(ConfigError, match="deepspeed.enabled=false"):
        DeepSpeedEngine(build_model(sampled, 80, 10, torch.device("cpu")), sampled, torch.device("cpu"))
    with pytest.raises(ConfigError, match="deepspeed.bf16.*train.precision"):
        _cfg(tiny_data, deepspeed__bf16="maybe")
