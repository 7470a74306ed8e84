"""Every registered sample metric for one set of completions (a sampler's, or the reference's),
each as a metrics.json entry {"value", "low", "high"} with its seeded bootstrap 95% interval.

Inputs are what sample.py has after generating and scoring: the decoded texts, the model's
token ids, per-sample scores under the sampling model and (optionally) under the judge, and
the judge's features. Words are whitespace-split decoded text; metric names without a
suffix are on words, `_token` names on model tokens (registry.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dropsample.metrics import literature as lit
from dropsample.metrics import mauve as mauve_mod
from dropsample.metrics.bootstrap import Resampler, entry, normal_interval, percentile_interval
from dropsample.metrics.ngrams import Corpus, word_ids
from dropsample.metrics.registry import METRICS

# Corpus-level statistics (distinct-n, Zipf, gzip ratio) count types over the whole set: a
# replicate that draws a completion twice adds its n-grams but no new types, so their
# replicates sit below the figure (with-replacement bias). Their interval is the figure
# -+ 1.96 bootstrap standard errors, from the first CORPUS_REPLICATES replicates (gzip of the
# whole joined text, the slowest, from the first COMPRESSION_REPLICATES). Everything else is
# a mean or ratio of per-sample quantities: percentiles of all replicates.
CORPUS_REPLICATES = 100
COMPRESSION_REPLICATES = 20
CORPUS_PREFIXES = ("distinct_", "zipf")


@dataclass
class TextSet:
    texts: list[str]  # decoded completions (continuations only, no prompt)
    token_ids: list[list[int]]  # the same completions as model token ids
    own: np.ndarray | None = None  # (N, 3): sum NLL, sum entropy, tokens under the sampling model
    judged: np.ndarray | None = None  # (N, 2): sum NLL, tokens under the judge (None: self-scored)
    features: np.ndarray | None = None  # (N, C): judge features of prompt + completion
    tokens_per_sec: float | None = None


def _unit_stats(c: Corpus, flags: np.ndarray, bleu: np.ndarray | None, lengths: np.ndarray,
                suffix: str) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Weighted statistics of one unit (words or tokens), keyed by metric name."""
    out = {f"distinct_{n}{suffix}": (lambda W, n=n: lit.distinct(c, n, W)) for n in (1, 2, 4)}
    out.update({f"rep_{n}{suffix}": (lambda W, n=n: lit.rep(c, n, W)) for n in (2, 3, 4)})
    out[f"diversity{suffix}"] = lambda W: lit.simctg_diversity(c, W)
    out[f"seq_rep_4{suffix}"] = lambda W: lit.seq_rep(c, 4, W)
    out[f"repetition{suffix}"] = lambda W: lit.repetition(flags, W)
    out[f"zipf{suffix}"] = lambda W: lit.zipf(c, W)
    out[f"mean_length{suffix}"] = lambda W: W @ lengths / W.sum(axis=1)
    if bleu is not None:
        out[f"self_bleu_4{suffix}"] = lambda W: W @ bleu / W.sum(axis=1)
    return out


def _ppl(scores: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    nll, n = scores[:, 0], scores[:, -1]

    def f(W):
        den = W @ n
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(den > 0, np.exp((W @ nll) / np.where(den > 0, den, 1)), np.nan)
    return f


def measure(s: TextSet, resampler: Resampler, *, ref_features: np.ndarray | None = None,
            mauve_buckets: int | None = None, mauve_seed: int = 25) -> dict[str, dict]:
    """{metric name: {"value", "low", "high"}} for every registered metric (None where not measured)."""
    N = len(s.texts)
    stats: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    words = word_ids(s.texts)
    for suffix, seqs in (("", words), ("_token", s.token_ids)):
        c = Corpus(seqs)
        ends = seqs
        if not suffix:  # a completion cut at max_new_tokens ends mid-word ("and the king and the ki"): a
            # last word not followed by whitespace may be partial and would hide a loop of whole words
            ends = [x[:-1] if t and not t[-1].isspace() else x for x, t in zip(seqs, s.texts)]
        flags = np.array([lit.ends_in_repetition(x) for x in ends], dtype=bool)
        stats.update(_unit_stats(c, flags, lit.self_bleu_per_sample(c, 4), c.lengths.astype(float), suffix))
    quality = s.judged if s.judged is not None else (s.own[:, [0, 2]] if s.own is not None else None)
    if quality is not None:
        stats["gen_ppl"] = _ppl(quality)
    if s.own is not None:
        ent, n = s.own[:, 1], s.own[:, 2]
        stats["mean_entropy"] = lambda W: (W @ ent) / np.where(W @ n > 0, W @ n, np.nan)

    out = {m.name: entry(None) for m in METRICS}
    boot = resampler.active and resampler.n == N
    for name, f in stats.items():
        corpus = name.startswith(CORPUS_PREFIXES)
        reps = resampler.W[:CORPUS_REPLICATES] if corpus else resampler.W
        values = np.asarray(f(np.vstack([lit.ones(N), reps]) if boot else lit.ones(N)), dtype=float)
        low, high = None, None
        if boot:
            bounds = (0.0, 1.0) if name.startswith("distinct_") else (0.0, math.inf)  # fractions; Zipf's s > 0
            low, high = (normal_interval(values[0], values[1:].tolist(), bounds) if corpus
                         else percentile_interval(values[1:]))
        out[name] = entry(values[0], low, high)

    value = lit.compression_ratio(s.texts)
    low = high = None
    if boot and value is not None:
        reps = [lit.compression_ratio([s.texts[i] for i in row]) for row in resampler.idx[:COMPRESSION_REPLICATES]]
        low, high = normal_interval(value, reps, (0.0, math.inf))
    out["compression_ratio"] = entry(value, low, high)

    if s.features is not None and ref_features is not None:
        m = mauve_mod.compute(ref_features, s.features, num_buckets=mauve_buckets, seed=mauve_seed)
        out["mauve"] = entry(m["mauve"])
        out["frontier_integral"] = entry(m["frontier_integral"])
    out["tokens_per_sec"] = entry(s.tokens_per_sec)
    return out


def values(entries: dict[str, dict]) -> dict[str, float | None]:
    """{name: value}: the flat form loggers, summaries and objectives take."""
    return {k: v["value"] for k, v in entries.items()}


def intervals(entries: dict[str, dict]) -> dict[str, list]:
    """{name: [low, high]} of the metrics that have an interval."""
    return {k: [v["low"], v["high"]] for k, v in entries.items() if v["low"] is not None}
