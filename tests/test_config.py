"""Config loading: defaults < YAML < dotted overrides, with typed errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fenrec_dist.config import RESUME_KEYS, ConfigError, apply_resume_overrides, config_from_dict, describe, load_config, to_dict

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
    assert cfg.deepspeed.bf16 == "true"


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
        ("intents.nredo=0", "intents.k/niter/nredo"),
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
