"""Start from a pretrained GPT-2 (`model.init_from`): a hub id or a local folder -> a dropsample
GPT with the source's shape, weights and tokenizer, and the record of which weights they were.

    check(cfgs)                 the CLI's preflight: every job's source and shape, before any job
    open_source(cfg.model)      where the files are (hub cache or folder), config.json checked,
                                the revision: the hub commit, or sha256 of a folder's weights
    shaped(cfg, source)         the run's config with the source's shape: null keys filled,
                                numbers that contradict the source refused
    load_weights(model, source) the weights copied in (export.from_hf maps GPT-2's names and
                                Conv1D layout; the position table cut to block_size)

Only config.json and model.safetensors (or a sharded model.safetensors.index.json) are read,
with safetensors itself: transformers is not needed, and pickled weights (pytorch_model.bin)
are never loaded. dropsample's GPT is GPT-2's architecture (a bias in every projection, the
tanh GELU "gelu_new", LayerNorm eps 1e-5, attention scaled by 1/sqrt(head size), lm_head tied
to wte), so the imported model gives GPT2LMHeadModel's logits; a source that departs from it
is refused with one line, before any data is read. The source's own dropout rates
(attn_pdrop, ...) are ignored: the run's dropout config places and schedules dropout.
The tokenizer comes from the source too: schema.derive points data.tokenizer_path at it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dropsample import checkpoint, export
from dropsample.errors import ConfigError
from dropsample.schema import SHAPE, Config, ModelConfig

log = logging.getLogger("dropsample")

KEY = "model.init_from"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # sharded safetensors: weight name -> shard file
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
HUB_FILES = ["config.json", WEIGHTS, INDEX, "model-*.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")  # GPT2Model: the transformer alone, as OpenAI's files were saved
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh approximation dropsample's MLP uses
HF_SHAPE = {"block_size": "n_positions"}  # dropsample's name -> config.json's, where they differ
# config.json values dropsample's GPT computes exactly; any other value changes the logits
FIXED = {"layer_norm_epsilon": 1e-5, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
         "add_cross_attention": False, "tie_word_embeddings": True}
SAVE_LOCALLY = ("GPT2LMHeadModel.from_pretrained({s!r}).save_pretrained(DIR) and "
                "AutoTokenizer.from_pretrained({s!r}).save_pretrained(DIR) where the hub is reachable, "
                "then set model.init_from=DIR")


@dataclass
class Source:
    name: str  # model.init_from as given
    kind: str  # hub or folder
    folder: Path  # where config.json, the weights and the tokenizer are
    revision: str  # hub: the commit read; folder: sha256:<digest of the weights file(s)>
    hf: dict  # config.json

    def shape(self) -> dict[str, int]:
        return {key: self.hf[HF_SHAPE.get(key, key)] for key in SHAPE}

    def describe(self) -> dict:
        """For summary.json's `init_from`."""
        return {"source": self.name, "kind": self.kind, "revision": self.revision, "folder": str(self.folder),
                "vocab_size": self.hf["vocab_size"], **self.shape()}


def open_source(model: ModelConfig) -> Source | None:
    """The checked source of `model.init_from` (None when it is not set). Raises ConfigError."""
    name = model.init_from
    if name is None:
        return None
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ConfigError(KEY, f"{name} is not a folder; give the folder save_pretrained wrote "
                              f"(config.json, {WEIGHTS}, tokenizer.json) or a hub id such as gpt2")
        folder, kind = path, "folder"
    else:
        folder, kind = _from_hub(name), "hub"
    hf = _read_config(name, folder)
    weights = _weight_files(name, folder)
    revision = folder.name if kind == "hub" else "sha256:" + _digest(weights)
    return Source(name, kind, folder, revision, hf)


def shaped(cfg: Config, source: Source | None) -> Config:
    """`cfg` with the source's shape: null model keys take the source's value; a number must equal
    it, except block_size, which may be shorter than the source's context."""
    if source is None:
        return cfg
    values = {}
    for key, theirs in source.shape().items():
        ours = getattr(cfg.model, key)
        if ours is None or ours == theirs or (key == "block_size" and ours < theirs):
            values[key] = theirs if ours is None else ours
            continue
        what = (f"{source.name}'s context is {theirs} tokens" if key == "block_size"
                else f"{source.name} has {key}={theirs}")
        raise ConfigError(f"model.{key}", f"{ours} contradicts model.init_from ({what}); set model.{key}=null "
                          "(model=pretrained does) to take the source's shape")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **values))


def check(cfgs: list[Config]) -> None:
    """Each config's source opened (downloaded once) and its shape checked, each source once:
    the CLI's preflight, so a bad source stops a sweep before any job starts."""
    opened: dict[str, Source | None] = {}
    for cfg in cfgs:
        name = cfg.model.init_from
        if name not in opened:
            opened[name] = open_source(cfg.model)
        shaped(cfg, opened[name])


