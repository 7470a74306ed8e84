"""MAUVE (Pillutla et al. 2021) through the authors' `mauve-text` package, on precomputed features.

The features are the judge's last-layer hidden state at the last token of each text (prompt
and continuation), as mauve-text featurizes with GPT-2 Large. P is the human reference, Q a
sampler's text. k-means is seeded (`seed`, the package's default 25), num_buckets follows the
authors ("auto": N / 10), and the frontier integral (Liu et al. 2021) is recorded with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import numpy as np

from dropsample.errors import UserError

log = logging.getLogger("dropsample")

# the MAUVE README: "each distribution must contain at least a few thousand samples (we use
# 5000 each). MAUVE with a smaller number of samples is biased towards optimism"
RELIABLE_SAMPLES = 5000
INSTALL = "pip install 'dropsample[mauve]' (the mauve-text package)"


def available() -> bool:
    try:
        import mauve  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise UserError(f"a judge computes MAUVE, which needs mauve-text: {INSTALL}, or leave judge unset")


def buckets_for(n_p: int, n_q: int, num_buckets: int | None) -> int:
    """The authors' default: max(2, round(min(N_p, N_q) / 10)) unless given."""
    return num_buckets if num_buckets else max(2, int(round(min(n_p, n_q) / 10)))


def warning(n: int) -> str | None:
    if n >= RELIABLE_SAMPLES:
        return None
    return (f"MAUVE from {n} samples per side: its authors use {RELIABLE_SAMPLES} and find fewer samples "
            "optimistic (too high) and noisier; compare rows of one table only")


def compute(p_features: np.ndarray, q_features: np.ndarray, *, num_buckets: int | None = None,
            seed: int = 25) -> dict:
    """{"mauve", "frontier_integral", "num_buckets"} of Q (model) against P (reference).

    p_features: (N_p, C), q_features: (N_q, C)."""
    import mauve

    buckets = buckets_for(len(p_features), len(q_features), num_buckets)
    with _native_stderr_silenced():
        out = mauve.compute_mauve(p_features=np.asarray(p_features, dtype=np.float32),
                                  q_features=np.asarray(q_features, dtype=np.float32),
                                  num_buckets=buckets, seed=seed, verbose=False)
    return {"mauve": float(out.mauve), "frontier_integral": float(out.frontier_integral), "num_buckets": buckets}


@contextlib.contextmanager
def _native_stderr_silenced():
    """faiss's k-means writes "WARNING clustering N points to K centroids" from C++ straight to
    file descriptor 2 (verbose=False does not reach it), in the middle of the progress display;
    `warning` above already says when there are too few samples. Python exceptions still rise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
