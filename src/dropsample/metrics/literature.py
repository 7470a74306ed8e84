"""The diversity and degeneration metrics of the literature, each as its reference code defines it.

Every statistic is written once, as a function of sample weights W (B, N): row b says how
often each of the N completions is counted (all ones: the metric itself; a bootstrap
replicate: how often each completion was drawn). So the figure and its bootstrap interval
come from the same code, and corpus-level metrics (distinct-n, Zipf) are resampled exactly
from per-sample counts instead of being recomputed from text. The formulas, their sources
and our deliberate differences are in the README (section "Sample metrics").

The `*_n`/plain-list functions at the bottom are the point estimates on id lists.
"""

from __future__ import annotations

import gzip
import math
from bisect import bisect_left
from typing import Sequence

import numpy as np

from dropsample.metrics.ngrams import Corpus

BLEU_SMOOTHING_EPSILON = 0.1  # NLTK's SmoothingFunction().method1
HOLTZMAN_MAX_PHRASE = 90  # degen/metrics/repetition.py: max_n
ZIPF_MAX_RANK = 5000  # degen/metrics/zipf.py: --N
_CHUNK_CELLS = 4_000_000  # bound on (replicates x pairs) arrays held at once: about 32 MB of float64


def ones(n: int) -> np.ndarray:
    """The weights of the metric itself: every completion once. (1, N)"""
    return np.ones((1, n))


