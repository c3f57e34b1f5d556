"""Export and recommend (serve/): the exported model recommends what the model itself ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fenrec_dist.cli import main as cli_main
from fenrec_dist.config import dump_yaml, load_config
from fenrec_dist.data.dataset import load_prepared
from fenrec_dist.data.errors import DataError
from fenrec_dist.metrics import topk_items
from fenrec_dist.model import build_encoder
from fenrec_dist.serve.export import export_run
from fenrec_dist.serve.recommend import Recommender, recommend_file, recommend_history
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def sku_data(tmp_path_factory) -> Path:
    """A prepared log whose item ids are strings ('sku-<7n>'): the id map is not the identity."""
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth

    d = tmp_path_factory.mktemp("sku")
    write_synth(SynthConfig(users=300, items=60, intents=4, mean_length=10, seed=2), d / "log.csv", fmt="csv")
    lines = (d / "log.csv").read_text().splitlines()
    rows = [lines[0]] + [f"{u},sku-{int(i) * 7},{t}" for u, i, t in (ln.split(",") for ln in lines[1:])]
    (d / "sku.csv").write_text("\n".join(rows) + "\n")
    prepare(d / "sku.csv", d / "data", max_len=10, horizon=2, num_shards=2)
    return d / "data"


@pytest.fixture(scope="module")
def exported(sku_data, tmp_path_factory):
    cfg = load_config(None, tiny_overrides(sku_data, model__init_std=0.5))  # spread scores: no near-ties
    data = load_prepared(sku_data)
    torch.manual_seed(3)
    enc = build_encoder(cfg.model, data.num_items, cfg.data.max_len).eval()
    out = tmp_path_factory.mktemp("exp") / "export"
    manifest = export_run(enc.state_dict(), cfg, sku_data, out, source={"run_dir": "test"})
    return cfg, data, enc, out, manifest


def _model_topk(enc, data, k):
    """The model's own ranking of the users' test-time histories (history + valid), those excluded."""
    inputs = torch.from_numpy(data.eval.inputs("test", data.max_len).astype(np.int64))
    vals, offs = data.eval.sequences("test")
    width = int(np.diff(offs).max())
    ex = np.zeros((len(offs) - 1, width), dtype=np.int64)
    for u in range(len(offs) - 1):
        ex[u, : offs[u + 1] - offs[u]] = vals[offs[u]:offs[u + 1]]
    with torch.no_grad():
        s, i = topk_items(enc(inputs), enc.item_weights(), torch.from_numpy(ex), k)
    return i.numpy(), [vals[offs[u]:offs[u + 1]] for u in range(len(offs) - 1)]


def test_export_writes_every_file_and_the_traced_encoder_equals_the_model(exported):
    cfg, data, enc, out, m = exported
    assert sorted(p.name for p in out.iterdir()) == ["encoder.pt2", "item_embeddings.npy", "item_map.parquet",
                                                      "items.faiss", "manifest.json"]
    assert m["ids"] == "item_map" and m["num_items"] == data.num_items and m["index"]["kind"] == "flat"
    assert json.loads((out / "manifest.json").read_text()) == m
    ts = torch.export.load(str(out / "encoder.pt2")).module()  # no fenrec model code needed
    x = torch.from_numpy(data.eval.inputs("test", data.max_len)[:64].astype(np.int64))
    with torch.no_grad():
        torch.testing.assert_close(ts(x), enc(x), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.load(out / "item_embeddings.npy"), enc.item_weights().detach().numpy())
    assert not list(out.parent.glob(".export.*"))  # no temporary directory left
    with pytest.raises(DataError, match="exists"):
        export_run(enc.state_dict(), cfg, Path(cfg.data.path), out)


def test_recommend_file_returns_the_models_own_top_k_in_raw_ids(exported, tmp_path):
    cfg, data, enc, out, _ = exported
    want, hists = _model_topk(enc, data, 10)
    raw = pq.read_table(Path(cfg.data.path) / "item_map.parquet").to_pandas().set_index("id")["raw"]
    raw_hists = [[raw[int(i)] for i in h] for h in hists]
    assert isinstance(raw_hists[0][0], str) and raw_hists[0][0].startswith("sku-")
    inp = tmp_path / "h.parquet"
    pq.write_table(pa.table({"user": data.eval.user, "history": raw_hists}), inp)
    rec = Recommender(out)
    counts = recommend_file(rec, inp, tmp_path / "r.parquet", k=10, batch_size=100, progress=False)
    assert counts.rows == len(hists) and counts.unknown_ids == 0 and counts.skipped_rows == 0
    got = pq.read_table(tmp_path / "r.parquet").to_pydict()
    assert got["user"] == data.eval.user.tolist()
    assert got["items"] == [[raw[int(i)] for i in row if i > 0] for row in want]  # (long histories leave < k)
    assert min(len(r) for r in got["items"]) < 10
    assert all(a >= b for s in got["scores"] for a, b in zip(s, s[1:]))
    # one history as a string; ANN with the exact (flat) index gives the same
    one = recommend_history(rec, " ".join(map(str, raw_hists[7])), k=10)
    assert one["items"] == got["items"][7]
    assert recommend_history(rec, " ".join(map(str, raw_hists[7])), k=10, ann=True)["items"] == got["items"][7]


def test_unknown_ids_are_refused_naming_the_row_or_skipped_and_counted(exported, tmp_path):
    _, data, _, out, _ = exported
    rec = Recommender(out)
    raw = pq.read_table(out / "item_map.parquet").column("raw").to_pylist()
    good = [raw[0], raw[1]]
    inp = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"history": [good, [raw[2], "sku-999999"], ["nope"], good]}), inp)
    dst = tmp_path / "r.parquet"
    with pytest.raises(DataError, match=r"row 1: unknown item id 'sku-999999'"):
        recommend_file(rec, inp, dst, k=5, progress=False)
    assert not dst.exists() and not list(tmp_path.glob(".r.parquet*"))  # nothing partial
    counts = recommend_file(rec, inp, dst, k=5, skip_unknown=True, progress=False)
    assert (counts.rows, counts.unknown_ids, counts.skipped_rows) == (4, 2, 1)
    got = pq.read_table(dst).to_pydict()["items"]
    assert len(got) == 3 and got[1] == recommend_history(rec, str(raw[2]), k=5)["items"]
    assert good[0] not in got[0] and good[1] not in got[0]
    with pytest.raises(DataError, match="--history: unknown item id 'x9'"):
        recommend_history(rec, f"{raw[0]} x9")


def test_cli_export_and_recommend(exported, tmp_path, monkeypatch, capsys):
    cfg, data, enc, _, _ = exported
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(cfg))
    import fenrec_dist.cli as cli

    monkeypatch.setattr(cli, "_best_weights", lambda run_dir: (enc.state_dict(), 2, {"checkpoint": "x"}))
    assert cli_main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert json.loads((tmp_path / "exp" / "manifest.json").read_text())["source"]["best_epoch"] == 2
    raw = pq.read_table(tmp_path / "exp" / "item_map.parquet").column("raw").to_pylist()
    capsys.readouterr()
    assert cli_main(["recommend", str(tmp_path / "exp"), "--history", f"{raw[3]} {raw[4]}", "--k", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["items"]) == 3 and raw[3] not in res["items"]
    assert cli_main(["recommend", str(tmp_path / "exp"), "--history", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown item id 'nope'" in err


def test_negatives_inspect_items_reports_the_sources_hardness(exported, tmp_path, monkeypatch, capsys):
    from fenrec_dist.negatives.inspect import item_negatives

    cfg, data, enc, _, _ = exported
    rep = item_negatives(enc.state_dict(), cfg, samples=300, mined=8, seed=cfg.train.seed)  # the CLI's seed
    src = rep["sources"]
    assert set(src) == {"in_batch", "random", "mined"} and rep["samples"] == 300
    # mined items are the top-scoring non-window items: harder than random or in-batch ones
    assert src["mined"]["score"] > src["random"]["score"] and src["mined"]["score"] > src["in_batch"]["score"]
    assert src["mined"]["items"] == 300 * 8
    assert all(0.0 <= s["heldout"] <= 1.0 and 0.0 <= s["above_target"] <= 1.0 for s in src.values())
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(cfg))
    import fenrec_dist.cli as cli

    monkeypatch.setattr(cli, "_best_weights", lambda run_dir: (enc.state_dict(), 1, {}))
    capsys.readouterr()
    assert cli_main(["negatives", "inspect", str(run), "--items", "--items-samples", "300", "--items-k", "8",
                     "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["sources"] == src and got["best_epoch"] == 1


def test_sequence_text_ids_are_kept_as_given(tmp_path):
    """Sequence-text data has no item map: the export recommends in the file's own ids."""
    from fenrec_dist.data.prepare import prepare
    from fenrec_dist.data.synth import SynthConfig, write_synth

    write_synth(SynthConfig(users=200, items=50, intents=3, mean_length=8, seed=4), tmp_path / "seq.txt", fmt="seq")
    prepare(tmp_path / "seq.txt", tmp_path / "data", max_len=10, horizon=2, num_shards=1)
    assert not (tmp_path / "data" / "item_map.parquet").exists()
    cfg = load_config(None, tiny_overrides(tmp_path / "data", model__init_std=0.5))
    data = load_prepared(tmp_path / "data")
    torch.manual_seed(1)
    enc = build_encoder(cfg.model, data.num_items, cfg.data.max_len).eval()
    m = export_run(enc.state_dict(), cfg, tmp_path / "data", tmp_path / "exp")
    assert m["ids"] == "as_given" and not (tmp_path / "exp" / "item_map.parquet").exists()
    rec = Recommender(tmp_path / "exp")
    hist = [3, 17, 5]
    x = torch.zeros(1, cfg.data.max_len, dtype=torch.long)
    x[0, -3:] = torch.tensor(hist)
    with torch.no_grad():
        _, want = topk_items(enc(x), enc.item_weights(), torch.tensor([hist]), 5)
    assert recommend_history(rec, "3 17 5", k=5)["items"] == want[0].tolist()
    with pytest.raises(DataError, match=rf"unknown item id {data.num_items + 1}"):
        recommend_history(rec, f"3 {data.num_items + 1}")
