"""Config loading: defaults < YAML < dotted overrides, with typed errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fenrec_dist.config import (RESUME_KEYS, ConfigError, Range, apply_resume_overrides, config_from_dict, describe,
                                field_check, load_config, to_dict)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["beauty", "sports", "toys", "yelp", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert config_from_dict(to_dict(cfg)) == cfg


def test_reference_hyperparameters():
    b = load_config(ROOT / "configs/beauty.yaml")
    assert (b.loss.lambda_coarse, b.loss.beta_fine, b.intents.k, b.negatives.lam_min, b.negatives.noise_ratio,
            b.negatives.tau, b.negatives.margin, b.loss.gamma) == (0.3, 0.1, 256, 0.4, 2.0, 8.0, 0.2, 0.2)
    y = load_config(ROOT / "configs/yelp.yaml")
    assert (y.loss.lambda_coarse, y.loss.beta_fine, y.negatives.lam_max, y.negatives.tau) == (0.5, 0.3, 0.2, 10.0)
    s = load_config(ROOT / "configs/sports.yaml")
    assert (s.loss.gamma, s.negatives.noise_ratio) == (0.3, 1.0)
    t = load_config(ROOT / "configs/toys.yaml")
    assert (t.intents.k, t.negatives.noise_ratio, t.loss.lambda_coarse) == (1024, 3.0, 0.2)
    for c in (b, y, s, t):
        assert (c.train.lr, c.train.batch_size, c.train.patience, c.train.epochs, c.data.max_len, c.model.hidden,
                c.model.layers, c.model.heads, c.model.dropout) == (1e-3, 256, 40, 400, 50, 64, 2, 2, 0.5)


def test_overrides_take_precedence_and_are_typed():
    cfg = load_config(ROOT / "configs/beauty.yaml", ["data.max_len=20", "loss.gamma=0.3", "negatives.sources=[in_batch]",
                                                      "train.lr=1", "deepspeed.bf16=true"])
    assert cfg.data.max_len == 20 and cfg.loss.gamma == 0.3 and cfg.negatives.sources == ["in_batch"]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.precision == "bf16"  # deepspeed.bf16, the earlier name, still sets it


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.max_lenn=3", "data.max_lenn"),
        ("nope.x=1", "nope"),
        ("data.max_len=abc", "data.max_len: expected int"),
        ("train.progress=3", "train.progress: expected bool"),
        ("model.encoder=lstm", "model.encoder"),
        ("negatives.sources=[in_batch, bogus]", "negatives.sources"),
        ("loss.gamma", "section.key=value"),
        ("intents.nredo=0", "intents.nredo: must be >= 1, got 0"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(None, [override])


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: 0.1\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train\.epocs"):
        load_config(p)


def test_every_key_is_documented():
    rows = describe()
    assert len(rows) > 50
    assert all(doc for _, _, _, doc in rows), [k for k, _, _, d in rows if not d]


def test_float_keys_accept_exponent_notation():
    cfg = load_config(None, ["train.lr=1e-4", "train.time_limit_min=2.5e1"])
    assert cfg.train.lr == 1e-4 and cfg.train.time_limit_min == 25.0
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=fast"])


def test_resume_overrides_change_only_how_the_run_goes():
    cfg = load_config(ROOT / "configs" / "beauty.yaml")
    before = to_dict(cfg)
    changes = apply_resume_overrides(cfg, ["train.threads=1", "train.epochs=500", "train.progress=true",
                                           "train.threads=2"])
    assert changes == [("train.threads", 0, 2), ("train.epochs", 400, 500)]  # progress was already true
    after = to_dict(cfg)
    assert {s: {k: v for k, v in sec.items() if before[s][k] != v} for s, sec in after.items()} == {
        s: ({"threads": 2, "epochs": 500} if s == "train" else {}) for s in after}
    with pytest.raises(ConfigError, match=r"'negatives.lam_min' is fixed by the run's config.yaml"):
        apply_resume_overrides(cfg, ["negatives.lam_min=0.1"])
    with pytest.raises(ConfigError, match="train.device"):  # a resume key still gets its type check
        apply_resume_overrides(cfg, ["train.device=tpu"])
    assert all(k.count(".") == 1 for k in RESUME_KEYS)


# --------------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
        ("model.hidden=0", "model.hidden: must be >= 1, got 0"),
        ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
        ("train.epochs=-1", "train.epochs: must be >= 1, got -1"),
        ("train.lr=-0.1", "train.lr: must be > 0, got -0.1"),
        ("train.lr=0", "train.lr: must be > 0, got 0.0"),
        ("train.lr=nan", "train.lr: must be a finite number, got nan"),
        ("train.lr=.nan", "train.lr: must be a finite number, got nan"),
        ("train.lr=inf", "train.lr: must be a finite number, got inf"),
        ("train.lr=-.inf", "train.lr: must be a finite number, got -inf"),
        ("model.dropout=1.5", "model.dropout: must be in [0, 1), got 1.5"),
        ("model.dropout=1", "model.dropout: must be in [0, 1), got 1.0"),
        ("model.attn_dropout=1.5", "model.attn_dropout: must be in [0, 1), got 1.5"),
        ("model.attn_dropout=-0.1", "model.attn_dropout: must be in [0, 1), got -0.1"),
        ("eval.ks=[0]", "eval.ks: must be a non-empty list of ints >= 1, got [0]"),
        ("eval.ks=[]", "eval.ks: must be a non-empty list of ints >= 1, got []"),
        ("model.heads=0", "model.heads: must be >= 1, got 0"),  # was a ZeroDivisionError inside validate
        ("model.heads=3", "model.hidden: must be divisible by model.heads (3), got 64"),
        ("intents.k=0", "intents.k: must be >= 1, got 0"),
        ("intents.niter=0", "intents.niter: must be >= 1, got 0"),
        ("train.trim_every=-1", "train.trim_every: must be >= 0, got -1"),
        ("train.trim_growth_mib=-1", "train.trim_growth_mib: must be >= 0, got -1.0"),
        ("train.patience=0", "train.patience: must be >= 1, got 0"),
        ("train.seed=-1", "train.seed: must be in [0, 2147483647], got -1"),
        ("train.seed=2147483600", "train.seed: must be <= 2147483248 with train.epochs=400"),
        ("loss.gamma=0", "loss.gamma: must be in (0, 1], got 0.0"),
        ("loss.temperature=0", "loss.temperature: must be > 0, got 0.0"),
        ("negatives.tau=0", "negatives.tau: must be > 0, got 0.0"),
        ("negatives.lam_max=1.5", "negatives.lam_max: must be in [0, 1], got 1.5"),
        ("negatives.lam_min=0.5", "negatives.lam_min: must be <= negatives.lam_max (0.4), got 0.5"),
        ("eval.metric=NDCG@50", "eval.metric: must be one of ['HR@5', 'HR@10', 'HR@20', 'NDCG@5', 'NDCG@10', "
                                "'NDCG@20', 'MRR']"),
        ("eval.metric=ndcg@20", "eval.metric: must be one of"),
        ("deepspeed.zero_stage=3", "deepspeed.zero_stage: must be one of 0, 1, 2, got 3"),
        ("distributed.cpus_per_worker=0", "distributed.cpus_per_worker: must be > 0, got 0.0"),
        ("distributed.max_failures=-2", "distributed.max_failures: must be >= -1, got -2"),
        ("data.min_interactions=2", "data.min_interactions: must be >= 3, got 2"),
        ("data.path=''", "data.path: must be a non-empty string"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "beauty.yaml", [override])
    assert str(e.value).startswith(message), str(e.value)
    assert message.split(":")[0] in e.value.keys


def test_metric_must_follow_the_cut_offs():
    with pytest.raises(ConfigError, match=r"^eval.metric: .*eval.ks=\[5, 10\]\), got 'NDCG@20'"):
        load_config(None, ["eval.ks=[5, 10]"])
    cfg = load_config(None, ["eval.ks=[5, 10]", "eval.metric=HR@10"])
    assert cfg.eval.metric == "HR@10"
    assert load_config(None, ["eval.metric=MRR"]).eval.metric == "MRR"


def test_index_candidates_checked_only_with_the_index_source():
    assert load_config(None, ["negatives.index_candidates=4"]).negatives.index_candidates == 4
    with pytest.raises(ConfigError, match=r"^negatives.index_candidates: must be > negatives.index_k \(8\)"):
        load_config(None, ["negatives.sources=[in_batch, index]", "negatives.index_candidates=8"])


def _outside(r: Range, integer: bool) -> list:
    """Values just outside the range ``r``."""
    step = 1 if integer else 0.5
    out = []
    if r.lo is not None:
        out.append(r.lo if r.lo_open else r.lo - step)
    if r.hi is not None:
        out.append(r.hi if r.hi_open else r.hi + step)
    return out


def _inside(r: Range, integer: bool) -> list:
    out = []
    if r.lo is not None:
        out.append(r.lo + (1 if integer else 1e-3) if r.lo_open else r.lo)
    if r.hi is not None:
        out.append(r.hi - (1 if integer else 1e-3) if r.hi_open else r.hi)
    return out


def test_every_range_rejects_just_outside_and_accepts_its_ends():
    """Systematic: each ranged key's boundary values pass and the values just beyond fail,
    naming that key and its range."""
    checked = 0
    for key, tp, default, doc in describe():
        check = field_check(key)
        if not isinstance(check, Range):
            continue
        integer = tp == "int"
        assert check.ok(default), key  # every default lies in its range
        for bad in _outside(check, integer):
            with pytest.raises(ConfigError) as e:
                load_config(None, [f"{key}={bad}"])
            assert str(e.value).startswith(f"{key}: must be {check.text()}, got "), str(e.value)
            assert e.value.keys == (key,)
        for good in _inside(check, integer):
            extra = ["train.epochs=1"] if key == "train.seed" else []  # seed + epoch must fit 32 bits
            extra += ["model.heads=1"] if key == "model.hidden" else []
            extra += ["model.hidden=64"] if key == "model.heads" else []
            if key in ("negatives.lam_min", "negatives.lam_max"):
                extra += [f"negatives.lam_min={good}", f"negatives.lam_max={good}"]
            cfg = load_config(None, extra + [f"{key}={good}"])
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == good
        checked += 1
    assert checked >= 50


def test_every_float_key_rejects_nan_and_inf():
    floats = [key for key, tp, *_ in describe() if tp == "float"]
    assert len(floats) >= 15
    for key in floats:
        for bad in ("nan", ".inf", "-inf"):
            with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number"):
                load_config(None, [f"{key}={bad}"])


def test_documented_ranges_match_the_checks():
    """`fenrec config` shows each key's range, taken from the same check that validates it."""
    for key, _, _, doc in describe():
        check = field_check(key)
        if check is not None:
            assert doc.endswith(f" Must be {check.text()}."), (key, doc)
    docs = {key: doc for key, _, _, doc in describe()}
    assert docs["model.dropout"].endswith("Must be in [0, 1).")
    assert docs["train.batch_size"].endswith("Must be >= 1.")
    assert "divisible by model.heads" in docs["model.hidden"]
    assert "k in eval.ks" in docs["eval.metric"]
    assert "0, 1 or 2" in docs["deepspeed.zero_stage"] and docs["deepspeed.zero_stage"].endswith("one of 0, 1, 2.")


