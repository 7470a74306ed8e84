"""Diversity and repetition metrics on token ids (formulas in the README).

All functions take `samples: list[list[int]]`, one completion per sample. N-grams
are packed into uint64 codes so counting 1,000 samples of 256 tokens is a few
numpy sorts, not Python loops over tuples.
"""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np

BLEU_SMOOTHING_EPSILON = 0.1  # NLTK's SmoothingFunction().method1


def _codes(sample: list[int] | np.ndarray, n: int, bits: int) -> np.ndarray:
    """uint64 code of every n-gram of one sample (empty when shorter than n)."""
    a = np.asarray(sample, dtype=np.uint64)
    if len(a) < n:
        return np.empty(0, dtype=np.uint64)
    code = np.zeros(len(a) - n + 1, dtype=np.uint64)
    for k in range(n):
        code = (code << np.uint64(bits)) | a[k : len(a) - n + 1 + k]
    return code


def _bits(samples: list[list[int]], n: int) -> int:
    top = max((max(s) for s in samples if len(s)), default=1)
    bits = max(int(top).bit_length(), 1)
    if bits * n > 64:
        raise ValueError(f"token ids up to {top} do not fit {n}-gram codes in 64 bits")
    return bits


def distinct_n(samples: list[list[int]], n: int) -> float | None:
    """Distinct n-grams over all samples / total n-grams over all samples."""
    bits = _bits(samples, n)
    codes = [_codes(s, n, bits) for s in samples]
    total = sum(len(c) for c in codes)
    if total == 0:
        return None
    return len(np.unique(np.concatenate(codes))) / total


def seq_rep_n(samples: list[list[int]], n: int = 4) -> float | None:
    """Mean over samples of 1 - unique n-grams / n-grams (Welleck et al. 2019); samples shorter than n skipped."""
    bits = _bits(samples, n)
    values = []
    for s in samples:
        c = _codes(s, n, bits)
        if len(c):
            values.append(1.0 - len(np.unique(c)) / len(c))
    return float(np.mean(values)) if values else None


def ends_in_loop(sample: list[int], min_phrase: int = 2, repeats: int = 3) -> bool:
    """True when the sample ends with a phrase of >= min_phrase tokens repeated >= `repeats` times."""
    L = len(sample)
    for m in range(min_phrase, L // repeats + 1):
        tail = sample[L - m :]
        if all(sample[L - (r + 1) * m : L - r * m] == tail for r in range(1, repeats)):
            return True
    return False


def repetition_rate(samples: list[list[int]], min_phrase: int = 2, repeats: int = 3) -> float:
    """Share of samples that end in a repeating loop (Holtzman et al. 2020's repetition %)."""
    return sum(ends_in_loop(s, min_phrase, repeats) for s in samples) / max(len(samples), 1)


def zipf_coefficient(samples: list[list[int]]) -> float | None:
    """s in freq ~ rank^-s: minus the slope of a least-squares fit of log count on log rank."""
    counts = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in samples if len(s)] or [np.empty(0, np.int64)]))
    counts = np.sort(counts[counts > 0])[::-1]
    if len(counts) < 2:
        return None
    ranks = np.arange(1, len(counts) + 1)
    slope = np.polyfit(np.log(ranks), np.log(counts), 1)[0]
    return float(-slope)


def _closest_other_length(lengths: list[int]) -> list[int]:
    """For each sample: the length among the *other* samples closest to its own (shorter on ties)."""
    ordered = sorted(lengths)
    out = []
    for length in lengths:
        i = bisect_left(ordered, length)
        # remove one copy of our own length from the candidates
        candidates = ordered[:i] + ordered[i + 1 :]
        j = bisect_left(candidates, length)
        near = [candidates[x] for x in (j - 1, j) if 0 <= x < len(candidates)]
        out.append(min(near, key=lambda r: (abs(r - length), r)))
    return out


