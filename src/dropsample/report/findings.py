"""Findings: what a results section would state, each with the evidence that supports it.

A finding is data (`Finding`: kind, statement, evidence), rendered later. A difference is
claimed only when the statistics support it (`compare`):

- the two configurations share two or more seeds: a paired t-test on the per-seed differences
  (95% Student-t interval of the mean difference excludes 0);
- otherwise: their 95% intervals (t over seeds, or a single run's SE / bootstrap interval) do
  not overlap, a conservative test.

Anything else is stated as "no significant difference", with the intervals that overlap. When
runs use different tokenizers, per-token perplexities are not compared at all: configurations
are ranked by bits per byte, and the findings say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dropsample.metrics.registry import BY_NAME, FALLBACK_HEADLINE, HEADLINE
from dropsample.report.collect import REFERENCE, Configuration, Estimate, _number, line_label, swept_axis
from dropsample.stats import overlap, paired_ci

KINDS = ("difference", "no difference", "note", "problem")


@dataclass
class Finding:
    kind: str  # one of KINDS
    statement: str
    evidence: str = ""

    def text(self) -> str:
        return self.statement + (f" Evidence: {self.evidence}." if self.evidence else "")


# ---------------------------------------------------------------------------
# numbers as tables and findings show them


def fmt_value(v: float | None, decimals: int | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if decimals is None:
        decimals = 0 if v == 0 or abs(v) >= 1000 else min(5, max(0, 3 - math.floor(math.log10(abs(v)))))
    return f"{v:.{decimals}f}"


def fmt(e: Estimate | None, signed: bool = False) -> str:
    """`mean ± half-width`, to the half-width's second significant digit."""
    if e is None or e.value is None:
        return "-"
    half = e.half
    if half is None:
        text = fmt_value(e.value)
    else:
        decimals = min(6, max(0, 1 - math.floor(math.log10(half)))) if half > 0 else 3
        text = f"{e.value:.{decimals}f} ± {half:.{decimals}f}"
    return ("+" + text) if signed and e.value > 0 else text


def fmt_interval(e: Estimate) -> str:
    return f"{fmt_value(e.value)} [{fmt_value(e.low)}, {fmt_value(e.high)}]" if e.has_interval else fmt_value(e.value)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------
# two estimates


@dataclass
class Comparison:
    significant: bool
    evidence: str


def compare(a: Estimate, b: Estimate, a_name: str, b_name: str) -> Comparison | None:
    """Is a different from b? None when neither a paired test nor intervals are available."""
    if a.value is None or b.value is None:
        return None
    shared = sorted(set(a.per_seed) & set(b.per_seed), key=str)
    if len(shared) >= 2 and a.n >= 2 and b.n >= 2:
        d, lo, hi = paired_ci([a.per_seed[s] for s in shared], [b.per_seed[s] for s in shared])
        if lo is not None:
            return Comparison(lo > 0 or hi < 0, f"{a_name} - {b_name} = {fmt_value(d)} "
                                                f"[{fmt_value(lo)}, {fmt_value(hi)}], paired t over {len(shared)} seeds")
    if a.has_interval and b.has_interval:
        return Comparison(not overlap((a.low, a.high), (b.low, b.high)),
                          f"{a_name} {fmt_interval(a)} vs {b_name} {fmt_interval(b)}, 95% intervals "
                          f"({a.how}; {b.how})")
    return None


def _ranked(items: list[tuple[str, Estimate]], lower_is_better: bool, what: str, scope: str = "") -> list[Finding]:
    """The best of `items` (name, estimate) against every other: a difference where supported,
    "no significant difference" where not, and a note where nothing can be compared."""
    items = [(n, e) for n, e in items if e.value is not None]
    if len(items) < 2:
        return []
    best_name, best = (min if lower_is_better else max)(items, key=lambda x: x[1].value)
    word, most = ("lower", "lowest") if lower_is_better else ("higher", "highest")
    better, same, unknown = [], [], []
    for name, e in items:
        if name == best_name:
            continue
        c = compare(best, e, best_name, name)
        (unknown if c is None else better if c.significant else same).append((name, c))
    where = f" ({scope})" if scope else ""
    out = []
    if better and not same and not unknown:
        out.append(Finding("difference", f"Best by {what}{where}: {best_name}, {fmt(best)}; significantly {word} "
                                         f"than every other.", "; ".join(c.evidence for _, c in better)))
    elif better:
        out.append(Finding("difference", f"{_cap(what)}{where}: {best_name} ({fmt(best)}) is significantly "
                                         f"{word} than {', '.join(n for n, _ in better)}.",
                           "; ".join(c.evidence for _, c in better)))
    if same:
        out.append(Finding("no difference", f"No significant difference in {what}{where} between {best_name} "
                                            f"({most} mean, {fmt(best)}) and {', '.join(n for n, _ in same)}.",
                           "; ".join(c.evidence for _, c in same)))
    if unknown:
        out.append(Finding("note", f"{_cap(what)}{where}: {best_name} has the {most} mean ({fmt(best)}); "
                                   f"{', '.join(n for n, _ in unknown)} cannot be compared with it (one seed, and "
                                   "no interval recorded)."))
    return out