def load_weights(model, source: Source | None) -> None:
    """Copy the source's weights into `model` (a GPT built with shaped()'s config)."""
    if source is None:
        return
    state = export.from_hf(_read_weights(source))
    wte = state.get("transformer.wte.weight")
    lm_head = state.pop(checkpoint.TIED, None)
    if wte is not None and lm_head is not None and not torch.equal(lm_head, wte):
        raise ConfigError(KEY, f"{source.name} has an lm_head that differs from its wte; dropsample's GPT ties them "
                          "(as GPT-2 does)")
    if wte is not None and wte.shape[0] != model.config.vocab_size:
        raise ConfigError(KEY, f"{source.name}'s tokenizer has {model.config.vocab_size} tokens but its embedding "
                          f"has {wte.shape[0]} rows; dropsample needs them equal")
    wpe = "transformer.wpe.weight"
    if wpe in state:
        state[wpe] = state[wpe][: model.config.block_size]  # (n_positions, C) -> (block_size, C)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape config.json does not describe
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:120])
        raise ConfigError(KEY, f"{source.name}'s weights do not fit its config.json ({first})") from None
    missing = sorted(set(missing) - {checkpoint.TIED})
    if missing or unexpected:
        raise ConfigError(KEY, f"{source.name}'s weights are not GPT-2's (missing {missing[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]})")
    log.info("started from %s (%s %s): %s parameters", source.name, source.kind, source.revision,
             f"{model.num_params():,}")


# ---------------------------------------------------------------------------


def _from_hub(repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the hub cache (named by its commit): a cached copy
    without asking the network, else a download of the files needed (never pickled weights)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    fix = SAVE_LOCALLY.format(s=repo_id)
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
        if (folder / "config.json").is_file() and ((folder / WEIGHTS).is_file() or (folder / INDEX).is_file()):
            return folder
    except HFValidationError:
        raise ConfigError(KEY, f"{repo_id!r} is neither a local folder nor a hub model id; give the folder "
                          "save_pretrained wrote or a hub id such as gpt2") from None
    except (LocalEntryNotFoundError, OSError):
        pass  # not cached (or only the tokenizer is): download
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise ConfigError(KEY, f"no model {repo_id!r} on the hub (or it is private); check the id, or {fix}") from None
    except LocalEntryNotFoundError:  # offline mode, no network, DNS: nothing cached and the hub not reached
        raise ConfigError(KEY, f"{repo_id!r} is not in the local hub cache and the hub cannot be reached "
                          f"(offline); {fix}") from None
    except Exception as exc:  # TLS, HTTP errors
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(KEY, f"cannot download {repo_id!r} from the hub ({type(exc).__name__}: {text[:120]}); "
                          f"{fix}") from None


def _read_config(name: str, folder: Path) -> dict:
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(KEY, f"{name} has no config.json; give the folder save_pretrained wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(KEY, f"{path} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(hf, dict):
        raise ConfigError(KEY, f"{path} is not a JSON object")
    model_type, architectures = hf.get("model_type"), hf.get("architectures") or []
    if model_type != "gpt2" or not set(architectures) <= set(ARCHITECTURES):
        listed = ", ".join(map(str, architectures)) or "no architectures"
        raise ConfigError(KEY, f"{name} is a {model_type or 'unknown'} model ({listed}); only GPT-2-style causal "
                          "LMs (model_type gpt2, GPT2LMHeadModel) can be imported")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        value = hf.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(KEY, f"{path}: {key} is {value!r}, not a positive integer")
    if hf["n_embd"] % hf["n_head"]:
        raise ConfigError(KEY, f"{path}: n_embd={hf['n_embd']} is not divisible by n_head={hf['n_head']}")
    if hf.get("activation_function", "gelu_new") not in ACTIVATIONS:
        raise ConfigError(KEY, f"{name} uses activation_function={hf['activation_function']}; dropsample's GPT "
                          "has GPT-2's gelu_new (tanh GELU) only")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ConfigError(KEY, f"{name} has n_inner={hf['n_inner']}; dropsample's GPT has GPT-2's 4 * n_embd MLP")
    for key, value in FIXED.items():
        theirs = hf.get(key, value)
        if theirs != value and not (isinstance(value, float) and abs(float(theirs) - value) < 1e-12):
            raise ConfigError(KEY, f"{name} has {key}={theirs}; dropsample's GPT computes GPT-2's {key}={value}")
    return hf


def _weight_files(name: str, folder: Path) -> list[Path]:
    """The safetensors file(s) holding the weights; pickled weights are refused, not read."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        try:
            shards = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ConfigError(KEY, f"{folder / INDEX} is not a safetensors index (weight_map)") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ConfigError(KEY, f"{name}: {INDEX} names {missing[0]}, which is not in {folder}")
        return [folder / INDEX] + [folder / s for s in shards]
    pickled = sorted(p.name for pattern in PICKLES for p in folder.glob(pattern))
    if pickled:
        raise ConfigError(KEY, f"{name} holds only pickled weights ({pickled[0]}), which dropsample never loads; "
                          "convert them once: GPT2LMHeadModel.from_pretrained(SRC).save_pretrained(DIR) writes "
                          f"{WEIGHTS}")
    raise ConfigError(KEY, f"{name} has no {WEIGHTS}; give the folder save_pretrained wrote")


def _digest(files: list[Path]) -> str:
    """sha256 over the weights file(s): a local source's revision."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _read_weights(source: Source) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in _weight_files(source.name, source.folder):
        if path.name == INDEX:
            continue
        try:
            tensors.update(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(KEY, f"{path} is not a readable safetensors file "
                              f"({str(exc).splitlines()[0][:120]})") from None
    return tensors