def test_resume_overrides_are_range_checked():
    cfg = load_config(ROOT / "configs" / "beauty.yaml")
    with pytest.raises(ConfigError, match=r"^train.epochs: must be >= 1, got 0"):
        apply_resume_overrides(cfg, ["train.epochs=0"])
    with pytest.raises(ConfigError, match=r"^train.time_limit_min: must be a finite number"):
        apply_resume_overrides(load_config(ROOT / "configs" / "beauty.yaml"), ["train.time_limit_min=nan"])


def test_saved_run_configs_still_load():
    """Resolved configs that `fenrec train --resume` will read: those written by the Beauty runs
    (tests/fixtures/run_configs, copied from their run directories, length-grouped batches and
    every key of their day) and any runs/*/config.yaml of this checkout. A renamed or removed
    key, or a tightened range, that would strand a saved run fails here."""
    found = sorted((ROOT / "tests" / "fixtures" / "run_configs").glob("*.yaml")) + sorted(ROOT.glob("runs/*/config.yaml"))
    assert len(found) >= 2, found
    for p in found:
        cfg = load_config(p)
        assert config_from_dict(to_dict(cfg)) == cfg


# --------------------------------------------------------------------------- keys, files and YAML


@pytest.mark.parametrize("override,section", [("train.epochs.x=1", "train.epochs"), ("data.path.a.b=1", "data.path"),
                                              ("eval.ks.first=5", "eval.ks")])
