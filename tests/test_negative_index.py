"""The FAISS negative index: filter, search, mining, persistence, loss terms, inspector."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fenrec_dist.config import ConfigError, NegativesConfig, load_config
from fenrec_dist.negatives.index import (
    IN_FUTURE,
    KEPT,
    MISSING,
    SAME_TARGET,
    SAME_USER,
    SELF,
    TrainingFacts,
    build_index,
    false_negative_reasons,
    first_kept,
    mine,
    neighbour_overlap,
    search,
)
from fenrec_dist.negatives.store import NegativesStore, neighbors_from_table, samples_table
from conftest import tiny_overrides


def random_facts(rng: np.random.Generator, n: int, items: int, users: int, horizon: int = 2) -> TrainingFacts:
    target = rng.integers(1, items + 1, n).astype(np.int32)
    future = np.concatenate([target[:, None], rng.integers(1, items + 1, (n, horizon))], 1).astype(np.int32)
    flen = rng.integers(1, horizon + 2, n).astype(np.int32)
    future[np.arange(horizon + 1)[None, :] >= flen[:, None]] = 0  # right-padded like prepare writes it
    return TrainingFacts(user=rng.integers(0, users, n).astype(np.int64), target=target, future=future,
                         future_len=flen)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 60), items=st.integers(1, 12), users=st.integers(1, 10),
       same_user=st.booleans())
def test_filter_never_keeps_a_false_negative(seed, n, items, users, same_user):
    rng = np.random.default_rng(seed)
    facts = random_facts(rng, n, items, users)
    anchors = rng.integers(0, n, 17)
    cands = rng.integers(-1, n, (17, 9))
    cands[:, 0] = anchors  # the anchor itself is always among its neighbours
    reasons = false_negative_reasons(anchors, cands, facts, same_user)
    for i, a in enumerate(anchors):
        fut = set(facts.future[a, : facts.future_len[a]].tolist())
        for j, c in enumerate(cands[i]):
            if reasons[i, j] != KEPT:
                continue
            assert c >= 0 and c != a
            assert facts.target[c] != facts.target[a]
            assert int(facts.target[c]) not in fut
            if same_user:
                assert facts.user[c] != facts.user[a]
    # and each removal names a true reason
    for i, a in enumerate(anchors):
        for j, c in enumerate(cands[i]):
            r = reasons[i, j]
            if r == MISSING:
                assert c < 0
            elif r == SELF:
                assert c == a
            elif r == SAME_USER:
                assert same_user and facts.user[c] == facts.user[a]
            elif r == SAME_TARGET:
                assert facts.target[c] == facts.target[a]
            elif r == IN_FUTURE:
                assert int(facts.target[c]) in set(facts.future[a, : facts.future_len[a]].tolist())


def test_filter_reasons_by_hand():
    facts = TrainingFacts(user=np.array([0, 0, 1, 2, 3]), target=np.array([5, 6, 5, 7, 8], np.int32),
                          future=np.array([[5, 7, 0], [6, 0, 0], [5, 9, 0], [7, 8, 0], [8, 0, 0]], np.int32),
                          future_len=np.array([2, 1, 2, 2, 1], np.int32))
    r = false_negative_reasons(np.array([0]), np.array([[0, 1, 2, 3, 4, -1]]), facts)
    assert r.tolist() == [[SELF, SAME_USER, SAME_TARGET, IN_FUTURE, KEPT, MISSING]]
    r = false_negative_reasons(np.array([0]), np.array([[1]]), facts, exclude_same_user=False)
    assert r.tolist() == [[KEPT]]  # sample 1 (target 6) is only excluded as the same user


def test_first_kept_takes_kept_candidates_in_rank_order():
    ids = np.array([[9, 8, 7, 6, 5]])
    sims = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    reasons = np.array([[SELF, KEPT, SAME_TARGET, KEPT, KEPT]], np.int8)
    nb, s = first_kept(ids, sims, reasons, 2)
    assert nb.tolist() == [[8, 6]] and s.tolist() == [[4.0, 2.0]]
    nb, _ = first_kept(ids, sims, reasons, 4)
    assert nb.tolist() == [[8, 6, 5, -1]]


def test_flat_index_equals_brute_force_topk():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    index, kind = build_index(x, NegativesConfig(index_exact_below=10**9))
    assert kind == "flat"
    sims, ids = search(index, x[:40], 10, chunk=7)
    full = x[:40] @ x.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(full, ref, 1), rtol=1e-5, atol=1e-5)


def test_mine_on_flat_equals_brute_force_filtered():
    rng = np.random.default_rng(1)
    n, k, cand = 200, 3, 15
    x = rng.standard_normal((n, 8)).astype(np.float32)
    facts = random_facts(rng, n, 20, 40)
    index, _ = build_index(x, NegativesConfig(index_exact_below=10**9))
    m = mine(index, x, np.arange(n), facts, k, cand)
    full = x @ x.T
    for a in range(n):
        order = np.argsort(-full[a], kind="stable")[:cand]
        fut = set(facts.future[a, : facts.future_len[a]].tolist())
        ok = [c for c in order if c != a and facts.user[c] != facts.user[a] and facts.target[c] != facts.target[a]
              and int(facts.target[c]) not in fut][:k]
        assert m.neighbors[a][: len(ok)].tolist() == ok
        assert (m.neighbors[a][len(ok):] == -1).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(kind):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((20, 16)) * 4
    x = (centers[rng.integers(0, 20, 3000)] + rng.standard_normal((3000, 16))).astype(np.float32)
    cfg = NegativesConfig(index_exact_below=0, index_type=kind, index_nprobe=8, index_ef_search=128)
    index, got = build_index(x, cfg, centroids=centers.astype(np.float32) if kind == "ivf" else None)
    assert got == kind
    exact, _ = build_index(x, NegativesConfig(index_exact_below=10**9))
    _, a = search(index, x[:200], 10)
    _, b = search(exact, x[:200], 10)
    recall = np.mean([len(set(p) & set(q)) / 10 for p, q in zip(a, b)])
    assert recall > 0.8
    if kind == "ivf":
        assert index.nlist == 20  # the intents are the inverted lists


def test_index_save_load_round_trip_and_keep_limit(tmp_path):
    rng = np.random.default_rng(4)
    n = 120
    x = rng.standard_normal((n, 8)).astype(np.float32)
    facts = random_facts(rng, n, 10, 30)
    store = NegativesStore(str(tmp_path))
    for epoch in range(4):
        index, _ = build_index(x + epoch, NegativesConfig(index_exact_below=10**9))
        m = mine(index, x + epoch, np.arange(n), facts, 3, 10)
        store.save_epoch(epoch, index, samples_table(m, facts, epoch, np.zeros(n, np.int64)))
        store.append_summary({"epoch": epoch, "raw_fn_rate": 0.1 * epoch})
        store.prune(2)
    assert store.epochs() == [2, 3]
    assert not list((tmp_path / "negatives").glob(".tmp*"))
    loaded = store.load_index(3)
    np.testing.assert_array_equal(search(loaded, x[:10] + 3, 5)[1], search(index, x[:10] + 3, 5)[1])
    table = store.load_samples(3)
    assert table.column("sample_id").to_pylist() == list(range(n))
    assert set(table.column("epoch").to_pylist()) == {3}
    np.testing.assert_array_equal(neighbors_from_table(table, n, 3), m.neighbors)
    assert [r["epoch"] for r in store.read_summary()] == [0, 1, 2, 3]
    store.append_summary({"epoch": 2, "raw_fn_rate": 0.5})  # a resumed run redoes epoch 2
    assert [(r["epoch"], r["raw_fn_rate"]) for r in store.read_summary()] == [(0, 0.0), (1, 0.1), (2, 0.5)]


def test_neighbour_overlap_jaccard():
    a = np.array([[1, 2, 3, -1], [4, 5, -1, -1], [-1, -1, -1, -1]])
    b = np.array([[3, 2, 9, 8], [6, 7, -1, -1], [-1, -1, -1, -1]])
    assert neighbour_overlap(a, b) == pytest.approx((2 / 5 + 0 / 4) / 2)


def test_mined_negative_logits_equal_explicit_construction():
    from fenrec_dist.losses.hard_negatives import explicit_hard_negatives
    from fenrec_dist.losses.mined_negatives import mined_negative_logits

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(6, 4, 5, generator=g, dtype=torch.float64)
    lam = torch.rand(6, 4, generator=g, dtype=torch.float64)
    got = mined_negative_logits(z, keys, lam)
    ref = torch.stack([(explicit_hard_negatives(z[a : a + 1], keys[a], lam[a : a + 1]) [0] @ z[a]) for a in range(6)])
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    # the keys are constants: d(h_an . z_a)/dz_a = h_an
    got.sum().backward()
    h = torch.stack([explicit_hard_negatives(z[a : a + 1], keys[a], lam[a : a + 1])[0].sum(0) for a in range(6)])
    torch.testing.assert_close(z.grad, h, atol=1e-10, rtol=1e-10)


def test_index_sampler_masks_missing_and_same_intent_and_uses_its_weight():
    from fenrec_dist.losses.intent_contrast import make_contrast_batch
    from fenrec_dist.negatives.refresh import EpochIndex
    from fenrec_dist.losses.samplers import IndexNegatives, StepContext

    g = torch.Generator().manual_seed(0)
    vec = torch.randn(10, 4, generator=g)
    nb = torch.tensor([[1, 2, -1]] * 10)
    ei = EpochIndex(0, vec, nb, torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2]), None)  # type: ignore[arg-type]
    z1, z2 = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    batch = make_contrast_batch(z1, z2, torch.tensor([3, 4]), 1.0)
    ctx = StepContext(generator=torch.Generator().manual_seed(1))
    ctx.extras["row_keys"] = torch.tensor([0, 5, 0, 5])
    s = IndexNegatives(ei, 0.25, 0.0, 0.0)
    (blk,) = s.blocks(batch, ctx)
    assert blk.weight == 0.25 and blk.logits.shape == (4, 3)
    assert blk.mask.tolist() == [[False, False, True]] * 4
    torch.testing.assert_close(blk.logits[:, :2], batch.z @ vec[[1, 2]].t())  # lam 0: the keys themselves
    ctx.extras["row_groups"] = torch.tensor([0, 1, 0, 1])  # intents of the rows: sample 1 is intent 0, 2 is 1
    (blk,) = s.blocks(batch, ctx)
    assert blk.mask.tolist() == [[True, False, True], [False, True, True]] * 2


def test_index_negatives_two_workers_equal_one_process():
    import dist_harness as selfcheck

    d = selfcheck.compare(2, 16, index=True)
    assert d["grad_keys_match"] == 1.0
    assert d["coarse"] < 1e-5 and d["fine"] < 1e-5 and d["grad"] < 1e-5
    # and the index term is really in the loss
    with_index, _ = selfcheck.single_process(16, index=True)
    without, _ = selfcheck.single_process(16, index=False)
    assert abs(with_index["coarse"] - without["coarse"]) > 1e-3


def test_sharded_refresh_across_ranks_equals_one_index_over_all_samples():
    """Each rank indexes its own shard, its queries go to every rank and the top candidates are
    merged: with the exact index the kept neighbours are those of one index over all samples,
    and each rank's cache hands the loss the same neighbour vectors."""
    import dist_harness as selfcheck

    single, vectors, ranks = selfcheck.compare_index_refresh(2)
    seen = []
    for r in ranks:
        ids = r["ids"].long()
        assert torch.equal(r["neighbors"], single[ids])
        nb = single[ids]
        want = torch.where((nb >= 0)[:, :, None], vectors[nb.clamp_min(0)], torch.zeros(()))
        assert torch.equal(r["vectors"], want)
        seen.append(ids)
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(len(single)))
    assert any((r["neighbors"] >= 0).any() and not torch.isin(r["neighbors"][r["neighbors"] >= 0], r["ids"]).all()
               for r in ranks), "no neighbour crossed a shard: the test would not exercise the merge"


