"""The one config schema: every key, its type, default, allowed range and meaning.

Each config group (`model`, `data`, `dropout`, `train`, `gen`) and the decoding settings of
one sampler are a dataclass here. The YAML files in conf/ are presets over these
defaults; `config.validate` merges a composed config onto this schema (unknown keys and
wrong types are refused there) and then runs the checks declared on each field and the
cross-field checks in each class's `check`. Nothing else in dropsample lists keys.

Field metadata:
    help     what the key means (the README's configuration reference says the same)
    check    a Check run on the value (ranges, choices)
    result   False for keys that name, place or schedule a run without changing its
             numbers (run names, folders, device choice, log cadence): `identity` drops
             them, so sweep reruns skip finished work and the report groups seeds by them.

This module is a leaf: it imports nothing from dropsample but errors.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from dropsample.errors import ConfigError

# allowed values that other modules share
SITES = ("embd", "attn", "resid_attn", "mlp_hidden", "resid_mlp", "head")
LOCKABLE_SITES = ("embd", "resid_attn", "mlp_hidden", "resid_mlp", "head")
VARIANTS = ("word", "drop_head", "drop_path")
SCHEDULES = ("constant", "early", "late", "linear", "val_plateau")
TOKENIZERS = ("char", "bpe", "gpt2")
DOCUMENT_MODES = ("rows", "wikitext")
DTYPES = ("auto", "float32", "bfloat16", "float16")
STRATEGIES = ("greedy", "sample", "beam", "contrastive")
WARPERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta")  # sampling-only settings
CHECKPOINTS = ("best", "last")


# ---------------------------------------------------------------------------
# Checks declared on fields


@dataclass(frozen=True)
class Range:
    """low <= value <= high (either end open or absent); `integer` for counts."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allowed: str = ""

    def __call__(self, key: str, value) -> None:
        if value is None:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise ConfigError(key, f"got {value!r}; {self.allowed or self.describe()}")

    def describe(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"must be in {lo}{low}, {high}{hi}"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def __call__(self, key: str, value) -> None:
        if value is not None and value not in self.choices:
            raise ConfigError(key, f"got {value!r}; choose one of {', '.join(map(str, self.choices))}")


@dataclass(frozen=True)
class SubsetOf:
    choices: tuple
    noun: str = "entry"

    def __call__(self, key: str, value) -> None:
        for item in value or ():
            if item not in self.choices:
                raise ConfigError(key, f"unknown {self.noun} {item!r}; choose from {', '.join(self.choices)}")


POSITIVE = Range(1, allowed="must be a positive integer")
COUNT = Range(0, allowed="must be an integer >= 0")
RATE = Range(0.0, 1.0, high_open=True, allowed="a dropout rate must be in [0, 1)")
UNIT = Range(0.0, 1.0, allowed="must be in [0, 1]")


def spec(default=MISSING, help: str = "", *, check=None, result: bool = True, factory=None):
    """A schema field: its default, meaning, check and whether it changes results."""
    meta = {"help": help, "check": check, "result": result}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------
# Groups


@dataclass
class ModelConfig:
    """The model's shape, or the pretrained GPT-2 it starts from (`init_from`). With `init_from`
    the shape comes from the source: null keys take its values, numbers must agree with it
    (block_size may be shorter than its context: the position table is cut)."""

    n_layer: Optional[int] = spec(4, "transformer blocks (null: the init_from source's)", check=POSITIVE)
    n_head: Optional[int] = spec(4, "attention heads per block (null: the init_from source's)", check=POSITIVE)
    n_embd: Optional[int] = spec(128, "width of the residual stream, a multiple of n_head (null: the init_from "
                                 "source's)", check=POSITIVE)
    block_size: Optional[int] = spec(64, "context length in tokens (null: the init_from source's context)",
                                     check=POSITIVE)
    init_from: Optional[str] = spec(None, "start from a pretrained GPT-2: a hub id (gpt2, gpt2-medium, distilgpt2) "
                                    "or a local folder of save_pretrained output (model.safetensors, config.json, "
                                    "tokenizer.json); null: random init")

    def check(self, prefix: str) -> None:
        if self.init_from is None:
            for name in SHAPE:
                if getattr(self, name) is None:
                    raise ConfigError(f"{prefix}{name}", "is null, which means the shape of model.init_from, but "
                                      "model.init_from is not set; give a number or a source")
        elif not str(self.init_from).strip():
            raise ConfigError(f"{prefix}init_from", "is empty; give a hub id (gpt2) or a local folder, or null")
        if self.n_embd is not None and self.n_head is not None and self.n_embd % self.n_head:
            raise ConfigError(f"{prefix}n_embd", f"{self.n_embd} is not divisible by {prefix}n_head={self.n_head}; "
                              "pick a multiple")


SHAPE = ("n_layer", "n_head", "n_embd", "block_size")  # the ModelConfig keys a pretrained source fixes


@dataclass
class DataConfig:
    """What text to read (the first source that applies: `path`, `local_copy` under
    $DROPSAMPLE_DATA_DIR, `url`, then `name`), which split plays which role, and the tokenizer."""

    name: str = spec("tiny_shakespeare", "the dataset: a hub id (roneneldan/TinyStories) or a local file or folder "
                     "(parquet, json/jsonl, csv, txt); a label when `url` or `local_copy` supply the text")
    config: Optional[str] = spec(None, "hub dataset configuration, e.g. wikitext-2-raw-v1")
    revision: Optional[str] = spec(None, "hub branch, tag or commit (null: main); the commit read is recorded")
    path: Optional[str] = spec(None, "a local file or folder that wins over every other source")
    local_copy: Optional[str] = spec(None, "file or folder under $DROPSAMPLE_DATA_DIR, used when both exist")
    url: Optional[str] = spec(None, "a file downloaded once into the cache when there is no local copy")
    sha256: Optional[str] = spec(None, "expected sha256 of the `url` file (a mismatch caches nothing)")
    text_column: str = spec("text", "the column holding the text (json, parquet, csv, hub datasets)")
    documents: str = spec("rows", "rows: every row (a text file: the whole file) is a document; wikitext: "
                          "lines regrouped into articles at each ' = Title = ' heading", check=OneOf(DOCUMENT_MODES))
    splits: Optional[Dict[str, Optional[str]]] = spec(
        help="role (train/val/test) -> split name; null: the source's validation/test split if it has one, "
             "else val carved from train (test only when test_fraction > 0)",
        factory=lambda: {"train": "train", "val": None, "test": None})
    val_fraction: float = spec(0.1, "carving: the last fraction of train validates",
                               check=Range(0.0, 1.0, low_open=True, high_open=True))
    test_fraction: float = spec(0.0, "carving: the fraction before validation held out as test",
                                check=Range(0.0, 1.0, high_open=True))
    max_docs: Optional[int] = spec(None, "read at most this many documents of each split (null: all)",
                                   check=POSITIVE)
    max_chars: Optional[int] = spec(None, "read at most this many characters of each split (null: all)",
                                    check=POSITIVE)
    streaming: bool = spec(True, "read through datasets' streaming mode: no copy on disk, reading stops at the "
                           "caps; false keeps datasets' own cache (hub data then works offline later)", result=False)
    tokenizer: str = spec("char", "char, bpe (byte-level BPE trained on the training split) or gpt2 (pretrained)",
                          check=OneOf(TOKENIZERS))
    tokenizer_path: Optional[str] = spec(None, "gpt2: a tokenizer.json, a folder holding one, or a hub model id "
                                         "(null: the hub's gpt2)")
    vocab_size: int = spec(1024, "BPE vocabulary size (>= 257)")
    cache_dir: Optional[str] = spec(None, "tokenized data cache (null: DROPSAMPLE_CACHE_DIR or ~/.cache/dropsample)",
                                    result=False)

    def check(self, prefix: str) -> None:
        if self.tokenizer == "bpe":
            Range(257, allowed="byte-level BPE needs at least 257 (256 bytes + <|endoftext|>)")(
                f"{prefix}vocab_size", self.vocab_size)
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"{prefix}val_fraction", "val_fraction + test_fraction must leave some text for training")
        for role in self.splits or {}:
            OneOf(("train", "val", "test"))(f"{prefix}splits", role)
        if self.splits and "train" in self.splits and not self.splits["train"]:
            raise ConfigError(f"{prefix}splits.train", "must name the split to train on, e.g. train")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(self.sha256)):
            raise ConfigError(f"{prefix}sha256", f"got {self.sha256!r}; a sha256 is 64 hex digits (or null: no check)")
        if not str(self.name).strip():
            raise ConfigError(f"{prefix}name", "is empty; give a hub dataset id or a local file or folder")