def test_key_below_a_plain_key_is_not_a_section(override, section):
    with pytest.raises(ConfigError, match=rf"^{section} is not a section"):
        load_config(None, [override])


def test_config_that_is_a_directory_or_not_utf8_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a directory"):
        load_config(tmp_path)
    p = tmp_path / "model.pt"
    p.write_bytes(b"PK\x03\x04\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"model\.pt is not UTF-8 text \(byte 0xff at offset 4\)"):
        load_config(p)


def test_cli_reports_file_problems_on_one_line(tmp_path, capsys):
    from fenrec_dist.cli import main

    p = tmp_path / "latin1.yaml"
    p.write_bytes("train:\n  lr: 0.1  # caf\xe9\n".encode("latin-1"))
    for target, needle in ((tmp_path, "is a directory"), (p, "is not UTF-8")):
        assert main(["config", "--config", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fenrec: config error:") and needle in err
        assert str(target) in err
    assert main(["config", "--set", "train.epochs.x=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs is not a section" in err
    assert main(["config", "--set", "model.heads=0"]) == 2
    assert capsys.readouterr().err == "fenrec: config error: model.heads: must be >= 1, got 0\n"


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", 4, "lr"),
        ("train:\n  lr: 0.1\nmodel:\n  hidden: 32\ntrain:\n  epochs: 3\n", 5, "train"),
        ("eval:\n  ks: [5, 10]\n  metric: HR@5\n  metric: HR@10\n", 4, "metric"),
        ("model: {hidden: 32, hidden: 64}\n", 1, "hidden"),
    ],
)
def test_duplicate_yaml_key_names_file_line_and_key(tmp_path, text, line, key):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: line {line}: duplicate key '{key}'"), str(e.value)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text("model:\n  <<: {hidden: 32, heads: 2}\n  hidden: 64\n")
    assert load_config(p).model.hidden == 64


def test_duplicate_key_in_an_override_value():
    with pytest.raises(ConfigError, match=r"override train: duplicate key 'lr'"):
        load_config(None, ["train={lr: 0.1, lr: 0.2}"])


def test_negative_sources_must_be_non_empty_and_distinct():
    with pytest.raises(ConfigError, match=r"negatives.sources: must name at least one source"):
        load_config(None, ["negatives.sources=[]"])
    with pytest.raises(ConfigError, match=r"negatives.sources: 'hard' listed more than once"):
        load_config(None, ["negatives.sources=[in_batch,hard,hard]"])
    assert load_config(None, ["negatives.sources=[hard]"]).negatives.sources == ["hard"]