# ---------------------------------------------------------------------------


def ranking_metric(configs: list[Configuration]) -> str:
    """val_ppl, or val_bpb when the configurations use different tokenizers."""
    return "val_bpb" if len({c.tokenizer for c in configs}) > 1 else "val_ppl"


def headline_metric(configs: list[Configuration], wanted: str | None = None) -> str | None:
    """--metric, else the registry's headline (MAUVE) when measured, else its fallback (distinct-4)."""
    present = {m for c in configs for rows in c.decoding.values() for m, e in rows.items() if e.value is not None}
    if wanted:
        return wanted
    for name in (HEADLINE, FALLBACK_HEADLINE):
        if name in present:
            return name
    return sorted(present)[0] if present else None


def metric_words(name: str) -> str:
    m = BY_NAME.get(name)
    if m is None:
        return name
    unit = {"word": "on words", "token": "on tokens", "judge": "under the judge", "text": "on whole texts"}[m.unit]
    return f"{m.label} ({unit})"


def findings(configs: list[Configuration], headline: str | None = None, damaged: list[str] = ()) -> list[Finding]:
    out: list[Finding] = []
    done = [c for c in configs if c.completed]
    labels = {id(c): c.label() for c in configs}

    # -- training: rank by val ppl (by bits per byte across tokenizers)
    rank = ranking_metric(done)
    if rank == "val_bpb":
        tokenizers = sorted({c.tokenizer for c in done})
        out.append(Finding("note", f"The runs use different tokenizers ({', '.join(tokenizers)}): per-token "
                                   "perplexities are not comparable across them, so configurations are compared "
                                   "by bits per byte (UTF-8 bytes of the evaluated text), never by perplexity."))
    what = {"val_ppl": "val perplexity", "val_bpb": "val bits per byte"}[rank]
    out += _ranked([(labels[id(c)], c.training[rank]) for c in done], True, what)

    # -- the train/val gap along the swept key: its ends compared, per line
    axis = swept_axis(done)
    if axis is not None:
        lines: dict[str, list[Configuration]] = {}
        for c in done:
            lines.setdefault(line_label(c, axis), []).append(c)
        for line, members in lines.items():
            points = [c for c in members if c.training["gap"].value is not None]
            if len(points) < 2:
                continue
            if all(_number(c.values.get(axis)) for c in points):
                points.sort(key=lambda c: c.values[axis])
            first, last = points[0], points[-1]
            key = axis.rsplit(".", 1)[-1]
            series = ", ".join(f"{fmt(c.training['gap'], signed=True)} at {key}={c.values.get(axis)}" for c in points)
            scope = "" if line == "all" else f" ({line})"
            a, b = (f"{key}={first.values.get(axis)}", f"{key}={last.values.get(axis)}")
            c = compare(last.training["gap"], first.training["gap"], b, a)
            head = f"Train/val gap (val - train loss, nats){scope}: {series}."
            if c is None:
                out.append(Finding("note", head + " No interval to compare the ends with."))
            elif c.significant:
                word = "smaller" if last.training["gap"].value < first.training["gap"].value else "larger"
                out.append(Finding("difference", f"{head} The gap at {b} is significantly {word} than at {a}.",
                                   c.evidence))
            else:
                out.append(Finding("no difference", f"{head} No significant difference in the gap between "
                                                    f"{a} and {b}.", c.evidence))

    # -- decoding: the headline metric
    headline = headline_metric(done, headline)
    if headline is not None:
        better = BY_NAME[headline].better if headline in BY_NAME else "higher"
        words = metric_words(headline)
        for c in done:
            rows = [(s, c.decoding[s].get(headline)) for s in c.samplers() if s != REFERENCE]
            rows = [(s, e) for s, e in rows if e is not None]
            scope = labels[id(c)] if len(done) > 1 else ""
            if better in ("higher", "lower"):
                out += _ranked(rows, better == "lower", words, scope)
            else:
                ref = c.decoding.get(REFERENCE, {}).get(headline)
                out += _near_reference(rows, ref, words, scope)
        if len(done) > 1:
            out += _across_configurations(done, headline, words, labels)

    # -- who scored the text
    judges = {r.judge() for c in done for r in c.completed if r.samples}
    if judges == {None} and any("gen_ppl" in rows for c in done for rows in c.decoding.values()):
        out.append(Finding("note", "No judge model: gen-ppl is self-scored (each model scores its own text), so it "
                                   "is not comparable across configurations, and MAUVE was not computed."))
    elif len(judges - {None}) == 1:
        out.append(Finding("note", f"Quality figures are scored by one judge for every row: {next(iter(judges - {None}))}."))
    elif len(judges - {None}) > 1:
        out.append(Finding("note", f"Different judges scored these runs ({', '.join(sorted(judges - {None}))}): "
                                   "quality figures are not comparable across them."))

    # -- what is missing
    problems = [r for c in configs for r in c.problems]
    if problems:
        out.append(Finding("problem", f"{len(problems)} run(s) did not complete: " +
                           "; ".join(f"{r.path.name} {r.status} ({r.summary.error})" for r in problems) + "."))
    out += [Finding("problem", f"Left out, could not be read: {d}") for d in damaged]
    return out