def test_config_rejects_bad_index_settings():
    with pytest.raises(ConfigError, match="index_k"):
        load_config(None, ["negatives.sources=[in_batch,index]", "negatives.index_k=40", "negatives.index_candidates=32"])
    with pytest.raises(ConfigError, match="index_type"):
        load_config(None, ["negatives.index_type=lsh"])


@pytest.fixture(scope="module")
def index_run(tiny_data, tmp_path_factory):
    from fenrec_dist.train.local import train_local

    run = tmp_path_factory.mktemp("idx") / "run"
    cfg = load_config(None, tiny_overrides(tiny_data, train__epochs=3, negatives__sources="[in_batch,hard,noise,index]",
                                           negatives__index_k=4, negatives__index_candidates=16,
                                           negatives__index_keep=2))
    final = train_local(cfg, run, log=lambda s: None)
    return run, final


def test_index_run_trains_saves_and_reports(index_run):
    from fenrec_dist.train.report import read_metrics

    run, final = index_run
    assert 0 < final["test"]["HR@20"] <= 1
    recs = read_metrics(run)
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert all("index" in r["time"] for r in recs)
    hard = [r for r in recs if r["phase"] == "hard"]
    assert hard and all(r["negatives"]["train_index_used"] > 0 for r in hard)
    assert sorted(p.name for p in (run / "negatives").iterdir()) == ["epoch_0001", "epoch_0002", "summary.jsonl"]