@dataclass
class ScheduleConfig:
    """A factor s(t) in [0, 1] that multiplies every dropout rate at step t."""

    kind: str = spec("constant", "constant, early, late, linear or val_plateau", check=OneOf(SCHEDULES))
    start: float = spec(0.0, "late: the factor becomes 1 at this fraction of training", check=UNIT)
    end: float = spec(0.25, "early: the factor leaves 1 at this fraction of training", check=UNIT)
    start_step: Optional[int] = spec(None, "late: a step count that wins over `start`", check=COUNT)
    end_step: Optional[int] = spec(None, "early: a step count that wins over `end`", check=COUNT)
    early_decay: str = spec("hold", "early: hold (1 then 0) or linear (1 down to 0 at the end)",
                            check=OneOf(("hold", "linear")))
    from_factor: float = spec(1.0, "linear: factor at step 0", check=UNIT)
    to_factor: float = spec(0.0, "linear: factor at the last step", check=UNIT)
    plateau_factor: float = spec(0.5, "val_plateau: multiply the factor by this ...", check=UNIT)
    plateau_threshold: float = spec(0.01, "... when val loss fell by less than this (nats) since the last eval",
                                    check=Range(0.0, allowed="must be >= 0 (nats)"))
    plateau_min_factor: float = spec(0.0, "val_plateau: the factor never goes below this", check=UNIT)


