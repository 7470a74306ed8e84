"""Shared helpers for the benchmarks: presets, peers and interleaved timing."""

from __future__ import annotations

import statistics
import time

import torch

VOCAB = 65  # Tiny Shakespeare, character level


def shape(preset: str) -> tuple[int, int, int, int]:
    """n_layer, n_head, n_embd, block_size of a conf/model preset (read from conf/, never copied)."""
    from dropsample.config import model_preset

    m = model_preset(preset)
    return m.n_layer, m.n_head, m.n_embd, m.block_size


def ours(preset: str, rate: float = 0.0, vocab: int = VOCAB, **variants):
    from dropsample.dropout import DropoutRates
    from dropsample.model import GPT, GPTConfig

    L, H, C, T = shape(preset)
    d = DropoutRates(embd=rate, attn=rate, resid_attn=rate, resid_mlp=rate, **variants)
    return GPT(GPTConfig(vocab_size=vocab, block_size=T, n_layer=L, n_head=H, n_embd=C, dropout=d))


def peer(preset: str, rate: float = 0.0, vocab: int = VOCAB):
    """transformers' GPT2LMHeadModel of the same shape and dropout (its sdpa attention)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    L, H, C, T = shape(preset)
    cfg = GPT2Config(vocab_size=vocab, n_positions=T, n_embd=C, n_layer=L, n_head=H, resid_pdrop=rate,
                     embd_pdrop=rate, attn_pdrop=rate, activation_function="gelu_new", bos_token_id=None,
                     eos_token_id=None)
    return GPT2LMHeadModel(cfg)  # transformers picks its sdpa attention by default


def interleaved_runs(fns: dict, rounds: int = 3, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every round for each fn, alternating A B A B so drift hits both."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            tic = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tic)
    return times


def interleaved(fns: dict, rounds: int = 3, warmup: int = 1) -> dict[str, float]:
    """Best-of-rounds seconds per call for each fn, interleaved."""
    return {name: min(t) for name, t in interleaved_runs(fns, rounds, warmup).items()}


def median_ratio(times: dict[str, list[float]], slow: str, fast: str) -> tuple[float, float]:
    """Median over rounds of time[slow] / time[fast] (each round's pair ran back to back, so a
    neighbour's load hits both), and half the spread between the rounds' lowest and highest ratio."""
    ratios = sorted(a / b for a, b in zip(times[slow], times[fast]))
    return statistics.median(ratios), (ratios[-1] - ratios[0]) / 2


def environment() -> str:
    import platform

    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
            f"device {'cuda: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