def self_bleu(samples: list[list[int]], max_n: int = 4) -> float | None:
    """Mean BLEU-4 of each sample against all other samples as references.

    BLEU as NLTK's sentence_bleu with uniform weights and smoothing method1: clipped
    n-gram precisions (a count is clipped by its maximum count in any one reference),
    epsilon 0.1 in place of a zero numerator, the brevity penalty against the closest
    reference length, and 0 when no unigram matches. Exact over all pairs: per n-gram
    we keep the largest and second-largest count over samples, so "max over the others"
    needs no pairwise loop.
    """
    N = len(samples)
    if N < 2:
        return None
    log_p = np.zeros((N, max_n))
    unigram_hits = np.zeros(N)
    for n in range(1, max_n + 1):
        bits = _bits(samples, n)
        sid_parts, code_parts = [], []
        for i, s in enumerate(samples):
            c = _codes(s, n, bits)
            code_parts.append(c)
            sid_parts.append(np.full(len(c), i, dtype=np.int64))
        sid, code = np.concatenate(sid_parts), np.concatenate(code_parts)
        totals = np.bincount(sid, minlength=N).astype(float)
        if len(code):
            # count of each (sample, n-gram) pair
            pairs, cnt = np.unique(np.stack([code, sid.astype(np.uint64)]), axis=1, return_counts=True)
            p_code, p_sid = pairs[0], pairs[1].astype(np.int64)
            order = np.lexsort((-cnt, p_code))  # by n-gram, largest count first
            p_code, p_sid, cnt = p_code[order], p_sid[order], cnt[order]
            group_start = np.r_[True, p_code[1:] != p_code[:-1]]
            gid = np.cumsum(group_start) - 1
            first = np.flatnonzero(group_start)
            m1, owner = cnt[first], p_sid[first]
            second = np.zeros(len(first), dtype=cnt.dtype)
            has_second = np.r_[first[1:], len(cnt)] - first > 1
            second[has_second] = cnt[first[has_second] + 1]
            ref_max = np.where(p_sid == owner[gid], second[gid], m1[gid])
            clipped = np.minimum(cnt, ref_max)
            hits = np.bincount(p_sid, weights=clipped, minlength=N)
        else:
            hits = np.zeros(N)
        if n == 1:
            unigram_hits = hits
        denom = np.maximum(totals, 1.0)
        precision = np.where(hits > 0, hits / denom, BLEU_SMOOTHING_EPSILON / denom)
        log_p[:, n - 1] = np.log(precision)
    lengths = [len(s) for s in samples]
    refs = _closest_other_length(lengths)
    scores = []
    for i, (c, r) in enumerate(zip(lengths, refs)):
        if c == 0 or unigram_hits[i] == 0:
            scores.append(0.0)
            continue
        bp = 1.0 if c > r else math.exp(1 - r / c)
        scores.append(bp * math.exp(log_p[i].mean()))
    return float(np.mean(scores))


def diversity(samples: list[list[int]]) -> dict:
    """Every text-only metric for one set of completions."""
    out = {f"distinct_{n}": distinct_n(samples, n) for n in range(1, 5)}
    out.update(
        self_bleu_4=self_bleu(samples, 4),
        seq_rep_4=seq_rep_n(samples, 4),
        repetition=repetition_rate(samples),
        zipf=zipf_coefficient(samples),
        mean_length=float(np.mean([len(s) for s in samples])) if samples else 0.0,
    )
    return out


def quality(scores: list[tuple[float, float, int]]) -> dict:
    """gen-ppl and mean entropy from generation.score results (token-weighted over samples)."""
    tokens = sum(n for _, _, n in scores)
    if tokens == 0:
        return {"gen_ppl": None, "mean_entropy": None}
    nll = sum(x for x, _, _ in scores)
    ent = sum(e for _, e, _ in scores)
    return {"gen_ppl": math.exp(nll / tokens), "mean_entropy": ent / tokens}
