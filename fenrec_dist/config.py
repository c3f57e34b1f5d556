"""Typed run configuration: dataclasses loaded from YAML with dotted overrides.

Precedence: dataclass defaults < YAML file < ``--set section.key=value`` overrides.
Unknown keys and values of the wrong type are rejected with a message naming the
dotted key. Every key is documented beside its default (the ``doc`` metadata).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a value of the wrong type."""


def _f(default: Any, doc: str, **kw: Any) -> Any:
    """A dataclass field with a default and its documentation."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


@dataclass
class DataConfig:
    path: str = _f("data/demo", "Prepared dataset directory (output of `fenrec prepare`).")
    max_len: int = _f(50, "Maximum number of input items per sample (most recent kept).")
    horizon: int = _f(2, "Future items beyond the target that share the soft label (<= the prepared horizon).")
    min_interactions: int = _f(3, "Users with fewer interactions cannot be split and are dropped.")
    num_shards: int = _f(4, "Number of Parquet shards of training samples.")
    row_group_size: int = _f(16384, "Rows per Parquet row group.")


@dataclass
class ModelConfig:
    encoder: Literal["sasrec", "gru4rec"] = _f("sasrec", "Sequence encoder.")
    hidden: int = _f(64, "Hidden size d of item embeddings and the encoder.")
    layers: int = _f(2, "Transformer blocks (SASRec) or GRU layers (GRU4Rec).")
    heads: int = _f(2, "Attention heads (SASRec).")
    ff_mult: int = _f(4, "Feed-forward width as a multiple of hidden (SASRec).")
    dropout: float = _f(0.5, "Dropout on embeddings and hidden states.")
    attn_dropout: float = _f(0.5, "Dropout on attention probabilities (SASRec).")
    init_std: float = _f(0.02, "Std of the N(0, std) initialisation of weights.")
    trim_padding: bool = _f(True, "Exact speed-up: cut the batch's all-padding left columns.")
    last_position_only: bool = _f(
        True, "Exact speed-up: last block computes queries and feed-forward at the last position only."
    )
    pack_tokens: bool = _f(
        True, "Exact speed-up: layers other than attention run on real tokens only; attention per "
        "length-sorted chunk (replaces trim_padding; SASRec)."
    )


@dataclass
class LossConfig:
    soft_labels: bool = _f(True, "Time-dependent soft labels; False gives one-hot targets.")
    gamma: float = _f(0.2, "Soft-label decay: weight of the k-th future item is gamma^k.")
    lambda_coarse: float = _f(0.3, "Weight lambda_0 of the coarse-grained intent contrast.")
    beta_fine: float = _f(0.1, "Weight beta_0 of the fine-grained intent contrast.")
    temperature: float = _f(1.0, "Softmax temperature of the contrastive losses.")
    dedup_intents: bool = _f(
        True, "Exact speed-up of the fine term: each intent's centroid once per batch (B + U rows, not 2B); "
        "used in one process with a fixed lam and no index negatives, else the full batch.")


@dataclass
class NegativesConfig:
    warmup_epochs: int = _f(20, "Epochs of plain InfoNCE before hard/noise negatives and shaping.")
    sources: list[str] = _f(
        ["in_batch", "hard", "noise"],
        "Negative samplers used after warm-up: any of in_batch, hard, noise, index (FAISS-mined).",
    )
    hard_weight: float = _f(0.1, "Weight w of enduring hard negatives in the softmax denominator.")
    lam_min: float = _f(0.4, "Lower end of the hard-negative mix lam (pull toward the anchor).")
    lam_max: float = _f(0.4, "Upper end of lam; equal to lam_min gives the reference's fixed lam.")
    noise_ratio: float = _f(2.0, "rho: noise negatives per anchor (rho * B Gaussian vectors).")
    noise_steps: int = _f(4, "Normalised gradient-ascent steps that nudge the noise negatives.")
    noise_step_size: float = _f(1e-3, "Step size of each noise nudge.")
    shaping: bool = _f(True, "Similarity shaping of contrastive logits after warm-up.")
    tau: float = _f(8.0, "Shaping temperature tau in s * tanh(s / tau).")
    margin: float = _f(0.2, "Shaping margin m added to tanh for negatives.")
    index_weight: float = _f(0.1, "Weight of FAISS-index-mined negatives in the softmax denominator.")
    index_k: int = _f(8, "Index-mined negatives per anchor (after the false-negative filter).")
    index_candidates: int = _f(32, "Raw neighbours searched per anchor before filtering (> index_k).")
    index_type: Literal["flat", "ivf", "hnsw"] = _f(
        "ivf", "FAISS index above index_exact_below rows: flat (exact), ivf or hnsw; exact flat below."
    )
    index_exact_below: int = _f(50_000, "Rows under which the exact flat index is always used.")
    index_nlist: int = _f(0, "IVF lists; 0 = the epoch's intent clusters (else about 4 * sqrt(rows), trained).")
    index_nprobe: int = _f(4, "IVF lists visited per query.")
    index_hnsw_m: int = _f(32, "HNSW graph degree M.")
    index_ef_search: int = _f(64, "HNSW efSearch.")
    index_exclude_same_user: bool = _f(True, "The filter also drops samples of the anchor's user.")
    index_device: Literal["auto", "cpu", "gpu"] = _f(
        "auto", "FAISS on the GPU when CUDA and faiss-gpu are present (auto), or forced."
    )
    index_gpu_temp_mb: int = _f(256, "Temporary GPU memory of the FAISS GPU resources (MiB).")
    index_save: bool = _f(True, "Save each epoch's index and neighbour metadata under RUN_DIR/negatives/.")
    index_keep: int = _f(3, "Epochs of saved indexes kept (older ones are deleted; summaries stay).")


@dataclass
class IntentConfig:
    k: int = _f(256, "Number of k-means intents.")
    niter: int = _f(20, "k-means iterations.")
    nredo: int = _f(1, "k-means runs from different seeds, the lowest objective kept (ICSRec's clustering "
                       "uses 5; each run costs niter iterations).")
    batch_size: int = _f(2048, "Batch size of the eval-mode representation pass.")


@dataclass
class TrainConfig:
    epochs: int = _f(400, "Maximum epochs.")
    batch_size: int = _f(256, "Samples per batch (per worker in distributed runs).")
    lr: float = _f(1e-3, "Adam learning rate.")
    weight_decay: float = _f(0.0, "Adam weight decay.")
    grad_clip: float = _f(0.0, "Gradient-norm clip; 0 disables.")
    patience: int = _f(40, "Early-stopping patience in epochs on validation NDCG@20.")
    seed: int = _f(42, "Seed of model init, shuffles and sampling.")
    length_grouping: bool = _f(
        False, "Sort each shuffled window of length_bucket_batches batches by input length before cutting it "
        "into batches: less padding, but batch-mates (the contrastive negatives) then share lengths, so the "
        "objective is not the paper's. Off: random batches as in ICSRec/FENRec; with model.pack_tokens "
        "grouping saves no measurable step time (bench/bench_grouping.py).")
    length_bucket_batches: int = _f(64, "Batches per length-sorting window of the shuffled epoch (length_grouping).")
    threads: int = _f(0, "torch intra-op threads; 0 keeps torch's default.")
    trim_every: int = _f(0, "Return freed heap pages to the OS (glibc malloc_trim) every N steps (0 = off); "
                             "the heap is always trimmed between phases. See train/memory.py.")
    trim_growth_mib: float = _f(512.0, "Trim when the resident size grew by this many MiB since the last trim "
                                       "(0 = off): bounds the resident size on CPU at a fraction of the page "
                                       "faults of trim_every (bench/bench_trim.py).")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto, cpu or cuda.")
    progress: bool = _f(True, "Show a per-epoch progress bar.")
    time_limit_min: float = _f(
        0.0, "Stop starting new epochs after this many minutes (0 = none); the best checkpoint is still tested."
    )


@dataclass
class EvalConfig:
    batch_size: int = _f(1024, "Users per evaluation batch.")
    item_chunk: int = _f(65536, "Items scored per chunk in full-ranking top-k.")
    ks: list[int] = _f([5, 10, 20], "Cut-offs of HR@k and NDCG@k.")
    metric: str = _f("NDCG@20", "Validation metric for model selection and early stopping.")


@dataclass
class DistributedConfig:
    num_workers: int = _f(1, "Ray Train workers.")
    use_gpu: bool = _f(False, "One GPU per worker.")
    cpus_per_worker: float = _f(1.0, "Logical CPUs per worker.")
    max_failures: int = _f(0, "Automatic restarts after a worker failure.")
    keep_checkpoints: int = _f(2, "Checkpoints kept by Ray Train.")
    storage_path: str = _f("", "Ray Train storage path (shared storage on clusters); '' = runs/.")
    name: str = _f("", "Run name; re-running with the same name resumes. '' = derived from data.")


@dataclass
class DeepSpeedConfig:
    enabled: bool = _f(True, "Wrap the model in a DeepSpeed engine in Ray Train workers.")
    zero_stage: int = _f(0, "ZeRO stage 0, 1 or 2.")
    bf16: Literal["auto", "true", "false"] = _f("auto", "auto (bf16 on GPU, fp32 on CPU), true or false.")
    optimizer: str = _f("torch_adam", "torch_adam (no compile) or a DeepSpeed optimizer type.")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    intents: IntentConfig = field(default_factory=IntentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


# --------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; allow int -> float widening."""
    origin = get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in get_args(tp)):
            value = "true" if value else "false"  # YAML reads `true` as a bool
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, typing.List):
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads exponent notation without a dot (1e-4) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge_into(obj: Any, values: dict[str, Any], prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            _merge_into(current, v, key)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as YAML (so 0.3, true, [1, 2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key, value


def apply_override(cfg: Config, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value`` with type checking."""
    parts = key.split(".")
    obj: Any = cfg
    for i, p in enumerate(parts[:-1]):
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}'")
        obj = getattr(obj, p)
    _merge_into(obj, {parts[-1]: value}, ".".join(parts[:-1]))


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Build a Config from defaults, an optional YAML file and dotted overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        try:
            _merge_into(cfg, raw, "")
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
    for ov in overrides or []:
        apply_override(cfg, *parse_override(ov))
    validate(cfg)
    return cfg


#: Keys that ``fenrec train --resume RUN_DIR --set key=value`` may change: how the run is
#: executed or how far it may go, never what it computes (the model, the objective, the data,
#: the batches and the early-stopping rule stay those of the run's config.yaml).
RESUME_KEYS = (
    "train.threads", "train.progress", "train.trim_every", "train.trim_growth_mib", "train.device", "train.time_limit_min",
    "train.epochs", "eval.batch_size", "eval.item_chunk",
)


def apply_resume_overrides(cfg: Config, overrides: list[str]) -> list[tuple[str, Any, Any]]:
    """Apply ``--set`` overrides to a resumed run's config, in place.

    Only ``RESUME_KEYS`` may change; any other key raises ConfigError naming it (a resumed run
    must continue the computation it started). Returns (key, old value, new value) for every
    key whose value changed.
    """
    def value_of(key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    before: dict[str, Any] = {}
    for ov in overrides:
        key, value = parse_override(ov)
        if key not in RESUME_KEYS:
            raise ConfigError(f"--resume: '{key}' is fixed by the run's config.yaml (it would change what the run "
                              f"computes); --set may change only {', '.join(RESUME_KEYS)}")
        before.setdefault(key, value_of(key))
        apply_override(cfg, key, value)
    validate(cfg)
    return [(k, old, value_of(k)) for k, old in before.items() if value_of(k) != old]


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (used by workers and resume)."""
    cfg = Config()
    _merge_into(cfg, values, "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


KNOWN_SOURCES = ("in_batch", "hard", "noise", "index")


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    for s in cfg.negatives.sources:
        if s not in KNOWN_SOURCES:
            raise ConfigError(f"negatives.sources: unknown source {s!r} (known: {list(KNOWN_SOURCES)})")
    if not 0.0 <= cfg.negatives.lam_min <= cfg.negatives.lam_max <= 1.0:
        raise ConfigError("negatives.lam_min/lam_max: need 0 <= lam_min <= lam_max <= 1")
    neg = cfg.negatives
    if "index" in neg.sources and not 0 < neg.index_k < neg.index_candidates:
        raise ConfigError("negatives.index_k/index_candidates: need 0 < index_k < index_candidates")
    if neg.index_weight < 0:
        raise ConfigError("negatives.index_weight: must be >= 0")
    if neg.index_keep < 1:
        raise ConfigError("negatives.index_keep: must be >= 1")
    if cfg.data.max_len < 1:
        raise ConfigError("data.max_len: must be >= 1")
    if cfg.data.horizon < 0:
        raise ConfigError("data.horizon: must be >= 0")
    if not 0.0 < cfg.loss.gamma or cfg.loss.gamma > 1.0:
        raise ConfigError("loss.gamma: must be in (0, 1]")
    if cfg.model.hidden % cfg.model.heads:
        raise ConfigError("model.hidden: must be divisible by model.heads")
    if cfg.train.trim_every < 0 or cfg.train.trim_growth_mib < 0:
        raise ConfigError("train.trim_every/trim_growth_mib: must be >= 0 (0 = off)")
    if cfg.intents.k < 1 or cfg.intents.niter < 1 or cfg.intents.nredo < 1:
        raise ConfigError("intents.k/niter/nredo: must be >= 1")
    if cfg.deepspeed.zero_stage not in (0, 1, 2, 3):
        raise ConfigError("deepspeed.zero_stage: must be 0, 1, 2 or 3")


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every key: the documented reference."""
    rows: list[tuple[str, str, Any, str]] = []
    inst = cls()
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        val = getattr(inst, f.name)
        if dataclasses.is_dataclass(val):
            rows.extend(describe(type(val), key + "."))
        else:
            rows.append((key, _type_name(hints[f.name]), val, f.metadata.get("doc", "")))
    return rows
