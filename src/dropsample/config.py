"""Where the configs live and the checks every config passes before any work starts.

Each check raises ConfigError("key", "what is allowed"), which the CLI prints as one
line with exit code 2. Checks that need the data (a context longer than the
corpus) run right after the data is loaded, still before training.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from dropsample.dropout import LOCKABLE_SITES, SCHEDULES, SITES
from dropsample.errors import ConfigError
from dropsample.tokenizer import KINDS

GROUPS = ("model", "data", "dropout", "train", "gen")
TOP_LEVEL = {"experiment_name", "name", "seed", "runs_root", "samplers", "sample_after_train", "hydra"} | set(GROUPS)
DTYPES = ("auto", "float32", "bfloat16", "float16")


def conf_dir() -> Path:
    """conf/ shipped inside the wheel, else the repository's top-level conf/ (editable installs)."""
    packaged = Path(str(resources.files("dropsample"))) / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def known_keys(group: str) -> set[str]:
    """Every key that some option of the group defines (so +group.typo=1 is caught)."""
    keys = set()
    for path in (conf_dir() / group).glob("*.yaml"):
        keys |= {k for k in OmegaConf.load(path).keys() if k != "defaults"}
    return keys


def _number(cfg, key: str, low=None, high=None, *, integer=False, low_open=False, high_open=False, allowed=""):
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, section) if section else cfg
    value = node.get(leaf) if node is not None else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, int)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(key, f"got {value!r}; {allowed}")
    return value


def _rate(cfg, key: str) -> None:
    section, _, leaf = key.rpartition(".")
    if OmegaConf.select(cfg, section).get(leaf) is None:
        return
    _number(cfg, key, 0.0, 1.0, high_open=True, allowed="a dropout rate must be in [0, 1)")


def _positive_int(cfg, key: str) -> int:
    return _number(cfg, key, 1, integer=True, allowed="must be a positive integer")


def _check_unknown(cfg: DictConfig) -> None:
    for key in cfg.keys():
        if key not in TOP_LEVEL:
            raise ConfigError(str(key), f"unknown key; top-level keys are {', '.join(sorted(TOP_LEVEL - {'hydra'}))}")
    for group in GROUPS:
        allowed = known_keys(group)
        for key in cfg[group].keys():
            if key not in allowed:
                raise ConfigError(f"{group}.{key}", f"unknown key; {group} takes {', '.join(sorted(allowed))}")