def _chunks(rows: int, width: int):
    step = max(1, _CHUNK_CELLS // max(width, 1))
    for lo in range(0, rows, step):
        yield slice(lo, min(rows, lo + step))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


# ---------------------------------------------------------------------------
# Weighted statistics: (corpus, W (B, N)) -> (B,)


def distinct(c: Corpus, n: int, W: np.ndarray) -> np.ndarray:
    """distinct-n (Li et al. 2016): distinct n-grams over all completions / all n-grams."""
    st = c.stats(n)
    total = W @ st.totals
    drawn = W > 0  # (B, N)
    held_by = np.bincount(st.pair_gram, minlength=st.n_grams) if len(st.pair_gram) else np.zeros(0, np.int64)
    single = held_by[st.pair_gram] == 1
    # n-grams only one completion holds count whenever it is drawn ...
    own = np.bincount(st.pair_sample[single], minlength=c.n)
    found = drawn @ own
    # ... the rest when any completion holding them is drawn
    m_sample, m_gram = st.pair_sample[~single], st.pair_gram[~single]
    if len(m_sample):
        starts = _group_starts(m_gram)
        for rows in _chunks(len(W), len(m_sample)):
            found[rows] += np.logical_or.reduceat(drawn[rows][:, m_sample], starts, axis=1).sum(axis=1)
    return _ratio(found.astype(float), total)


def rep(c: Corpus, n: int, W: np.ndarray, drop_last: bool = False) -> np.ndarray:
    """SimCTG's rep-n (Su et al. 2022): 1 - sum_i unique n-grams of i / sum_i n-grams of i.

    Uniqueness is within each completion; counts are pooled over completions (a ratio of
    sums, as `measure_repetition_and_diversity` does). drop_last=True reproduces the
    reference code's loop, which never reaches a text's last n-gram."""
    st = c.stats(n, drop_last)
    return 1.0 - _ratio(W @ st.uniques, W @ st.totals)


def simctg_diversity(c: Corpus, W: np.ndarray, drop_last: bool = False) -> np.ndarray:
    """SimCTG's diversity = prod over n = 2, 3, 4 of (1 - rep-n)."""
    out = np.ones(len(W))
    for n in (2, 3, 4):
        out = out * (1.0 - rep(c, n, W, drop_last))
    return out


def seq_rep(c: Corpus, n: int, W: np.ndarray) -> np.ndarray:
    """seq-rep-n (Welleck et al. 2019): mean over completions of 1 - unique n-grams / n-grams
    (completions shorter than n left out)."""
    st = c.stats(n)
    has = st.totals > 0
    per = np.where(has, 1.0 - st.uniques / np.maximum(st.totals, 1), 0.0)
    return _ratio(W @ per, W @ has.astype(float))


def ends_in_repetition(sample: Sequence[int], max_phrase: int = HOLTZMAN_MAX_PHRASE) -> bool:
    """Holtzman et al. 2020 (degen/metrics/repetition.py): for each phrase length m <= 90,
    count how many times the last m tokens repeat back to back at the end; take the m with
    the most repeats (the shortest on ties). Repetitive when that phrase repeats at least
    twice and is at least 3 tokens long, or repeats more than 50 times."""
    rev = list(sample)[::-1]
    best_m, best_r = 0, 0
    # m > len / 2 cannot repeat, and m = 1 already scored one repeat
    for m in range(1, min(max_phrase, len(rev) // 2) + 1):
        head, r = rev[:m], 1
        while rev[m * r : m * (r + 1)] == head:
            r += 1
        if r > best_r:
            best_m, best_r = m, r
    return best_r > 1 and (best_m >= 3 or best_r > 50)


def repetition(flags: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Holtzman's repetition: the share of completions that end in a repetition (a fraction)."""
    return _ratio(W @ flags.astype(float), W.sum(axis=1))


def zipf(c: Corpus, W: np.ndarray, max_rank: int = ZIPF_MAX_RANK) -> np.ndarray:
    """Zipf coefficient (Holtzman et al. 2020, degen/metrics/zipf.py): s = minus the slope of
    the least-squares line of log count on log rank over the max_rank most frequent tokens."""
    st = c.stats(1)
    out = np.full(len(W), np.nan)
    if not len(st.pair_gram):
        return out
    starts = _group_starts(st.pair_gram)
    x_all = np.log(np.arange(1, min(max_rank, len(starts)) + 1))
    for rows in _chunks(len(W), len(st.pair_sample)):
        counts = np.add.reduceat(W[rows][:, st.pair_sample] * st.pair_count, starts, axis=1)  # (b, types)
        counts = -np.sort(-counts, axis=1)[:, : len(x_all)]
        seen = counts > 0
        k = seen.sum(axis=1)
        y = np.log(np.where(seen, counts, 1.0))
        x = np.where(seen, x_all, 0.0)
        sx, sy, sxx, sxy = x.sum(1), (y * seen).sum(1), (x * x).sum(1), (x * y * seen).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (k * sxy - sx * sy) / (k * sxx - sx * sx)
        out[rows] = np.where(k >= 2, -slope, np.nan)
    return out


def _closest_other_length(lengths: list[int]) -> list[int]:
    """For each sample: the length among the *other* samples closest to its own (shorter on ties)."""
    ordered = sorted(lengths)
    out = []
    for length in lengths:
        i = bisect_left(ordered, length)
        candidates = ordered[:i] + ordered[i + 1 :]  # one copy of our own length removed
        j = bisect_left(candidates, length)
        near = [candidates[x] for x in (j - 1, j) if 0 <= x < len(candidates)]
        out.append(min(near, key=lambda r: (abs(r - length), r)))
    return out


def self_bleu_per_sample(c: Corpus, max_n: int = 4) -> np.ndarray | None:
    """(N,) BLEU-max_n of each completion against all the others as references.

    BLEU as NLTK's sentence_bleu with uniform weights and smoothing method1: clipped n-gram
    precisions (a count is clipped by its largest count in any one reference), epsilon 0.1 in
    place of a zero numerator, the brevity penalty against the closest reference length, and
    0 when no unigram matches. Exact over all pairs: per n-gram we keep the largest and
    second-largest count over completions, so "max over the others" needs no pairwise loop.
    """
    N = c.n
    if N < 2:
        return None
    log_p = np.zeros((N, max_n))
    unigram_hits = np.zeros(N)
    for n in range(1, max_n + 1):
        st = c.stats(n)
        if len(st.pair_gram):
            # pairs are sorted by n-gram; within each n-gram put the largest count first
            order = np.lexsort((-st.pair_count, st.pair_gram))
            gram, sample, cnt = st.pair_gram[order], st.pair_sample[order], st.pair_count[order]
            first = _group_starts(gram)
            gid = np.cumsum(np.r_[True, gram[1:] != gram[:-1]]) - 1
            m1, owner = cnt[first], sample[first]
            second = np.zeros(len(first), dtype=cnt.dtype)
            has_second = np.r_[first[1:], len(cnt)] - first > 1
            second[has_second] = cnt[first[has_second] + 1]
            ref_max = np.where(sample == owner[gid], second[gid], m1[gid])
            hits = np.bincount(sample, weights=np.minimum(cnt, ref_max), minlength=N)
        else:
            hits = np.zeros(N)
        if n == 1:
            unigram_hits = hits
        denom = np.maximum(st.totals, 1).astype(float)
        log_p[:, n - 1] = np.log(np.where(hits > 0, hits / denom, BLEU_SMOOTHING_EPSILON / denom))
    lengths = c.lengths.tolist()
    refs = _closest_other_length(lengths)
    scores = np.zeros(N)
    for i, (h, r) in enumerate(zip(lengths, refs)):
        if h == 0 or unigram_hits[i] == 0:
            continue
        bp = 1.0 if h > r else math.exp(1 - r / h)
        scores[i] = bp * math.exp(log_p[i].mean())
    return scores


def compression_ratio(texts: Sequence[str]) -> float | None:
    """gzip compression ratio (Shaib et al. 2024, the `diversity` package): UTF-8 bytes of the
    completions joined by spaces / bytes of their gzip (level 9). Higher: more repetitive."""
    data = " ".join(texts).encode("utf-8")
    if not data:
        return None
    return len(data) / len(gzip.compress(data, compresslevel=9, mtime=0))


# ---------------------------------------------------------------------------
# Point estimates on lists of id sequences (the definitions, for tests and callers)


def _one(values: np.ndarray) -> float | None:
    v = float(values[0])
    return None if math.isnan(v) else v


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float | None:
    return _one(distinct(Corpus(samples), n, ones(len(samples))))


def rep_n(samples: Sequence[Sequence[int]], n: int, drop_last: bool = False) -> float | None:
    return _one(rep(Corpus(samples), n, ones(len(samples)), drop_last))


def diversity_score(samples: Sequence[Sequence[int]], drop_last: bool = False) -> float | None:
    return _one(simctg_diversity(Corpus(samples), ones(len(samples)), drop_last))


def seq_rep_n(samples: Sequence[Sequence[int]], n: int = 4) -> float | None:
    return _one(seq_rep(Corpus(samples), n, ones(len(samples))))


def repetition_rate(samples: Sequence[Sequence[int]]) -> float | None:
    flags = np.array([ends_in_repetition(s) for s in samples], dtype=bool)
    return _one(repetition(flags, ones(len(samples))))


def zipf_coefficient(samples: Sequence[Sequence[int]]) -> float | None:
    return _one(zipf(Corpus(samples), ones(len(samples))))


def self_bleu(samples: Sequence[Sequence[int]], max_n: int = 4) -> float | None:
    scores = self_bleu_per_sample(Corpus(samples), max_n)
    return None if scores is None else float(scores.mean())
