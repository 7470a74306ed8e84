"""Seeded bootstrap over samples: the resampling weights and the 95% interval.

A replicate draws N of the N completions with replacement; `Resampler.W[b, i]` is how often
completion i was drawn in replicate b. The same seed and N give the same draws, so every
sampler of one comparison (same prompts, same N) is resampled on the same prompt indices:
the intervals are paired across rows.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95


class Resampler:
    def __init__(self, n: int, replicates: int, seed: int):
        self.n, self.replicates, self.seed = n, replicates, seed
        rng = np.random.default_rng([seed, n])
        self.idx = rng.integers(0, n, size=(replicates, n)) if n and replicates else np.zeros((0, n), np.int64)
        W = np.zeros((len(self.idx), n))
        rows = np.repeat(np.arange(len(self.idx)), n)
        np.add.at(W, (rows, self.idx.reshape(-1)), 1.0)
        self.W = W  # (B, N)

    @property
    def active(self) -> bool:
        return self.replicates > 0 and self.n >= 2


def percentile_interval(replicates: np.ndarray) -> tuple[float | None, float | None]:
    """The (2.5%, 97.5%) percentiles of the finite replicate values (None when under half are finite)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < max(2, len(replicates) // 2):
        return None, None
    lo, hi = np.percentile(finite, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def normal_interval(value: float | None, replicates: list[float],
                    bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float | None, float | None]:
    """value -+ 1.96 bootstrap standard errors (for metrics too slow for many replicates),
    cut to the metric's range `bounds` (a fraction's interval never passes 0 or 1)."""
    finite = [r for r in replicates if r is not None and math.isfinite(r)]
    if value is None or not math.isfinite(value) or len(finite) < 2:
        return None, None
    half = 1.959964 * float(np.std(finite, ddof=1))
    return max(value - half, bounds[0]), min(value + half, bounds[1])


def entry(value, low=None, high=None) -> dict:
    """One metrics.json entry: {"value", "low", "high"} with NaN as None."""
    def clean(x):
        return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)

    return {"value": clean(value), "low": clean(low), "high": clean(high)}
