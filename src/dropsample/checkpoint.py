"""Self-contained checkpoint folders, written atomically, loaded without unpickling.

    checkpoints/<last|best>/
        model.safetensors   weights (the tied lm_head is not stored twice)
        config.json         model config (GPTConfig, dropout placement included)
        tokenizer.json      the run's tokenizer
        state.safetensors   optimizer moments and RNG states (tensors)
        state.json          step, optimizer hyper-parameters, schedule and trainer state

A save writes a temporary sibling folder, fsyncs it and swaps it in with renames; a
process killed mid-save leaves the previous folder (possibly under `.old-<name>`,
which `resolve` falls back to) and never a half-written one. Temporary folders such a
kill leaves behind are removed by the next save.

`load` verifies what it reads (JSON structure, safetensors headers and shapes against the
config) and raises CheckpointError naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dropsample import tokenizer as toks
from dropsample.model import GPT, GPTConfig

TIED = "lm_head.weight"  # same tensor as transformer.wte.weight
FILES = ("model.safetensors", "config.json", "tokenizer.json", "state.safetensors", "state.json")
STATE_KEYS = ("step",)  # state.json keys every checkpoint has


class CheckpointError(Exception):
    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = Path(path), problem


def _header(path: Path) -> dict[str, list[int]]:
    """Names and shapes from a safetensors header (cheap: no tensor data is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file: {str(exc).splitlines()[0][:120]}") from None


def _check_weights(path: Path, config: GPTConfig) -> None:
    """The weights file holds exactly the tensors, of exactly the shapes, that config.json describes."""
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in GPT(config).state_dict().items() if k != TIED}
    found = _header(path)
    for key, shape in expected.items():
        if key not in found:
            raise CheckpointError(path, f"weights do not fit config.json (no {key})")
        if found[key] != shape:
            raise CheckpointError(path, f"weights do not fit config.json ({key} is {found[key]}, config says {shape})")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(path, f"weights do not fit config.json (unexpected {extra[:3]})")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file: {str(exc).splitlines()[0][:120]}") from None


@dataclass
class Checkpoint:
    folder: Path
    model_config: GPTConfig
    state: dict  # contents of state.json
    tokenizer: object  # tokenizers.Tokenizer from tokenizer.json

    def load_model(self, device="cpu") -> GPT:
        model = GPT(self.model_config)
        path = self.folder / "model.safetensors"
        weights = _tensors(path)
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:120])
            raise CheckpointError(path, f"weights do not fit config.json ({first})") from None
        if unexpected or set(missing) - {TIED}:
            raise CheckpointError(path, f"weights do not fit config.json (missing {sorted(set(missing) - {TIED})[:3]}, "
                                        f"unexpected {sorted(unexpected)[:3]})")
        return model.to(device)

    def tensors(self) -> dict[str, torch.Tensor]:
        return _tensors(self.folder / "state.safetensors")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, target: Path) -> None:
    old = target.with_name(f".old-{target.name}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(parent: Path) -> None:
    """Remove temporary folders a killed save left behind (only this run writes here)."""
    for stale in Path(parent).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save(
    target: Path,
    model: GPT,
    tokenizer_json: Path,
    *,
    state: dict,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != TIED}
        save_file(weights, str(tmp / "model.safetensors"))
        _write_json(tmp / "config.json", model.config.to_dict())
        shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        tensors, state = {}, dict(state)
        if optimizer is not None:
            opt = optimizer.state_dict()
            for index, slots in opt["state"].items():
                for slot, value in slots.items():
                    tensors[f"optimizer.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
            state["optimizer_param_groups"] = opt["param_groups"]
        for name, value in (rng or {}).items():
            tensors[f"rng.{name}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(tmp / "state.safetensors"))
        _write_json(tmp / "state.json", state)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of checkpoint folder `source` (best <- last)."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        for f in source.iterdir():
            shutil.copyfile(f, tmp / f.name)
        _fsync_dir(tmp)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(folder: Path) -> Path | None:
    """The readable checkpoint folder for `folder`, or its pre-swap copy, or None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(f".old-{folder.name}")):
        if (candidate / "state.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"invalid JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"holds a {type(data).__name__}, not an object")
    return data


def load(folder: Path) -> Checkpoint:
    """Read and verify a checkpoint folder (its weights load lazily, in load_model)."""
    found = resolve(folder)
    if found is None:
        raise CheckpointError(Path(folder), "no checkpoint here")
    try:
        config = GPTConfig.from_dict(_json(found / "config.json"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(found / "config.json", str(exc)) from None
    state = _json(found / "state.json")
    for key in STATE_KEYS:
        if not isinstance(state.get(key), int):
            raise CheckpointError(found / "state.json", f"{key} is {state.get(key)!r}, not a step count")
    path = found / "tokenizer.json"
    try:
        tokenizer = toks.load(path)
    except Exception as exc:  # tokenizers raises its own Exception subclass
        problem = "missing" if not path.is_file() else f"not a tokenizer ({str(exc).splitlines()[0][:80]})"
        raise CheckpointError(path, problem) from None
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise CheckpointError(path, f"{tokenizer.get_vocab_size()} tokens, config.json says {config.vocab_size}")
    _check_weights(found / "model.safetensors", config)
    _header(found / "state.safetensors")
    return Checkpoint(found, config, state, tokenizer)


def optimizer_state(ckpt: Checkpoint, tensors: dict[str, torch.Tensor]) -> dict:
    """Rebuild a torch optimizer state_dict from state.safetensors + state.json."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, slot = key.split(".", 2)
            state.setdefault(int(index), {})[slot] = value
    groups = ckpt.state.get("optimizer_param_groups")
    if not isinstance(groups, list):
        raise CheckpointError(ckpt.folder / "state.json", "optimizer_param_groups missing")
    return {"state": dict(sorted(state.items())), "param_groups": groups}