@dataclass
class DropoutConfig:
    """Where and how much to drop. `rate` sets every site in `sites`; a number at a site wins."""

    rate: float = spec(0.1, "shorthand: the rate of every site listed in `sites`", check=RATE)
    sites: List[str] = spec(help="sites that take `rate`", check=SubsetOf(SITES, "site"),
                            factory=lambda: ["embd", "attn", "resid_attn", "resid_mlp"])
    embd: Optional[float] = spec(None, "after token + position embeddings (null: `rate` if listed)", check=RATE)
    attn: Optional[float] = spec(None, "on the attention probabilities", check=RATE)
    resid_attn: Optional[float] = spec(None, "after the attention output projection", check=RATE)
    mlp_hidden: Optional[float] = spec(None, "after the MLP activation", check=RATE)
    resid_mlp: Optional[float] = spec(None, "after the MLP output projection", check=RATE)
    head: Optional[float] = spec(None, "before the final LayerNorm and LM head", check=RATE)
    locked: List[str] = spec(help="sites that share one mask over positions (variational)",
                             check=SubsetOf(LOCKABLE_SITES, "site"), factory=list)
    word: float = spec(0.0, "embedding dropout: whole token types per batch", check=RATE)
    drop_head: float = spec(0.0, "DropHead: whole attention heads per sample", check=RATE)
    drop_path: float = spec(0.0, "stochastic depth: whole residual branches per sample", check=RATE)
    drop_path_by_depth: bool = spec(True, "layer l of L gets drop_path * (l + 1) / L")
    schedule: ScheduleConfig = spec(help="a factor over training that multiplies every rate",
                                    factory=ScheduleConfig)


