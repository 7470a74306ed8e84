"""Sample metrics: what `dropsample sample` measures on each sampler's text (README, "Sample metrics").

    registry.py    the one list of metric names, families, units, sources (metrics.json's keys)
    ngrams.py      n-gram ids and per-sample counts of id sequences (words or tokens)
    literature.py  each metric as its reference code defines it, as a function of sample weights
    bootstrap.py   the seeded resampling over samples and the 95% intervals
    mauve.py       MAUVE and the frontier integral through mauve-text, on judge features
    suite.py       every registered metric of one set of completions, as metrics.json entries

The names below are the point estimates on lists of id sequences (one list per completion).
"""

from __future__ import annotations

from dropsample.metrics.literature import (  # noqa: F401
    compression_ratio,
    distinct_n,
    diversity_score,
    ends_in_repetition,
    rep_n,
    repetition_rate,
    self_bleu,
    seq_rep_n,
    zipf_coefficient,
)
from dropsample.metrics.ngrams import word_ids  # noqa: F401


def diversity(samples: list[list[int]]) -> dict:
    """Point estimates of the id-level diversity metrics of one set of completions (no intervals)."""
    out = {f"distinct_{n}": distinct_n(samples, n) for n in range(1, 5)}
    out.update({f"rep_{n}": rep_n(samples, n) for n in (2, 3, 4)})
    out.update(
        diversity=diversity_score(samples),
        self_bleu_4=self_bleu(samples, 4),
        seq_rep_4=seq_rep_n(samples, 4),
        repetition=repetition_rate(samples),
        zipf=zipf_coefficient(samples),
        mean_length=sum(map(len, samples)) / len(samples) if samples else 0.0,
    )
    return out
