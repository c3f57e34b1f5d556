"""Typed run configuration: dataclasses loaded from YAML with dotted overrides.

Precedence: dataclass defaults < YAML file < ``--set section.key=value`` overrides.
Unknown keys, values of the wrong type and values outside a key's range are rejected
with a message naming the dotted key (``train.batch_size: must be >= 1, got 0``). Every
key is documented beside its default (the ``doc`` metadata) together with its allowed
range (the ``check`` metadata, appended to the doc by ``describe``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a value of the wrong type or range.

    ``keys``: the dotted config keys the error is about (empty when not known), so callers
    such as the Tune space check can tell which searched parameter is to blame.
    """

    def __init__(self, message: str, *, keys: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


# --------------------------------------------------------------------------- value ranges


def _num(x: float) -> str:
    return repr(x) if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """A numeric interval; ``None`` ends are unbounded. ``text()`` reads like '>= 1' or 'in [0, 1)'."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, "
                    f"{_num(self.hi)}{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "finite"


@dataclass(frozen=True)
class OneOf:
    values: tuple[Any, ...]

    def ok(self, v: Any) -> bool:
        return not isinstance(v, bool) and v in self.values

    def text(self) -> str:
        return "one of " + ", ".join(_num(v) if isinstance(v, (int, float)) else repr(v) for v in self.values)


@dataclass(frozen=True)
class NonEmpty:
    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and v.strip() != ""

    def text(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class ListOf:
    """A non-empty list whose items all satisfy ``item``."""

    item: Range
    item_name: str = "values"

    def ok(self, v: Any) -> bool:
        return isinstance(v, list) and len(v) > 0 and all(self.item.ok(x) for x in v)

    def text(self) -> str:
        return f"a non-empty list of {self.item_name} {self.item.text()}"


Check = typing.Union[Range, OneOf, NonEmpty, ListOf]


def ge(x: float) -> Range:
    return Range(lo=x)


def gt(x: float) -> Range:
    return Range(lo=x, lo_open=True)


def _f(default: Any, doc: str, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field with a default, its documentation and its allowed range."""
    meta = {"doc": doc, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


PROB = Range(0, 1, hi_open=True)  # a dropout probability: [0, 1)
UNIT = Range(0, 1)                # a mixing coefficient: [0, 1]
INT32_MAX = 2**31 - 1             # FAISS k-means takes a C int seed (train.seed + epoch)


@dataclass
class DataConfig:
    path: str = _f("data/demo", "Prepared dataset directory (output of `fenrec prepare`).", NonEmpty())
    max_len: int = _f(50, "Maximum number of input items per sample (most recent kept).", ge(1))
    horizon: int = _f(2, "Future items beyond the target that share the soft label (<= the prepared horizon).",
                      ge(0))
    min_interactions: int = _f(3, "Users with fewer interactions cannot be split (train, valid and test items) "
                                  "and are dropped.", ge(3))
    num_shards: int = _f(32, "Parquet shards of training samples, partitioned by target item: the most Ray "
                                 "workers a run of the data can use.", ge(1))
    row_group_size: int = _f(16384, "Rows per Parquet row group.", ge(1))


@dataclass
class ModelConfig:
    encoder: Literal["sasrec", "gru4rec"] = _f("sasrec", "Sequence encoder.")
    hidden: int = _f(64, "Hidden size d of item embeddings and the encoder; divisible by model.heads.", ge(1))
    layers: int = _f(2, "Transformer blocks (SASRec) or GRU layers (GRU4Rec).", ge(1))
    heads: int = _f(2, "Attention heads (SASRec).", ge(1))
    ff_mult: int = _f(4, "Feed-forward width as a multiple of hidden (SASRec).", ge(1))
    dropout: float = _f(0.5, "Dropout on embeddings and hidden states.", PROB)
    attn_dropout: float = _f(0.5, "Dropout on attention probabilities (SASRec).", PROB)
    init_std: float = _f(0.02, "Std of the N(0, std) initialisation of weights.", gt(0))
    trim_padding: bool = _f(True, "Exact speed-up: cut the batch's all-padding left columns.")
    last_position_only: bool = _f(
        True, "Exact speed-up: last block computes queries and feed-forward at the last position only."
    )
    pack_tokens: bool = _f(
        True, "Exact speed-up: layers other than attention run on real tokens only; attention per "
        "length-sorted chunk (replaces trim_padding; SASRec)."
    )
    static_shapes: bool = _f(
        False, "Training batches packed in static shapes for CUDA graphs (SASRec): one attention grid of all rows, "
        "width rounded up to model.width_multiple, token count to model.token_multiple; same outputs and "
        "gradients as pack_tokens to float rounding. Off on CPU, where the grid's padding costs time.")
    token_multiple: int = _f(512, "static_shapes: the packed token count is rounded up to a multiple of this "
                                  "(each distinct count is one captured graph); 0: every cell of the [rows, "
                                  "width] input is a token, planned on the device with no host read.", ge(0))
    width_multiple: int = _f(16, "static_shapes: the attention grid's width (longest row) is rounded up to a "
                                 "multiple of this, at most the input width.", ge(1))
    cuda_graphs: bool = _f(False, "With static_shapes, on CUDA: training calls replay the encoder's forward and "
                                  "backward from CUDA graphs captured once per shape (model/graphed.py).")


@dataclass
class LossConfig:
    soft_labels: bool = _f(True, "Time-dependent soft labels; False gives one-hot targets.")
    gamma: float = _f(0.2, "Soft-label decay: weight of the k-th future item is gamma^k.", Range(0, 1, lo_open=True))
    lambda_coarse: float = _f(0.3, "Weight lambda_0 of the coarse-grained intent contrast (0 = off).", ge(0))
    beta_fine: float = _f(0.1, "Weight beta_0 of the fine-grained intent contrast (0 = off).", ge(0))
    temperature: float = _f(1.0, "Softmax temperature of the contrastive losses.", gt(0))
    dedup_intents: bool = _f(
        True, "Exact speed-up of the fine term: each intent's centroid once per batch (B + U rows, not 2B); "
        "used in one process with a fixed lam and no index negatives, else the full batch.")
    rec_softmax: Literal["full", "sampled"] = _f(
        "full", "L_rec over the whole catalogue (full) or sampled softmax (sampled: the soft-label window "
        "against in-batch, random and mined items; losses/sampled_softmax.py) with row-sparse item-table "
        "updates (optim/sparse_adam.py).")
    sampled_in_batch: bool = _f(True, "Sampled L_rec: the global batch's targets (all workers) are candidates.")
    sampled_random: int = _f(1024, "Sampled L_rec: items drawn at random per step, shared by the batch (0 = none).",
                             ge(0))
    sampled_popularity: bool = _f(False, "Sampled L_rec: draw the random items by training-target popularity "
                                         "(add-one smoothed) instead of uniformly.")
    sampled_logq: bool = _f(True, "Sampled L_rec: logQ correction of in-batch and random candidates "
                                  "(logit - log expected count in the step's draw).")
    sampled_mined: int = _f(0, "Sampled L_rec: hard items per anchor mined from the item index (0 = none).",
                            ge(0))
    sampled_enduring_lam: float = _f(
        0.0, "Sampled L_rec: mined items pulled toward the anchor by lam (FENRec's enduring transform) join "
        "as extra detached negatives (0 = off).", PROB)
    sampled_enduring_weight: float = _f(0.1, "Sampled L_rec: weight of the enduring mined items in the "
                                             "denominator.", ge(0))


@dataclass
class NegativesConfig:
    warmup_epochs: int = _f(20, "Epochs of plain InfoNCE before hard/noise negatives and shaping.", ge(0))
    sources: list[str] = _f(
        ["in_batch", "hard", "noise"],
        "Negative samplers used after warm-up: any of in_batch, hard, noise, index (FAISS-mined).",
    )
    hard_weight: float = _f(0.1, "Weight w of enduring hard negatives in the softmax denominator (0 = off).",
                            ge(0))
    lam_min: float = _f(0.4, "Lower end of the hard-negative mix lam (pull toward the anchor); <= lam_max.", UNIT)
    lam_max: float = _f(0.4, "Upper end of lam; equal to lam_min gives the reference's fixed lam.", UNIT)
    noise_ratio: float = _f(2.0, "rho: noise negatives per anchor (rho * B Gaussian vectors; 0 = off).", ge(0))
    noise_steps: int = _f(4, "Normalised gradient-ascent steps that nudge the noise negatives.", ge(0))
    noise_step_size: float = _f(1e-3, "Step size of each noise nudge.", ge(0))
    shaping: bool = _f(True, "Similarity shaping of contrastive logits after warm-up.")
    tau: float = _f(8.0, "Shaping temperature tau in s * tanh(s / tau).", gt(0))
    margin: float = _f(0.2, "Shaping margin m added to tanh for negatives.", ge(0))
    index_weight: float = _f(0.1, "Weight of FAISS-index-mined negatives in the softmax denominator (0 = off).",
                             ge(0))
    index_k: int = _f(8, "Index-mined negatives per anchor (after the false-negative filter).", ge(1))
    index_candidates: int = _f(32, "Raw neighbours searched per anchor before filtering (> index_k when the "
                                   "index source is used).", ge(1))
    index_type: Literal["flat", "ivf", "hnsw"] = _f(
        "ivf", "FAISS index above index_exact_below rows: flat (exact), ivf or hnsw; exact flat below."
    )
    index_exact_below: int = _f(50_000, "Rows under which the exact flat index is always used.", ge(0))
    index_nlist: int = _f(0, "IVF lists; 0 = the epoch's intent clusters (else about 4 * sqrt(rows), trained).",
                          ge(0))
    index_nprobe: int = _f(4, "IVF lists visited per query.", ge(1))
    index_hnsw_m: int = _f(32, "HNSW graph degree M.", ge(2))
    index_ef_search: int = _f(64, "HNSW efSearch.", ge(1))
    index_exclude_same_user: bool = _f(True, "The filter also drops samples of the anchor's user.")
    index_device: Literal["auto", "cpu", "gpu"] = _f(
        "auto", "FAISS on the GPU when CUDA and faiss-gpu are present (auto), or forced."
    )
    index_gpu_temp_mb: int = _f(256, "Temporary GPU memory of the FAISS GPU resources (MiB).", ge(0))
    index_save: bool = _f(True, "Save each epoch's index and neighbour metadata under RUN_DIR/negatives/.")
    index_keep: int = _f(3, "Epochs of saved indexes kept (older ones are deleted; summaries stay).", ge(1))
    item_index_type: Literal["flat", "ivf", "hnsw"] = _f(
        "ivf", "FAISS index of the item table (mined items of the sampled L_rec, export) at or above "
        "item_index_exact_below items: flat (exact), ivf or hnsw; exact flat below.")
    item_index_exact_below: int = _f(100_000, "Catalogue size under which the item index is exact (flat).", ge(0))
    item_index_nlist: int = _f(0, "IVF lists of the item index; 0 = about sqrt(items).", ge(0))
    item_index_nprobe: int = _f(8, "IVF lists visited per item-index query.", ge(1))
    item_index_hnsw_m: int = _f(32, "HNSW graph degree M of the item index.", ge(2))
    item_index_ef_search: int = _f(128, "HNSW efSearch of the item index.", ge(1))
    item_index_refresh_steps: int = _f(0, "Also rebuild the item index every this many steps (0 = once per epoch).",
                                       ge(0))


@dataclass
class IntentConfig:
    k: int = _f(256, "Number of k-means intents.", ge(1))
    niter: int = _f(20, "k-means iterations.", ge(1))
    nredo: int = _f(1, "k-means runs from different seeds, the lowest objective kept (ICSRec's clustering "
                       "uses 5; each run costs niter iterations).", ge(1))
    batch_size: int = _f(2048, "Batch size of the eval-mode representation pass.", ge(1))
    backend: Literal["auto", "faiss", "torch"] = _f(
        "auto", "k-means and intent assignment: faiss, torch (matrix products on the training device; same "
        "init and iterations as faiss.Kmeans), or auto (faiss-gpu on CUDA when installed, else torch on CUDA; "
        "faiss on CPU).")
    max_points: int = _f(1_000_000, "k-means trains on at most about this many representations, a seeded "
                                    "sample drawn on every rank (0 = all); each rank assigns its own samples.",
                         ge(0))


@dataclass
class TrainConfig:
    epochs: int = _f(400, "Maximum epochs.", ge(1))
    batch_size: int = _f(256, "Samples per batch (per worker in distributed runs).", ge(1))
    lr: float = _f(1e-3, "Adam learning rate (the peak of the schedule: train/schedule.py).", gt(0))
    lr_warmup_epochs: int = _f(0, "Epochs of linear learning-rate warm-up, step by step from lr / steps to lr "
                                  "(0 = none; < train.epochs).", ge(0))
    lr_schedule: Literal["constant", "cosine"] = _f(
        "constant", "Learning rate after the warm-up: constant (lr), or cosine decay from lr to lr * lr_min_ratio "
        "at the end of train.epochs (a --resume may then not change train.epochs).")
    lr_min_ratio: float = _f(0.0, "Final learning rate of the cosine schedule as a fraction of lr (unused when "
                                  "constant).", UNIT)
    weight_decay: float = _f(0.0, "Adam weight decay.", ge(0))
    grad_clip: float = _f(0.0, "Gradient-norm clip; 0 disables.", ge(0))
    patience: int = _f(40, "Early-stopping patience in epochs on the validation metric (eval.metric).", ge(1))
    seed: int = _f(42, "Seed of model init, shuffles and sampling; seed + epochs must fit a 32-bit int "
                       "(k-means is seeded with seed + epoch).", Range(0, INT32_MAX))
    length_grouping: bool = _f(
        False, "Sort each shuffled window of length_bucket_batches batches by input length before cutting it "
        "into batches: less padding, but batch-mates (the contrastive negatives) then share lengths, so the "
        "objective is not the paper's. Off: random batches as in ICSRec/FENRec; with model.pack_tokens "
        "grouping saves no measurable step time (bench/bench_grouping.py).")
    length_bucket_batches: int = _f(64, "Batches per length-sorting window of the shuffled epoch (length_grouping).",
                                    ge(1))
    threads: int = _f(0, "torch intra-op threads; 0 keeps torch's default.", ge(0))
    trim_every: int = _f(0, "Return freed heap pages to the OS (glibc malloc_trim) every N steps (0 = off); "
                             "the heap is always trimmed between phases. See train/memory.py.", ge(0))
    trim_growth_mib: float = _f(512.0, "Trim when the resident size grew by this many MiB since the last trim "
                                       "(0 = off): bounds the resident size on CPU at a fraction of the page "
                                       "faults of trim_every (bench/bench_trim.py).", ge(0))
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto, cpu or cuda.")
    precision: Literal["auto", "bf16", "fp32"] = _f(
        "auto", "Every runtime's one policy: bf16 autocast of the encoder on CUDA (auto or bf16), float32 "
        "parameters, optimizer state and losses; float32 on CPU.")
    progress: bool = _f(True, "Show a per-epoch progress bar on a terminal (never drawn into a log file or pipe).")
    epoch_steps: int = _f(0, "Cap on optimizer steps per epoch (0 = the whole epoch): smoke runs and benchmarks.",
                          ge(0))
    time_limit_min: float = _f(
        0.0, "Stop starting new epochs after this many minutes (0 = none); the best checkpoint is still tested.",
        ge(0),
    )


@dataclass
class EvalConfig:
    batch_size: int = _f(1024, "Users per evaluation batch.", ge(1))
    item_chunk: int = _f(65536, "Items scored per chunk in full-ranking top-k.", ge(1))
    max_users: int = _f(0, "Validation and final scoring on a fixed seeded sample of about this many users "
                           "(0 = every user, as every reported figure uses).", ge(0))
    ks: list[int] = _f([5, 10, 20], "Cut-offs of HR@k and NDCG@k.", ListOf(ge(1), "ints"))
    metric: str = _f("NDCG@20", "Validation metric for model selection and early stopping: HR@k or NDCG@k "
                                "with k in eval.ks, or MRR.")
    ann: bool = _f(False, "Rank with the item index (negatives.item_index_*: exact flat below "
                          "item_index_exact_below items, else IVF or HNSW) instead of the exact full ranking: a "
                          "target counts only when the index retrieves it among the top max(eval.ks) items (MRR is "
                          "then over that list), and ann_recall@20, the index's recall of the exact top-20 on "
                          "eval.ann_recall_users users, is reported beside the metrics.")
    ann_recall_users: int = _f(1000, "eval.ann: about this many users (a fixed sample: a hash of the user id and "
                                     "train.seed) on which the ANN top-20 is compared with the exact top-20.", ge(1))


@dataclass
class DistributedConfig:
    num_workers: int = _f(1, "Ray Train workers.", ge(1))
    use_gpu: bool = _f(False, "One GPU per worker.")
    cpus_per_worker: float = _f(1.0, "Logical CPUs per worker (fractions allowed).", gt(0))
    max_failures: int = _f(0, "Automatic restarts after a worker failure (-1 = unlimited).", ge(-1))
    resource_wait_s: float = _f(600.0, "Seconds a start or restart of the workers waits for their resources (a "
                                       "lost node back, an autoscaler's new one) before the run fails with a line "
                                       "naming them.", gt(0))
    keep_checkpoints: int = _f(2, "Checkpoints kept (the newest; one process and Ray Train alike).", ge(1))
    storage_path: str = _f("", "Ray Train storage path (shared storage on clusters); '' = runs/.")
    name: str = _f("", "Run name; re-running with the same name resumes. '' = derived from data.")


@dataclass
class DeepSpeedConfig:
    enabled: bool = _f(True, "Wrap the model in a DeepSpeed engine in Ray Train workers.")
    zero_stage: int = _f(0, "ZeRO stage 0, 1 or 2.", OneOf((0, 1, 2)))
    optimizer: str = _f("torch_adam", "torch_adam (no compile) or a DeepSpeed optimizer type.", NonEmpty())


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



# --------------------------------------------------------------------------- YAML


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, mark: Any, first: Any) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.mark, self.first = key, mark, first

    def where(self) -> str:
        first = f" (first given on line {self.first.line + 1})" if self.first is not None else ""
        return f"line {self.mark.line + 1}: duplicate key {self.key!r}{first}"


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping giving the same key twice (plain PyYAML keeps the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges may be overridden by explicit keys
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKeyError(key, key_node.start_mark, seen[key])
                    seen[key] = key_node.start_mark
                except TypeError:  # unhashable key: SafeLoader reports it below
                    continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse the YAML file ``path``; every problem (missing, a directory, unreadable, not UTF-8,
    invalid YAML, a duplicate key) is a ConfigError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a directory, not a YAML file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {p} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          f"is it a YAML file?") from exc
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{p}: {exc.where()}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc


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
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}", keys=[key])
        return value
    if origin in (list, typing.List):
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}", keys=[key])
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}", keys=[key])
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {type(value).__name__} {value!r}", keys=[key])
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}", keys=[key])
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads exponent notation without a dot (1e-4) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}", keys=[key])
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}", keys=[key])
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}", keys=[key])
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}", keys=[key])


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _bf16_to_precision(v: Any, key: str) -> str:
    table = {"auto": "auto", "true": "bf16", "false": "fp32", True: "bf16", False: "fp32"}
    if v not in table:
        raise ConfigError(f"{key}: {v!r} is not one of auto, true, false (the key is now train.precision: "
                          f"auto, bf16 or fp32)", keys=[key])
    return table[v]


