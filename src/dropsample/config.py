"""Where the configs live, how they are composed, and the one validation every config passes.

`validate(cfg)` turns a composed config (Hydra's DictConfig, a run folder's saved YAML, or a
plain dict) into a typed `schema.Config`, or raises ConfigError("key", "what is allowed"),
which the CLI prints as one line with exit code 2. Checks that need the data (a context
longer than the corpus) run right after the data is loaded, still before training.

Sampler presets (conf/sampler/*.yaml) and `samplers` entries resolve here too, into
`schema.Sampler`s with typed settings.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import fields
from functools import lru_cache
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from dropsample import schema
from dropsample.errors import ConfigError
from dropsample.schema import Config, ModelConfig, Sampler, SamplerSettings

GROUPS = ("model", "data", "dropout", "train", "gen")


def conf_dir() -> Path:
    """conf/ shipped inside the wheel, else the repository's top-level conf/ (editable installs)."""
    packaged = Path(str(resources.files("dropsample"))) / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    """The presets of a config group (file names in conf/<group>/)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@contextmanager
def hydra_context():
    """Hydra's compose API on dropsample's conf/, leaving no global state behind."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()


def compose(overrides: list[str], *, hydra_config: bool = False) -> DictConfig:
    """The config `dropsample train OVERRIDES` runs, without Hydra creating any folder."""
    from hydra import compose as hydra_compose

    with hydra_context():
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra_config)


def job_config(composed: DictConfig) -> DictConfig:
    """A composition made with return_hydra_config=True, less its `hydra` node: the config
    compose(..., return_hydra_config=False) gives for the same overrides, without composing again
    (each composition costs ~0.06 s of start-up)."""
    return OmegaConf.masked_copy(composed, [key for key in composed if key != "hydra"])


# ---------------------------------------------------------------------------
# Validation


def _type_problem(exc: ValidationError) -> str:
    text = str(exc).splitlines()[0]
    value = re.search(r"Value '(.*?)'", text)
    got = f"got {value.group(1)!r}; " if value else ""
    if "to Integer" in text:
        return got + "must be an integer"
    if "to Float" in text:
        return got + "must be a number"
    if "valid bool" in text or "to Boolean" in text:
        return got + "use true or false"
    if "ListConfig" in text or "list or tuple" in text:
        return "must be a list, e.g. [a, b]"
    if "DictConfig" in text or "dict" in text.lower():
        return "must be a mapping of keys to values"
    return text


def _owner(cls, key: str):
    """The schema class that holds dotted `key` (its parent node)."""
    for part in key.split(".")[:-1]:
        sub = schema.field_class(cls, part)
        if sub is None:
            break
        cls = sub
    return cls


@lru_cache(maxsize=None)
def _schema_node(cls):
    """A schema class as an OmegaConf node, built once per process: OmegaConf.merge copies its
    first argument, so every merge starts from an untouched one."""
    return OmegaConf.structured(cls)