@dataclass
class TrainConfig:
    max_iters: int = spec(2000, "optimizer steps (0: evaluate and sample the initial model, e.g. a pretrained one)",
                          check=COUNT)
    batch_size: int = spec(32, "sequences per micro-batch", check=POSITIVE)
    grad_accum: int = spec(1, "micro-batches per optimizer step", check=POSITIVE)
    lr: float = spec(1e-3, "peak learning rate", check=Range(0.0, low_open=True, allowed="must be > 0"))
    min_lr: float = spec(1e-4, "floor of the cosine decay (<= lr)", check=Range(0.0, allowed="must be >= 0"))
    warmup_iters: int = spec(100, "linear warm-up steps", check=COUNT)
    lr_decay_iters: Optional[int] = spec(None, "step where the cosine reaches min_lr (null: max_iters)",
                                         check=POSITIVE)
    weight_decay: float = spec(0.1, "AdamW decay on matrices and embeddings", check=Range(0.0, allowed="must be >= 0"))
    beta1: float = spec(0.9, "AdamW beta1", check=Range(0.0, 1.0, high_open=True))
    beta2: float = spec(0.99, "AdamW beta2", check=Range(0.0, 1.0, high_open=True))
    grad_clip: float = spec(1.0, "global gradient norm clip (0 = off)", check=Range(0.0, allowed="must be >= 0 (0 = off)"))
    eval_interval: int = spec(250, "steps between evaluations and checkpoints", check=POSITIVE)
    eval_iters: int = spec(20, "batches per split per evaluation", check=POSITIVE)
    eval_seed: int = spec(2024, "seed of the fixed evaluation batches")
    final_eval_tokens: Optional[int] = spec(2_000_000, "after training, evaluate the best checkpoint on up to this "
                                            "many tokens of each split, evenly spaced windows (null: whole splits)",
                                            check=POSITIVE)
    log_interval: int = spec(50, "log line and train_curve.jsonl cadence (steps)", check=POSITIVE,
                             result=False)
    device: str = spec("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", result=False)
    dtype: str = spec("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), float32, bfloat16 or float16",
                      check=OneOf(DTYPES))
    compile: bool = spec(False, "torch.compile the model", result=False)
    jobs_per_gpu: int = spec(1, "parallel sweeps: jobs sharing one GPU", check=POSITIVE, result=False)
    ddp: Optional[bool] = spec(None, "one run on several processes (torchrun, or SLURM tasks): null = DDP whenever "
                               "launched on several, true = require such a launch, false = refuse one; the global "
                               "batch is batch_size x grad_accum x processes", result=False)

    def check(self, prefix: str) -> None:
        Range(0.0, self.lr, allowed=f"must be in [0, {prefix}lr={self.lr}]")(f"{prefix}min_lr", self.min_lr)
        device = str(self.device)
        if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"{prefix}device", f"got {device!r}; use auto, cpu, cuda, cuda:N or mps")


@dataclass
class GenConfig:
    num_samples: int = spec(32, "prompts, and samples per sampler", check=POSITIVE)
    prompt_tokens: int = spec(32, "prompt length taken from the val split", check=POSITIVE)
    max_new_tokens: int = spec(128, "tokens generated per sample", check=POSITIVE)
    min_new_tokens: int = spec(0, "end-of-text cannot end a sample before this many new tokens", check=COUNT)
    batch_size: int = spec(32, "samples generated at once", check=POSITIVE, result=False)
    seed: int = spec(0, "sample i uses seed + i")
    prompt: Optional[str] = spec(None, "one prompt text for every sample instead of val prefixes")
    prompt_file: Optional[str] = spec(None, "a file with one prompt per line")
    stop: List[str] = spec(help="stop strings", factory=list)
    checkpoint: str = spec("best", "best or last", check=OneOf(CHECKPOINTS))
    mc_dropout: bool = spec(False, "add greedy decoding with dropout kept on")
    name: Optional[str] = spec(None, "samples/<name>/ (null: a timestamp)", result=False)
    bootstrap: int = spec(1000, "bootstrap replicates over samples for the 95% intervals (0: none)", check=COUNT)
    mauve_buckets: Optional[int] = spec(None, "MAUVE's k-means clusters (null: its authors' N / 10)",
                                        check=Range(2, allowed="must be >= 2 (or null)"))
    mauve_seed: int = spec(25, "MAUVE's k-means seed (mauve-text's default)")

    def check(self, prefix: str) -> None:
        Range(0, self.max_new_tokens, allowed=f"must be in [0, {prefix}max_new_tokens={self.max_new_tokens}]")(
            f"{prefix}min_new_tokens", self.min_new_tokens)


