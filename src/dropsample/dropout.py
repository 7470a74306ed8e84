"""Dropout, as dropsample places it: a rate per site, variants, and schedules.

Every rate here is the probability of *dropping*. All variants are "inverted":
kept values are scaled by 1 / (1 - p) in training so that eval mode (no dropout)
needs no rescaling and the expected activation is unchanged.

Sites (where a GPT block can drop, in reading order):
    embd        after token + position embeddings           x: (B, T, C)
    attn        on the attention probabilities              (inside SDPA)
    resid_attn  after the attention output projection       x: (B, T, C)
    mlp_hidden  after the MLP activation                     x: (B, T, 4C)
    resid_mlp   after the MLP output projection             x: (B, T, C)
    head        before the final LayerNorm and LM head       x: (B, T, C)

Variants:
    locked      one mask per sequence shared over positions (variational dropout)
    word        whole token types dropped from the embedding matrix, per batch
    drop_head   whole attention heads dropped per sample
    drop_path   a whole residual branch dropped per sample (stochastic depth)
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from dropsample.schema import SITES, VARIANTS, DropoutConfig, ScheduleConfig


@dataclass
class DropoutRates:
    """Resolved rates per site and variant (what a model is built with and a checkpoint records);
    a schedule multiplies all of them."""

    embd: float = 0.0
    attn: float = 0.0
    resid_attn: float = 0.0
    mlp_hidden: float = 0.0
    resid_mlp: float = 0.0
    head: float = 0.0
    locked: tuple[str, ...] = ()
    word: float = 0.0
    drop_head: float = 0.0
    drop_path: float = 0.0
    drop_path_by_depth: bool = True

    def rates(self) -> dict[str, float]:
        """Every rate by name, variants included (what metrics.jsonl records)."""
        return {name: getattr(self, name) for name in SITES + VARIANTS}

    def scaled(self, factor: float) -> "DropoutRates":
        values = asdict(self)
        for name in self.rates():
            values[name] = getattr(self, name) * factor
        values["locked"] = tuple(self.locked)
        return DropoutRates(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["locked"] = list(self.locked)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DropoutRates":
        """Strict: a key this version does not know means the file is not one of ours."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown dropout keys {sorted(unknown)}")
        d = dict(d)
        d["locked"] = tuple(d.get("locked", ()))
        return cls(**d)


def resolve_rates(cfg: DropoutConfig) -> DropoutRates:
    """Turn the `dropout` config group (shorthand `rate` + `sites`) into per-site rates.

    A site's own number wins; null means "`rate` if the site is listed in `sites`, else 0".
    """
    listed = set(cfg.sites)
    rates = {}
    for site in SITES:
        value = getattr(cfg, site)
        rates[site] = float(value) if value is not None else (float(cfg.rate) if site in listed else 0.0)
    return DropoutRates(**rates, locked=tuple(cfg.locked), word=cfg.word, drop_head=cfg.drop_head,
                        drop_path=cfg.drop_path, drop_path_by_depth=cfg.drop_path_by_depth)


# ---------------------------------------------------------------------------
# The dropout kernel. On CUDA and MPS, F.dropout is already a fused Philox kernel.
# On CPU, F.dropout draws one Bernoulli per element from mt19937, which made dropout
# 0.2 cost ~1.5x the step time of the `baby` preset. We instead draw one 64-bit word
# per 4 elements and compare 16-bit slices against the rate, so the rate is exact to
# 1/32768 (the top slice has 15 random bits: torch's int64 random_() is 63-bit).


def _cpu_keep_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64).random_(generator=generator)  # uniform in [0, 2^63)
    slices = words.view(torch.int16).view(-1, 4)  # little-endian: slice 3 holds the top bits
    low = round(p * 65536) - 32768  # slices 0-2: uniform in [-32768, 32767]
    top = round(p * 32768)  # slice 3: uniform in [0, 32767]
    thresholds = torch.tensor([low, low, low, top], dtype=torch.int16)
    return (slices >= thresholds).view(-1)[:n].view(shape)


class _CpuDropout(torch.autograd.Function):
    """x * keep / (1 - p); saves the boolean mask (1 byte per element) for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = _cpu_keep_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


# ---------------------------------------------------------------------------
# Packed training (packed.py) runs K configurations as one vmapped forward. It draws each
# configuration's masks itself, from that configuration's own generator with the functions
# below, and installs a source here for the forward: every dropout call then multiplies by
# the source's next multiplier (0 or 1/(1-p) per unit, batched over configurations) instead
# of drawing. Without a source each call pays one global lookup.

_mask_source = None


@contextmanager
def mask_source(source):
    """Install `source` (an object with take(p, shape) -> multiplier) for one forward pass."""
    global _mask_source
    previous, _mask_source = _mask_source, source
    try:
        yield source
    finally:
        _mask_source = previous


def injecting() -> bool:
    """A packed forward is running: dropout must go through this module (no fused SDPA dropout)."""
    return _mask_source is not None


def coins(shape, p: float, *, device=None, dtype=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep coins (1 with probability 1 - p, else 0) of `shape`, as float: locked, word, head and path dropout."""
    return torch.empty(shape, device=device, dtype=dtype).bernoulli_(1.0 - p, generator=generator)