def test_inspector_json_has_the_documented_fields(index_run):
    run, _ = index_run
    out = subprocess.run([sys.executable, "-m", "fenrec_dist.cli", "negatives", "inspect", str(run), "--sample", "3",
                          "--json", "--plot", str(run / "neg.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert set(rep) >= {"run_dir", "epochs_saved", "epoch", "per_epoch", "neighbours"}
    assert rep["epochs_saved"] == [1, 2] and rep["epoch"] == 2
    assert [e["epoch"] for e in rep["per_epoch"]] == [0, 1, 2]
    for e in rep["per_epoch"]:
        assert set(e) >= {"epoch", "kind", "rows", "k", "hardness", "false_negatives", "intents", "overlap_prev", "seconds"}
        assert set(e["hardness"]) == {"mined", "random", "train_in_batch", "train_index"}
        assert set(e["false_negatives"]) == {"raw_rate", "removed_by", "kept_per_anchor", "heldout_raw", "slipped"}
        assert set(e["false_negatives"]["removed_by"]) == {"self", "same_user", "same_target", "in_future"}
        assert 0 <= e["false_negatives"]["raw_rate"] <= 1
        assert set(e["intents"]) >= {"k", "min", "max", "cv", "largest_share"}
    assert rep["per_epoch"][0]["overlap_prev"] is None and 0 <= rep["per_epoch"][1]["overlap_prev"] <= 1
    for e in rep["per_epoch"][1:]:  # saved epochs get the held-out diagnostic
        assert 0 <= e["false_negatives"]["slipped"] <= 1
    (s,) = rep["neighbours"]
    assert s["sample_id"] == 3 and len(s["neighbours"]) == 16
    n0 = s["neighbours"][0]
    assert set(n0) == {"rank", "sample_id", "user", "target", "sim", "cos", "reason", "false_negative", "mined",
                       "heldout_hit"}
    assert sum(n["mined"] for n in s["neighbours"]) <= 4
    assert all(not n["false_negative"] for n in s["neighbours"] if n["mined"])
    assert (run / "neg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspector_user_view_and_errors(index_run, capsys):
    from fenrec_dist.cli import main

    run, _ = index_run
    user = NegativesStore(str(run)).load_samples(2).column("user")[0].as_py()
    assert main(["negatives", "inspect", str(run), "--user", str(user)]) == 0
    text = capsys.readouterr().out
    assert "fn_raw" in text and f"user {user}," in text
    png = run.parent / "not-written.png"
    assert main(["negatives", "inspect", str(run), "--epoch", "0", "--plot", str(png)]) == 2  # pruned by index_keep
    assert "not saved" in capsys.readouterr().err
    assert not png.exists()  # a refused report writes nothing
    assert main(["negatives", "inspect", str(run.parent)]) == 2
    assert "no negatives/" in capsys.readouterr().err


def test_inspector_names_a_corrupt_negatives_file(index_run, tmp_path, capsys):
    import shutil

    from fenrec_dist.cli import main

    src, _ = index_run
    assert main(["negatives", "inspect", str(tmp_path / "nosuch")]) == 2
    assert f"{tmp_path / 'nosuch'}: no such run directory" in capsys.readouterr().err
    cases = [("summary.jsonl", 2, "summary.jsonl:2: not a JSON record"),
             ("epoch_0002/samples.parquet", None, "epoch_0002/samples.parquet: unreadable Parquet file"),
             ("epoch_0002/index.faiss", None, "epoch_0002/index.faiss: unreadable FAISS index")]
    for rel, line, want in cases:
        run = tmp_path / rel.replace("/", "_")
        shutil.copytree(src, run)
        f = run / "negatives" / rel
        data = f.read_bytes()
        if line:  # cut inside the second record
            lines = data.decode().splitlines(keepends=True)
            f.write_text(lines[0] + lines[1][: len(lines[1]) // 2])
        else:
            f.write_bytes(data[: len(data) // 2])
        user = NegativesStore(str(src)).load_samples(2).column("user")[0].as_py()
        assert main(["negatives", "inspect", str(run), "--user", str(user)]) == 2, rel
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err and "/tmp/tmp" not in err, err


def test_index_run_resumes_exactly(index_run, tiny_data, tmp_path):
    from fenrec_dist.train.report import read_metrics
    from fenrec_dist.train.local import train_local

    full_run, full = index_run

    class Stop(Exception):
        pass

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1"):
            raise Stop

    cfg = lambda: load_config(None, tiny_overrides(  # noqa: E731
        tiny_data, train__epochs=3, negatives__sources="[in_batch,hard,noise,index]", negatives__index_k=4,
        negatives__index_candidates=16, negatives__index_keep=2))
    with pytest.raises(Stop):
        train_local(cfg(), tmp_path / "cut", log=stop_after_epoch_1)
    resumed = train_local(cfg(), tmp_path / "cut", resume=True, log=lambda s: None)
    a, b = read_metrics(full_run), read_metrics(tmp_path / "cut")
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and [r["valid"] for r in a] == [r["valid"] for r in b]
    strip = lambda f: {k: v for k, v in f.items() if k != "checkpoint"}  # noqa: E731
    assert strip(resumed) == strip(full)
    sa = NegativesStore(str(full_run)).read_summary()
    sb = NegativesStore(str(tmp_path / "cut")).read_summary()
    assert [s["overlap_prev"] for s in sa] == [s["overlap_prev"] for s in sb]  # read back from the saved epoch