# Experiment loggers (conf/logger/): a backend is on when its section is present, so
# `logger=[tensorboard,csv]` selects two. None of them changes a run's numbers.
LOGGERS = ("tensorboard", "wandb", "mlflow", "csv")


@dataclass
class TensorBoardLogger:
    """Event files in <run>/logs/tensorboard/ (torch.utils.tensorboard's SummaryWriter)."""

    flush_secs: int = spec(30, "seconds between flushes of the event file (each evaluation flushes too)",
                           check=POSITIVE)


@dataclass
class WandbLogger:
    """A W&B run whose files live in <run>/logs/wandb/; offline unless asked otherwise."""

    mode: str = spec("offline", "offline (upload later with `wandb sync`), online or disabled",
                     check=OneOf(("offline", "online", "disabled")))
    project: str = spec("dropsample", "W&B project")
    entity: Optional[str] = spec(None, "W&B user or team (null: your default)")
    group: Optional[str] = spec(None, "W&B group (null: experiment_name)")
    tags: List[str] = spec(help="W&B tags", factory=list)


@dataclass
class MlflowLogger:
    """An MLflow run in a database-backed tracking store (never the deprecated file store)."""

    tracking_uri: Optional[str] = spec(None, "sqlite:///PATH.db or http(s)://SERVER "
                                       "(null: sqlite:///<runs_root>/mlflow.db)")
    experiment: Optional[str] = spec(None, "MLflow experiment (null: experiment_name)")

    def check(self, prefix: str) -> None:
        uri = self.tracking_uri
        if uri is not None and not uri.startswith(("sqlite:///", "postgresql", "mysql", "mssql", "http://",
                                                   "https://", "databricks")):
            raise ConfigError(f"{prefix}tracking_uri", f"got {uri!r}; MLflow's file store is deprecated: use "
                              "sqlite:///PATH.db (a local file) or http(s)://SERVER")


@dataclass
class CsvLogger:
    """<run>/logs/csv/metrics.csv (one row per logged point, a column per name) and hparams.yaml."""


@dataclass
class LoggerConfig:
    samples: int = spec(4, "completions per sampler sent to the loggers as text", check=COUNT)
    tensorboard: Optional[TensorBoardLogger] = spec(None, "logger=tensorboard")
    wandb: Optional[WandbLogger] = spec(None, "logger=wandb")
    mlflow: Optional[MlflowLogger] = spec(None, "logger=mlflow")
    csv: Optional[CsvLogger] = spec(None, "logger=csv")

    def enabled(self) -> list[str]:
        return [name for name in LOGGERS if getattr(self, name) is not None]


DEFAULT_SAMPLERS = ["greedy", "pure", "temp_0.7", "top_k_40", "top_p_0.9", "min_p_0.1", "typical_0.95"]