def inverted_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout: zero each element with probability p, scale the rest by 1/(1-p)."""
    if p == 0.0:
        return x
    if _mask_source is not None:
        return x * _mask_source.take(p, x.shape)
    if x.device.type == "cpu" and sys.byteorder == "little" and x.is_contiguous():
        return _CpuDropout.apply(x, p)
    return F.dropout(x, p, training=True)


# ---------------------------------------------------------------------------
# Modules. Each holds its rate as a plain float `p` that the trainer may change
# between steps (schedules); `p == 0` or eval mode makes each an identity.


class SiteDropout(nn.Module):
    """Inverted dropout on (B, T, C) activations; `locked` shares one mask over T."""

    def __init__(self, p: float = 0.0, locked: bool = False):
        super().__init__()
        self.p = p
        self.locked = locked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not self.locked:
            return inverted_dropout(x, self.p)
        B, _, C = x.shape
        if _mask_source is not None:
            return x * _mask_source.take(self.p, (B, 1, C))
        # one (B, 1, C) mask broadcast over positions: the same units are off for
        # the whole sequence, as in Gal & Ghahramani's variational dropout
        mask = coins((B, 1, C), self.p, device=x.device, dtype=x.dtype)
        return x * mask / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, locked={self.locked}"


def word_dropout_mask(idx: torch.Tensor, vocab_size: int, p: float) -> torch.Tensor:
    """Per-batch mask over token *types*: (B, T, 1) multiplier, 0 or 1/(1-p).

    Every occurrence of a dropped token id is zeroed together (AWD-LSTM's embedding
    dropout), which is what distinguishes it from dropping embedding positions.
    """
    if _mask_source is not None:
        return _mask_source.take(p, (vocab_size,))[idx].unsqueeze(-1)
    keep_type = coins(vocab_size, p, device=idx.device) / (1.0 - p)
    return keep_type[idx].unsqueeze(-1)


def per_sample_keep(batch: int, p: float, like: torch.Tensor, extra_dims: int) -> torch.Tensor:
    """(B, 1, ..., 1) multiplier of 0 or 1/(1-p): one coin per sample (DropPath)."""
    shape = (batch,) + (1,) * extra_dims
    if _mask_source is not None:
        return _mask_source.take(p, shape)
    return coins(shape, p, device=like.device, dtype=like.dtype) / (1.0 - p)


def head_keep(batch: int, heads: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """(B, H, 1, 1) multiplier of 0 or 1/(1-p): one coin per (sample, head) (DropHead)."""
    shape = (batch, heads, 1, 1)
    if _mask_source is not None:
        return _mask_source.take(p, shape)
    return coins(shape, p, device=like.device, dtype=like.dtype) / (1.0 - p)


def drop_path_rates(p: float, n_layer: int, by_depth: bool) -> list[float]:
    """Stochastic depth per layer: linear in depth (Huang et al. 2016) or uniform."""
    if not by_depth:
        return [p] * n_layer
    return [p * (layer + 1) / n_layer for layer in range(n_layer)]


def set_mc_dropout(model: nn.Module, active: bool) -> None:
    """Keep dropout sampling at inference (MC dropout) or restore eval behaviour.

    The GPT has no batch statistics (LayerNorm behaves the same in both modes), so
    train mode differs from eval mode only in its dropout: train mode *is* MC dropout.
    Call it under torch.no_grad().
    """
    model.train(active)


# ---------------------------------------------------------------------------
# Schedules: a factor in [0, 1] multiplying every configured rate.


@dataclass
class DropoutSchedule:
    """Maps a training step to a rate factor. `val_plateau` also listens to evaluations.

    Its only mutable state (`plateau_factor_now`, `last_val`) is saved in checkpoints,
    so a resumed run continues with exactly the factor it had.
    """

    cfg: ScheduleConfig
    max_iters: int
    plateau_factor_now: float = 1.0
    last_val: float | None = None

    def _step_of(self, fraction: float, step: int | None) -> int:
        return int(step) if step is not None else int(round(fraction * self.max_iters))

    def factor(self, step: int) -> float:
        c = self.cfg
        if c.kind == "constant":
            return 1.0
        if c.kind == "early":
            end = self._step_of(c.end, c.end_step)
            if step >= end:
                return 0.0
            return 1.0 if c.early_decay == "hold" else 1.0 - step / max(end, 1)
        if c.kind == "late":
            return 1.0 if step >= self._step_of(c.start, c.start_step) else 0.0
        if c.kind == "linear":
            t = min(step / max(self.max_iters, 1), 1.0)
            return c.from_factor + (c.to_factor - c.from_factor) * t
        if c.kind == "val_plateau":
            return self.plateau_factor_now
        raise ValueError(f"unknown dropout schedule {c.kind!r}")

    def observe_val(self, val_loss: float) -> None:
        """val_plateau: factor *= plateau_factor when val loss fell by < threshold since the last eval."""
        if self.cfg.kind != "val_plateau" or not math.isfinite(val_loss):
            return
        if self.last_val is not None and (self.last_val - val_loss) < self.cfg.plateau_threshold:
            self.plateau_factor_now = max(
                self.cfg.plateau_min_factor, self.plateau_factor_now * self.cfg.plateau_factor
            )
        self.last_val = val_loss

    def state_dict(self) -> dict:
        return {"plateau_factor_now": self.plateau_factor_now, "last_val": self.last_val}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor_now = float(state["plateau_factor_now"])
        self.last_val = state["last_val"]
