"""Small statistics shared by the metrics and the report (a leaf: numpy only)."""

from __future__ import annotations

import math

import numpy as np

# two-sided 95% Student t quantiles by degrees of freedom (normal beyond 30)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    if df in T95:
        return T95[df]
    below = [d for d in T95 if d < df]
    return T95[max(below)] if df <= 30 else 1.96


def mean_ci(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean and 95% Student-t interval over values (None where it cannot be computed)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, None
    m = float(np.mean(values))
    if len(values) < 2:
        return m, None, None
    half = t95(len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return m, m - half, m + half


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation with average ranks for ties (None when undefined)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in set(v):  # average ranks of ties
            idx = [i for i, w in enumerate(v) if w == value]
            r[idx] = np.mean(r[idx])
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


Z95 = 1.959964  # two-sided 95% normal quantile


def normal_interval(value: float | None, se: float | None) -> tuple[float | None, float | None]:
    """value -+ 1.96 SE (None where either is missing)."""
    if value is None or se is None or not math.isfinite(value) or not math.isfinite(se):
        return None, None
    return value - Z95 * se, value + Z95 * se


def paired_ci(a: list[float], b: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean of the paired differences a_i - b_i with its 95% Student-t interval: the paired
    t-test at the 5% level rejects "no difference" exactly when the interval excludes 0."""
    return mean_ci([x - y for x, y in zip(a, b) if x is not None and y is not None])


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals (low, high) share a point."""
    return a[0] <= b[1] and b[0] <= a[1]