@dataclass
class Config:
    """The root: what `dropsample train` composes from conf/config.yaml and overrides."""

    model: ModelConfig = spec(factory=ModelConfig)
    data: DataConfig = spec(factory=DataConfig)
    dropout: DropoutConfig = spec(factory=DropoutConfig)
    train: TrainConfig = spec(factory=TrainConfig)
    gen: GenConfig = spec(factory=GenConfig)
    experiment_name: str = spec("default", "folder under runs_root grouping related runs", result=False)
    name: str = spec("run", "suffix of the run folder", result=False)
    seed: int = spec(1337, "model init, training batches and dropout masks")
    runs_root: str = spec("runs", "where run folders go, relative to the working directory", result=False)
    samplers: List[Any] = spec(help="sampler preset names or dicts of settings compared after training",
                               factory=lambda: list(DEFAULT_SAMPLERS))
    sample_after_train: bool = spec(True, "end `train` with `sample` on the best checkpoint")
    judge: Optional[str] = spec(None, "the fixed model that scores every sampler's text (gen-ppl, MAUVE): a "
                                "completed run folder, a transformers model folder or a hub id (null: self-scored, "
                                "no MAUVE)")
    logger: LoggerConfig = spec(help="experiment loggers (conf/logger/): none, tensorboard, wandb, mlflow, csv",
                                factory=LoggerConfig, result=False)
    objective: str = spec("val_loss", "what a sweep job returns to an adaptive sweeper (objective.py): val_loss, "
                          "val_bpb, a numeric summary field or <sampler>.<metric>", result=False)


# ---------------------------------------------------------------------------
# Decoding settings of one sampler (conf/sampler/*.yaml and dict entries of `samplers`)


@dataclass
class SamplerSettings:
    strategy: str = spec("sample", "greedy, sample, beam or contrastive", check=OneOf(STRATEGIES))
    temperature: float = spec(1.0, "divide logits by this (0 = greedy)", check=Range(0.0, allowed="must be >= 0 (0 = greedy)"))
    top_k: int = spec(0, "keep the k most likely tokens (0 = off); contrastive: the candidates",
                      check=Range(0, allowed="must be an integer >= 0 (0 = off)"))
    top_p: float = spec(1.0, "nucleus mass (1 = off)", check=Range(0.0, 1.0, low_open=True))
    min_p: float = spec(0.0, "keep tokens with p >= min_p * p_max (0 = off)", check=UNIT)
    typical_p: float = spec(1.0, "locally typical mass (1 = off)", check=Range(0.0, 1.0, low_open=True))
    epsilon: float = spec(0.0, "drop tokens with p < epsilon (0 = off)", check=Range(0.0, 1.0, high_open=True))
    eta: float = spec(0.0, "eta sampling's epsilon (0 = off)", check=Range(0.0, 1.0, high_open=True))
    repetition_penalty: float = spec(1.0, "CTRL's penalty on seen tokens (1 = off)",
                                     check=Range(0.0, low_open=True, allowed="must be > 0 (1 = off)"))
    no_repeat_ngram_size: int = spec(0, "ban repeating n-grams of this size (0 = off)", check=COUNT)
    num_beams: int = spec(4, "beam: hypotheses kept", check=POSITIVE)
    length_penalty: float = spec(1.0, "beam: score = sum log p / length ** length_penalty (end-of-text counted)")
    early_stopping: bool = spec(False, "beam: a prompt stops at num_beams ended hypotheses (false: when no live "
                                "beam can beat the worst of them)")
    penalty_alpha: float = spec(0.6, "contrastive: weight of the degeneration penalty", check=UNIT)
    mc_dropout: bool = spec(False, "keep the model's dropout on while decoding")

    def check(self, prefix: str) -> None:
        if self.strategy == "contrastive":
            Range(1, allowed="contrastive search needs top_k >= 1")(f"{prefix}top_k", self.top_k)
        if self.strategy != "sample":
            # as in transformers, these reshape the distribution a sample is drawn from: only sampling uses them
            for name in WARPERS:
                value = getattr(self, name)
                neutral = (name == "top_k" and self.strategy == "contrastive") or (
                    name == "temperature" and self.strategy == "greedy" and value == 0)
                if value != _DEFAULTS[name] and not neutral:
                    raise ConfigError(f"{prefix}{name}", f"got {value!r}, but only strategy=sample uses it "
                                      f"({self.strategy} does not sample); remove it or use strategy=sample")

    def changed(self) -> dict:
        """Only the settings that differ from their defaults (what names and files show)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


_DEFAULTS = {f.name: f.default for f in fields(SamplerSettings)}


@dataclass
class Sampler:
    """A named decoding strategy: what `samplers` entries resolve to."""

    name: str
    settings: SamplerSettings

    @property
    def strategy(self) -> str:
        if self.settings.temperature == 0:
            return "greedy"  # the limit T -> 0
        return self.settings.strategy


# ---------------------------------------------------------------------------
# Walking the schema


def check(obj, prefix: str = "") -> None:
    """Run every field's check, then the class's own cross-field check, depth first."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            check(value, key + ".")
            continue
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise ConfigError(key, f"got {value!r}; use true or false")
        rule = f.metadata.get("check")
        if rule is not None:
            rule(key, value)
    own = getattr(obj, "check", None)
    if callable(own):
        own(prefix)