# earlier key -> (the key that replaced it, value conversion): saved run configs keep loading
MOVED: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "deepspeed.bf16": ("train.precision", _bf16_to_precision),
}


def upgrade_keys(raw: Any) -> Any:
    """A nested config mapping with earlier key names (``MOVED``) renamed to the current ones."""
    if not isinstance(raw, dict):
        return raw
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for old, (new, convert) in MOVED.items():
        o_sec, o_name = old.split(".")
        n_sec, n_name = new.split(".")
        sec = out.get(o_sec)
        if isinstance(sec, dict) and o_name in sec:
            value = convert(sec.pop(o_name), old)
            target = out.setdefault(n_sec, {})
            if isinstance(target, dict):
                target.setdefault(n_name, value)
    return out


def _merge_into(obj: Any, values: dict[str, Any], prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}",
                          keys=[prefix] if prefix else [])
    hints = _hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})", keys=[key])
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
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() != "" else ""
    except _DuplicateKeyError as exc:
        raise ConfigError(f"override {key}: duplicate key {exc.key!r} in {raw!r}", keys=[key]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}", keys=[key]) from exc
    return key, value


def apply_override(cfg: Config, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value`` with type checking."""
    if key in MOVED:  # an earlier name: set the key that replaced it
        key, value = MOVED[key][0], MOVED[key][1](value, key)
    parts = key.split(".")
    obj: Any = cfg
    for i, p in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown config key '{here}'", keys=[here])
        obj = getattr(obj, p)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{here} is not a section: it is a key of type {type(obj).__name__} (set it with "
                              f"{here}=VALUE), so '{key}' does not exist", keys=[here])
    _merge_into(obj, {parts[-1]: value}, ".".join(parts[:-1]))


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Build a Config from defaults, an optional YAML file and dotted overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        raw = read_yaml(p) or {}
        try:
            _merge_into(cfg, upgrade_keys(raw), "")
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}", keys=exc.keys) from exc
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
                              f"computes); --set may change only {', '.join(RESUME_KEYS)}", keys=[key])
        before.setdefault(key, value_of(key))
        apply_override(cfg, key, value)
    validate(cfg)
    if cfg.train.lr_schedule == "cosine" and value_of("train.epochs") != before.get("train.epochs", cfg.train.epochs):
        raise ConfigError(f"--resume: train.epochs is the horizon of the run's cosine learning-rate schedule "
                          f"(train.lr_schedule=cosine); changing it would change what the run computes",
                          keys=["train.epochs"])
    return [(k, old, value_of(k)) for k, old in before.items() if value_of(k) != old]


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from ``to_dict`` output (used by workers and resume)."""
    cfg = Config()
    _merge_into(cfg, upgrade_keys(values), "")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------- validation


KNOWN_SOURCES = ("in_batch", "hard", "noise", "index")


def metrics_for_ks(ks: Iterable[int]) -> list[str]:
    """The validation metrics evaluation reports for the cut-offs ``ks``."""
    ks = list(ks)
    return [f"{m}@{k}" for m in ("HR", "NDCG") for k in ks] + ["MRR"]


def _field_index() -> dict[str, tuple[Any, dataclasses.Field]]:
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    for sec in dataclasses.fields(Config):
        cls = sec.type if isinstance(sec.type, type) else _hints(Config)[sec.name]
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{sec.name}.{f.name}"] = (hints[f.name], f)
    return out


_FIELDS: dict[str, tuple[Any, dataclasses.Field]] = {}


def _fields() -> dict[str, tuple[Any, dataclasses.Field]]:
    if not _FIELDS:
        _FIELDS.update(_field_index())
    return _FIELDS


def field_check(key: str) -> Check | None:
    """The range check of the dotted ``key`` (None: any value of its type)."""
    entry = _fields().get(key)
    return entry[1].metadata.get("check") if entry else None


def _check_range(key: str, value: Any) -> None:
    check = field_check(key)
    if check is not None and not check.ok(value):
        raise ConfigError(f"{key}: must be {check.text()}, got {value!r}", keys=[key])


def check_value(key: str, value: Any) -> Any:
    """Type- and range-check one value for the dotted ``key`` alone (no cross-field checks);
    returns the coerced value. Raises ConfigError naming the key."""
    entry = _fields().get(key)
    if entry is None:
        raise ConfigError(f"unknown config key '{key}'", keys=[key])
    value = _coerce(value, entry[0], key)
    _check_range(key, value)
    if key == "negatives.sources":
        _check_sources(value)
    return value


def _check_sources(sources: list[str]) -> None:
    if not sources:
        raise ConfigError("negatives.sources: must name at least one source (e.g. [in_batch]); an empty list "
                          "leaves the contrastive terms without negatives after the warm-up",
                          keys=["negatives.sources"])
    twice = sorted({s for s in sources if sources.count(s) > 1})
    if twice:
        raise ConfigError(f"negatives.sources: {', '.join(map(repr, twice))} listed more than once "
                          f"(each source enters the denominators once)", keys=["negatives.sources"])
    for s in sources:
        if s not in KNOWN_SOURCES:
            raise ConfigError(f"negatives.sources: unknown source {s!r} (known: {list(KNOWN_SOURCES)})",
                              keys=["negatives.sources"])


def validate(cfg: Config) -> None:
    """Every key's own range (the ``check`` beside its default), then cross-field checks.

    Each error names one key (the one whose range or relation is violated) and the allowed
    values: ``train.batch_size: must be >= 1, got 0``.
    """
    for key in _fields():
        section, name = key.split(".")
        _check_range(key, getattr(getattr(cfg, section), name))
    _check_sources(cfg.negatives.sources)
    neg, model = cfg.negatives, cfg.model
    if neg.lam_min > neg.lam_max:
        raise ConfigError(f"negatives.lam_min: must be <= negatives.lam_max ({neg.lam_max!r}), got {neg.lam_min!r}",
                          keys=["negatives.lam_min", "negatives.lam_max"])
    if "index" in neg.sources and not neg.index_k < neg.index_candidates:
        raise ConfigError(f"negatives.index_candidates: must be > negatives.index_k ({neg.index_k}) when 'index' "
                          f"is in negatives.sources, got {neg.index_candidates}",
                          keys=["negatives.index_candidates", "negatives.index_k"])
    loss = cfg.loss
    if loss.rec_softmax == "sampled" and not (loss.sampled_in_batch or loss.sampled_random or loss.sampled_mined):
        raise ConfigError("loss.rec_softmax: sampled needs candidates: loss.sampled_in_batch, loss.sampled_random "
                          "> 0 or loss.sampled_mined > 0", keys=["loss.rec_softmax"])
    if model.cuda_graphs and not model.static_shapes:
        raise ConfigError("model.cuda_graphs: needs model.static_shapes=true (a CUDA graph replays fixed shapes)",
                          keys=["model.cuda_graphs", "model.static_shapes"])
    if model.hidden % model.heads:
        raise ConfigError(f"model.hidden: must be divisible by model.heads ({model.heads}), got {model.hidden}",
                          keys=["model.hidden", "model.heads"])
    last_epoch = cfg.train.epochs - 1
    if cfg.train.seed + last_epoch > INT32_MAX:
        raise ConfigError(f"train.seed: must be <= {INT32_MAX - last_epoch} with train.epochs={cfg.train.epochs} "
                          f"(k-means takes seed + epoch as a 32-bit int), got {cfg.train.seed}",
                          keys=["train.seed", "train.epochs"])
    if cfg.train.lr_warmup_epochs >= cfg.train.epochs:
        raise ConfigError(f"train.lr_warmup_epochs: must be < train.epochs ({cfg.train.epochs}), got "
                          f"{cfg.train.lr_warmup_epochs}", keys=["train.lr_warmup_epochs", "train.epochs"])
    allowed = metrics_for_ks(cfg.eval.ks)
    if cfg.eval.metric not in allowed:
        raise ConfigError(f"eval.metric: must be one of {allowed} (the metrics of eval.ks={list(cfg.eval.ks)}), "
                          f"got {cfg.eval.metric!r}", keys=["eval.metric", "eval.ks"])


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every key: the documented reference. The doc ends
    with the allowed range ("Must be >= 1.") of keys that have one."""
    rows: list[tuple[str, str, Any, str]] = []
    inst = cls()
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        val = getattr(inst, f.name)
        if dataclasses.is_dataclass(val):
            rows.extend(describe(type(val), key + "."))
        else:
            doc = f.metadata.get("doc", "")
            check = f.metadata.get("check")
            if check is not None:
                doc = f"{doc} Must be {check.text()}."
            rows.append((key, _type_name(hints[f.name]), val, doc))
    return rows