def validate(cfg: DictConfig) -> None:
    _check_unknown(cfg)
    # model
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        _positive_int(cfg, f"model.{key}")
    if cfg.model.n_embd % cfg.model.n_head:
        raise ConfigError(
            "model.n_embd", f"{cfg.model.n_embd} is not divisible by model.n_head={cfg.model.n_head}; pick a multiple"
        )
    # dropout
    d = cfg.dropout
    for key in ("rate",) + SITES + ("word", "drop_head", "drop_path"):
        _rate(cfg, f"dropout.{key}")
    for key, allowed in (("sites", SITES), ("locked", LOCKABLE_SITES)):
        values = d.get(key) or []
        if not isinstance(values, (list, ListConfig)):
            raise ConfigError(f"dropout.{key}", f"must be a list such as [{allowed[0]}, {allowed[1]}]")
        for site in values:
            if site not in allowed:
                raise ConfigError(f"dropout.{key}", f"unknown site {site!r}; choose from {', '.join(allowed)}")
    s = d.schedule
    if s.kind not in SCHEDULES:
        raise ConfigError("dropout.schedule.kind", f"got {s.kind!r}; choose one of {', '.join(SCHEDULES)}")
    if s.early_decay not in ("hold", "linear"):
        raise ConfigError("dropout.schedule.early_decay", f"got {s.early_decay!r}; choose hold or linear")
    for key in ("start", "end", "from_factor", "to_factor", "plateau_factor", "plateau_min_factor"):
        _number(cfg, f"dropout.schedule.{key}", 0.0, 1.0, allowed="must be in [0, 1]")
    _number(cfg, "dropout.schedule.plateau_threshold", 0.0, allowed="must be >= 0 (nats)")
    for key in ("start_step", "end_step"):
        if s.get(key) is not None:
            _number(cfg, f"dropout.schedule.{key}", 0, integer=True, allowed="must be a step count >= 0 or null")
    # data
    if cfg.data.tokenizer not in KINDS:
        raise ConfigError("data.tokenizer", f"got {cfg.data.tokenizer!r}; choose one of {', '.join(KINDS)}")
    if cfg.data.tokenizer == "bpe":
        _number(cfg, "data.vocab_size", 257, integer=True, allowed="byte-level BPE needs at least 257 (256 bytes + <|endoftext|>)")
    _number(cfg, "data.val_fraction", 0.0, 1.0, low_open=True, high_open=True, allowed="must be in (0, 1)")
    _number(cfg, "data.test_fraction", 0.0, 1.0, high_open=True, allowed="must be in [0, 1)")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise ConfigError("data.val_fraction", "val_fraction + test_fraction must leave some text for training")
    # train
    t = cfg.train
    for key in ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval", "jobs_per_gpu"):
        _positive_int(cfg, f"train.{key}")
    _number(cfg, "train.lr", 0.0, low_open=True, allowed="must be > 0")
    _number(cfg, "train.min_lr", 0.0, t.lr, allowed=f"must be in [0, train.lr={t.lr}]")
    _number(cfg, "train.warmup_iters", 0, integer=True, allowed="must be an integer >= 0")
    if t.get("lr_decay_iters") is not None:
        _positive_int(cfg, "train.lr_decay_iters")
    _number(cfg, "train.weight_decay", 0.0, allowed="must be >= 0")
    _number(cfg, "train.beta1", 0.0, 1.0, high_open=True, allowed="must be in [0, 1)")
    _number(cfg, "train.beta2", 0.0, 1.0, high_open=True, allowed="must be in [0, 1)")
    _number(cfg, "train.grad_clip", 0.0, allowed="must be >= 0 (0 = off)")
    if t.dtype not in DTYPES:
        raise ConfigError("train.dtype", f"got {t.dtype!r}; choose one of {', '.join(DTYPES)}")
    device = str(t.device)
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError("train.device", f"got {device!r}; use auto, cpu, cuda, cuda:N or mps")
    # generation and samplers
    for key in ("num_samples", "prompt_tokens", "max_new_tokens", "batch_size"):
        _positive_int(cfg, f"gen.{key}")
    if cfg.gen.checkpoint not in ("best", "last"):
        raise ConfigError("gen.checkpoint", f"got {cfg.gen.checkpoint!r}; use best or last")
    from dropsample.sampling import resolve_samplers  # late: sampling imports torch-heavy code

    resolve_samplers(cfg.samplers)


def validate_with_data(cfg: DictConfig, split_lengths: dict[str, int]) -> None:
    """Checks that need the tokenized corpus (run before training starts)."""
    need = cfg.model.block_size + 1  # a batch row is block_size inputs + 1 target
    for role, n in split_lengths.items():
        if n < need:
            raise ConfigError(
                "model.block_size",
                f"{cfg.model.block_size} is longer than the {role} split ({n} tokens); "
                f"use model.block_size<={n - 1} or more data",
            )
    uses_val_prompts = cfg.gen.get("prompt") is None and not cfg.gen.get("prompt_file")
    if cfg.sample_after_train and uses_val_prompts:
        check_prompt_span(cfg.gen, split_lengths["val"])


def check_prompt_span(gen, val_tokens: int) -> None:
    """Validation-prefix prompts need prompt_tokens + max_new_tokens tokens of val text (and a choice of start)."""
    span = gen.prompt_tokens + gen.max_new_tokens
    if span >= val_tokens:
        raise ConfigError(
            "gen.max_new_tokens",
            f"gen.prompt_tokens + gen.max_new_tokens = {span} does not fit the val split ({val_tokens} tokens); "
            "lower them",
        )