def derive(cfg: Config) -> Config:
    """Values one key implies for others, set after the checks (config.validate runs this, so
    training, `sample` and `eval` all see them): a pretrained source brings its tokenizer, so
    the data is tokenized with it (data.tokenizer=gpt2, data.tokenizer_path=the source)."""
    source, data = cfg.model.init_from, cfg.data
    if source is None:
        return cfg
    if data.tokenizer == "bpe":
        raise ConfigError("data.tokenizer", f"bpe trains a new tokenizer, but model.init_from={source} brings its own; "
                          "drop data.tokenizer (it becomes gpt2)")
    if data.tokenizer_path not in (None, source):
        raise ConfigError("data.tokenizer_path", f"{data.tokenizer_path} differs from model.init_from={source}, whose "
                          "tokenizer the model was trained with; drop data.tokenizer_path")
    data.tokenizer, data.tokenizer_path = "gpt2", source
    return cfg


def field_class(cls, name: str):
    """The schema class of field `name` of `cls`, if that field is a group."""
    for f in fields(cls):
        if f.name == name and f.default_factory is not MISSING:
            default = f.default_factory()
            return type(default) if is_dataclass(default) else None
    return None


def bool_keys(cls, prefix: str = "") -> list[str]:
    """Dotted keys of every boolean field (OmegaConf would turn `2` or `no` into a bool silently)."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            out += bool_keys(type(default), f"{prefix}{f.name}.")
        elif f.type in ("bool", bool):
            out.append(f"{prefix}{f.name}")
    return out


def non_result_keys(cls=Config, prefix: str = "") -> list[str]:
    """Dotted keys whose value never changes a run's numbers."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if not f.metadata.get("result", True):
            out.append(f"{prefix}{f.name}")
        elif is_dataclass(default):
            out += non_result_keys(type(default), f"{prefix}{f.name}.")
    return out


def to_dict(obj) -> dict:
    """A plain, JSON-ready dict of a schema object."""
    from dataclasses import asdict

    return asdict(obj)


def identity(cfg: Config, *, seed: bool = True) -> dict:
    """What a run's numbers depend on: the config minus non-result keys (and, for grouping
    seeds into one configuration, minus the seed). One definition for sweep skipping and
    report grouping."""
    data = to_dict(cfg)
    drop = non_result_keys() + ([] if seed else ["seed"])
    for key in drop:
        *parents, leaf = key.split(".")
        target = data
        for part in parents:
            target = target.get(part, {})
        target.pop(leaf, None)
    return data


def config_hash(cfg: Config, *, seed: bool = True) -> str:
    return hashlib.sha256(json.dumps(identity(cfg, seed=seed), sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def describe(cls=Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every leaf key: the configuration reference."""
    out = []
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            out += describe(type(default), f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))
    return out
