"""N-gram bookkeeping shared by every diversity metric: one `Corpus` per set of completions.

A completion is a sequence of integer ids: model tokens, or words (whitespace-split decoded
text) mapped to ids by `word_ids`, so one fast code path serves both units. Every n-gram
gets a dense integer id by repeated `np.unique` (the n-gram = the (n-1)-gram's id and one
more token), which never overflows 64 bits whatever the vocabulary, and the per-sample
counts the metrics and the bootstrap need are computed once per n and cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def word_ids(texts: Sequence[str], vocab: dict[str, int] | None = None) -> list[list[int]]:
    """Each text split on whitespace (str.split, as SimCTG and the literature do), words as ids.

    Pass one `vocab` dict to several calls to keep ids consistent between them."""
    vocab = {} if vocab is None else vocab
    out = []
    for text in texts:
        out.append([vocab.setdefault(w, len(vocab)) for w in text.split()])
    return out


@dataclass
class GramStats:
    """The n-grams of one Corpus for one n, per sample (N samples, K distinct (sample, n-gram) pairs)."""

    totals: np.ndarray  # (N,) n-grams in each sample: max(0, len - n + 1)
    uniques: np.ndarray  # (N,) distinct n-grams within each sample
    pair_sample: np.ndarray  # (K,) the sample of each (sample, n-gram) pair, sorted by n-gram
    pair_gram: np.ndarray  # (K,) its n-gram id (dense)
    pair_count: np.ndarray  # (K,) how often the n-gram occurs in that sample
    n_grams: int  # size of the n-gram id space (ids are 0 .. n_grams - 1)


class Corpus:
    """N id sequences, flattened, with cached n-gram statistics."""

    def __init__(self, samples: Sequence[Sequence[int]]):
        self.n = len(samples)
        self.lengths = np.array([len(s) for s in samples], dtype=np.int64)  # (N,)
        self.ends = np.cumsum(self.lengths)  # (N,) exclusive end of each sample in the flat array
        flat = (np.concatenate([np.asarray(s, dtype=np.int64) for s in samples]) if self.lengths.sum()
                else np.empty(0, dtype=np.int64))
        self.sample = np.repeat(np.arange(self.n), self.lengths)  # (total,) sample of each position
        _, self.tok = np.unique(flat, return_inverse=True)  # (total,) dense unigram ids
        self.tok = self.tok.reshape(-1).astype(np.int64)
        self._grams: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._stats: dict[tuple[int, bool], GramStats] = {}

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ids): the flat start position and dense id of every n-gram (none crosses samples)."""
        if n in self._grams:
            return self._grams[n]
        if n == 1:
            starts, ids = np.arange(len(self.tok)), self.tok
        else:
            prev_starts, prev_ids = self.grams(n - 1)
            room = prev_starts + n - 1 < self.ends[self.sample[prev_starts]]
            starts = prev_starts[room]
            key = prev_ids[room] * (int(self.tok.max(initial=0)) + 1) + self.tok[starts + n - 1]
            _, ids = np.unique(key, return_inverse=True)
            ids = ids.reshape(-1).astype(np.int64)
        self._grams[n] = (starts, ids)
        return starts, ids

    def stats(self, n: int, drop_last: bool = False) -> GramStats:
        """Per-sample n-gram counts. drop_last: leave out each sample's last n-gram (SimCTG's
        reference code does; see literature.rep_n)."""
        key = (n, drop_last)
        if key in self._stats:
            return self._stats[key]
        starts, ids = self.grams(n)
        sample = self.sample[starts]
        if drop_last:
            keep = starts + n < self.ends[sample]
            starts, ids, sample = starts[keep], ids[keep], sample[keep]
        totals = np.bincount(sample, minlength=self.n).astype(np.int64)
        n_ids = int(self.grams(n)[1].max(initial=-1)) + 1  # ids are dense over all n-grams
        pair_key = ids * max(self.n, 1) + sample  # sorted by n-gram, then sample
        pairs, counts = np.unique(pair_key, return_counts=True)
        pair_gram, pair_sample = pairs // max(self.n, 1), pairs % max(self.n, 1)
        uniques = np.bincount(pair_sample, minlength=self.n).astype(np.int64)
        st = GramStats(totals, uniques, pair_sample, pair_gram, counts.astype(np.int64), n_ids)
        self._stats[key] = st
        return st