def typed(raw, cls=Config, prefix: str = ""):
    """Merge plain config data onto the schema class: unknown keys and wrong types fail here."""
    if OmegaConf.is_config(raw):
        raw = OmegaConf.to_container(raw, resolve=True)
    raw = dict(raw or {})
    raw.pop("hydra", None)
    bools = schema.bool_keys(cls)
    view = OmegaConf.create(raw) if bools else None  # once, not per key: validate() runs on every start-up
    for key in bools:
        value = OmegaConf.select(view, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(prefix + key, f"got {value!r}; use true or false")
    try:
        merged = OmegaConf.merge(_schema_node(cls), raw)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        key = prefix + (exc.full_key or str(exc).split("'")[1])
        takes = ", ".join(f.name for f in fields(_owner(cls, key[len(prefix):])))
        where = key.rsplit(".", 1)[0] if "." in key[len(prefix):] else (prefix.rstrip(".") or "the config")
        raise ConfigError(key, f"unknown key; {where} takes {takes}") from None
    except ValidationError as exc:
        raise ConfigError(prefix + (exc.full_key or "?"), _type_problem(exc)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(prefix + (getattr(exc, "full_key", None) or "config"), str(exc).splitlines()[0]) from None


# Local paths a config may hold, written relative to the directory the run was launched from.
# Always local: made absolute. Local or a hub id: made absolute only where that file exists.
_LOCAL_PATHS = ("data.path", "data.cache_dir", "gen.prompt_file")
_LOCAL_OR_HUB = ("data.name", "data.tokenizer_path", "model.init_from", "judge")


def anchor_paths(obj: Config, base: Path) -> None:
    """Make the config's relative local paths absolute against `base` (the launch directory),
    so a later `sample`, `eval`, `export` or `--resume` run from elsewhere reads the same files
    and the run's identity (schema.config_hash) is the same whichever command computes it."""
    for key in _LOCAL_PATHS + _LOCAL_OR_HUB:
        *parents, leaf = key.split(".")
        owner = obj
        for part in parents:
            owner = getattr(owner, part)
        value = getattr(owner, leaf)
        if not isinstance(value, str) or not value.strip():
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            continue
        if key in _LOCAL_PATHS or (base / path).exists():
            setattr(owner, leaf, str((base / path).resolve()))


def validate(cfg, base: Path | None = None) -> Config:
    """A composed config -> a checked, typed Config (or ConfigError naming key and fix).
    Relative local paths are anchored at `base`, the directory the run was launched from
    (default: the working directory; a run folder's readers pass RunFolder.launch_dir())."""
    obj = typed(cfg)
    anchor_paths(obj, Path.cwd() if base is None else base)
    schema.check(obj)
    schema.derive(obj)
    resolve_samplers(obj.samplers)
    return obj


def validate_with_data(cfg: Config, split_lengths: dict[str, int]) -> None:
    """Checks that need the tokenized corpus (run before training starts)."""
    need = cfg.model.block_size + 1  # a batch row is block_size inputs + 1 target
    for role, n in split_lengths.items():
        if n < need:
            raise ConfigError(
                "model.block_size",
                f"{cfg.model.block_size} is longer than the {role} split ({n} tokens); "
                f"use model.block_size<={n - 1} or more data",
            )
    uses_val_prompts = cfg.gen.prompt is None and not cfg.gen.prompt_file
    if cfg.sample_after_train and uses_val_prompts:
        check_prompt_span(cfg.gen, split_lengths["val"])


def check_prompt_span(gen, val_tokens: int) -> None:
    """Validation-prefix prompts need num_samples disjoint windows of prompt_tokens + max_new_tokens
    tokens of val text (the reference row is each window's true continuation: sample.build_prompts)."""
    span = gen.prompt_tokens + gen.max_new_tokens
    if span >= val_tokens:
        raise ConfigError(
            "gen.max_new_tokens",
            f"gen.prompt_tokens + gen.max_new_tokens = {span} does not fit the val split ({val_tokens} tokens); "
            "lower them",
        )
    most = val_tokens // span
    if gen.num_samples > most:
        raise ConfigError(
            "gen.num_samples",
            f"{gen.num_samples} prompts need as many disjoint val windows of {span} tokens (prompt + continuation); "
            f"the val split ({val_tokens} tokens) holds at most {most}: use gen.num_samples<={most} or shorter "
            "gen.prompt_tokens/max_new_tokens",
        )


def model_preset(name: str) -> ModelConfig:
    """A conf/model preset as a typed ModelConfig (benchmarks read shapes from here)."""
    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("model", f"no preset {name!r}; choose one of {', '.join(options('model'))}")
    return typed(OmegaConf.load(path), ModelConfig, "model.")


# ---------------------------------------------------------------------------
# Samplers


def sampler_preset(name: str) -> dict:
    path = conf_dir() / "sampler" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("samplers", f"unknown sampler preset {name!r}; choose from "
                          f"{', '.join(options('sampler'))} or give a dict")
    return dict(OmegaConf.to_container(OmegaConf.load(path)))


def sampler_settings(values: dict, prefix: str = "") -> SamplerSettings:
    settings = typed(values, SamplerSettings, prefix)
    schema.check(settings, prefix)
    return settings


def resolve_samplers(entries) -> list[Sampler]:
    """Preset names and dicts ({base: preset, key: value, name: ...}) -> validated Samplers."""
    if entries is None or isinstance(entries, str):
        raise ConfigError("samplers", "must be a list, e.g. samplers=[greedy,top_p_0.9]")
    samplers = []
    for index, entry in enumerate(entries):
        if OmegaConf.is_config(entry):
            entry = OmegaConf.to_container(entry)
        if isinstance(entry, str):
            name, values = entry, sampler_preset(entry)
        elif isinstance(entry, dict):
            entry = dict(entry)
            base = entry.pop("base", None)
            given_name = entry.pop("name", None)
            values = sampler_preset(base) if base else {}
            values.update(entry)
            changes = ",".join(f"{k}={v}" for k, v in entry.items())
            name = given_name or ("+".join(x for x in (base, changes) if x) or "sample")
        else:
            raise ConfigError("samplers", f"entry {entry!r} is neither a preset name nor a dict of settings")
        try:
            settings = sampler_settings(values)
        except ConfigError as err:
            problem = str(err).split(": ", 1)[1]
            raise ConfigError(f"samplers[{index}].{err.key}", f"{problem} (sampler {name})") from None
        samplers.append(Sampler(str(name), settings))
    names = [s.name for s in samplers]
    if len(set(names)) != len(names):
        raise ConfigError("samplers", f"names repeat in {names}; give dict entries a distinct `name`")
    return samplers
