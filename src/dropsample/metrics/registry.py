"""The one list of sample metrics: what each is called in metrics.json, its family, unit and source.

Everything that shows or chooses a sample metric (the sampler table, the report's decoding tables,
loggers, the Optuna objective) reads it from here, never from its own list of names.

metrics.json holds, per sampler and for the human reference, one entry per metric name:

    {"value": float | None, "low": float | None, "high": float | None}

`low`/`high` are the seeded bootstrap 95% interval over samples (None where a metric has no
per-sample resampling, e.g. MAUVE, or too few samples). A name without a suffix is measured on
words (whitespace-split text, the literature's unit); the same metric on model tokens carries the
suffix `_token`.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("quality", "diversity", "degeneration", "other")


@dataclass(frozen=True)
class Metric:
    name: str  # key in metrics.json
    label: str  # short column header (fits a narrow table)
    family: str  # one of FAMILIES: the report's decoding tables are one per family
    unit: str  # "word", "token", "text" (whole completions) or "judge" (scored by the judge model)
    better: str  # "higher", "lower" or "reference" (closest to the human reference is best)
    source: str  # paper that defines it (README has the formula)


def _both(name, label, family, better, source) -> tuple[Metric, Metric]:
    """A metric measured on words (the headline) and on model tokens."""
    return (Metric(name, label, family, "word", better, source),
            Metric(f"{name}_token", f"{label} (tok)", family, "token", better, source))


METRICS: tuple[Metric, ...] = (
    Metric("gen_ppl", "gen-ppl", "quality", "judge", "reference", "Holtzman et al. 2020"),
    Metric("mauve", "MAUVE", "quality", "judge", "higher", "Pillutla et al. 2021"),
    Metric("frontier_integral", "FI", "quality", "judge", "lower", "Liu et al. 2021"),
    *_both("distinct_1", "dist-1", "diversity", "higher", "Li et al. 2016"),
    *_both("distinct_2", "dist-2", "diversity", "higher", "Li et al. 2016"),
    *_both("distinct_4", "dist-4", "diversity", "higher", "Li et al. 2016"),
    *_both("self_bleu_4", "self-BLEU-4", "diversity", "lower", "Zhu et al. 2018"),
    *_both("diversity", "diversity", "diversity", "higher", "Su et al. 2022"),
    Metric("compression_ratio", "gzip ratio", "diversity", "text", "lower", "gzip compression ratio"),
    *_both("zipf", "zipf", "diversity", "reference", "Holtzman et al. 2020"),
    *_both("rep_2", "rep-2", "degeneration", "lower", "Su et al. 2022"),
    *_both("rep_3", "rep-3", "degeneration", "lower", "Su et al. 2022"),
    *_both("rep_4", "rep-4", "degeneration", "lower", "Su et al. 2022"),
    *_both("repetition", "repetition", "degeneration", "lower", "Holtzman et al. 2020"),  # a fraction
    *_both("seq_rep_4", "seq-rep-4", "degeneration", "lower", "Welleck et al. 2019"),
    Metric("mean_entropy", "entropy", "other", "token", "reference", "model's own next-token entropy"),
    *_both("mean_length", "length", "other", "reference", "completion length"),
    Metric("tokens_per_sec", "tok/s", "other", "token", "higher", "wall clock"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
HEADLINE = "mauve"  # the report's default headline metric when it was measured
FALLBACK_HEADLINE = "distinct_4"  # ... and when it was not (no judge)


def metric(name: str) -> Metric:
    """The registered metric `name`; ValueError naming the known ones otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown sample metric {name!r}; known: {', '.join(BY_NAME)}") from None


def of_family(family: str) -> list[Metric]:
    return [m for m in METRICS if m.family == family]