def _near_reference(rows, ref: Estimate | None, words: str, scope: str) -> list[Finding]:
    """Metrics where the human text's value is the target: which samplers are indistinguishable from it."""
    if ref is None or ref.value is None or not rows:
        return []
    where = f" ({scope})" if scope else ""
    near, far, unknown = [], [], []
    for name, e in rows:
        c = compare(e, ref, name, "reference")
        (unknown if c is None else far if c.significant else near).append((name, c))
    out = []
    if far:
        out.append(Finding("difference", f"{_cap(words)}{where}: {', '.join(n for n, _ in far)} differ "
                                         f"significantly from the human reference ({fmt(ref)}).",
                           "; ".join(c.evidence for _, c in far)))
    if near:
        out.append(Finding("no difference", f"No significant difference in {words}{where} between the human "
                                            f"reference and {', '.join(n for n, _ in near)}.",
                           "; ".join(c.evidence for _, c in near)))
    if unknown:
        out.append(Finding("note", f"{_cap(words)}{where}: {', '.join(n for n, _ in unknown)} have no "
                                   f"interval to compare with the reference ({fmt(ref)})."))
    return out


def _across_configurations(done, headline: str, words: str, labels) -> list[Finding]:
    """Per sampler: do the configurations differ in the headline metric (highest vs lowest mean)?"""
    differ, same = [], []
    samplers = []
    for c in done:  # not the reference: the same human text in every configuration
        samplers += [s for s in c.samplers() if s not in samplers and s != REFERENCE]
    for s in samplers:
        points = [(labels[id(c)], c.decoding.get(s, {}).get(headline)) for c in done]
        points = [(n, e) for n, e in points if e is not None and e.value is not None]
        if len(points) < 2:
            continue
        points.sort(key=lambda p: p[1].value)
        lo, hi = points[0], points[-1]
        c = compare(hi[1], lo[1], hi[0], lo[0])
        if c is None:
            continue
        (differ if c.significant else same).append((s, c))
    out = []
    if differ:
        out.append(Finding("difference", f"{_cap(words)} differs significantly across configurations for "
                                         f"{', '.join(s for s, _ in differ)}.",
                           "; ".join(f"{s}: {c.evidence}" for s, c in differ)))
    if same:
        out.append(Finding("no difference", f"No significant difference in {words} across configurations for "
                                            f"{', '.join(s for s, _ in same)} (highest vs lowest mean).",
                           "; ".join(f"{s}: {c.evidence}" for s, c in same)))
    return out
