"""Findings computed from the aggregated rows: what a results section would state."""

from __future__ import annotations

import numpy as np

from dropsample.report.collect import Configuration, _line_label, _rate
from dropsample.stats import spearman


def findings(configs: list[Configuration], rows: list[dict]) -> list[str]:
    out = []
    scored = [(row["val_ppl"], c, row) for c, row in zip(configs, rows) if row["val_ppl"] is not None]
    if scored:
        ppl, c, row = min(scored, key=lambda x: x[0])
        interval = (f" (95% interval {row['val_ppl_ci_low']:.3f}-{row['val_ppl_ci_high']:.3f}, {row['seeds']} seeds)"
                    if row["val_ppl_ci_low"] is not None else f" ({row['seeds']} seed)")
        out.append(f"Best configuration by val perplexity: {c.label()} with {ppl:.3f}{interval}.")
    lines: dict[str, list[tuple[float, float]]] = {}
    for c, row in zip(configs, rows):
        if _rate(c) is not None and row["gap"] is not None:
            lines.setdefault(_line_label(c), []).append((_rate(c), row["gap"]))
    for label, points in lines.items():
        points.sort()
        rho = spearman([p[0] for p in points], [p[1] for p in points])
        if rho is None:
            continue
        verdict = "shrinks" if rho <= -0.5 else "grows" if rho >= 0.5 else "shows no clear trend"
        gaps = ", ".join(f"{g:+.3f} at {r:g}" for r, g in points)
        out.append(f"Train/val gap vs dropout rate ({label}): {gaps}; the gap {verdict} as the rate grows "
                   f"(Spearman rho = {rho:.2f} over {len(points)} rates).")
    distances: dict[str, list[float]] = {}
    for row in rows:
        ref = row.get("reference.distinct_4")
        if ref is None:
            continue
        for key, value in row.items():
            if key.endswith(".distinct_4") and not key.startswith("reference.") and value is not None:
                distances.setdefault(key[: -len(".distinct_4")], []).append(abs(value - ref))
    if distances:
        name, d = min(((n, float(np.mean(v))) for n, v in distances.items()), key=lambda x: x[1])
        out.append(f"Sampler nearest the reference text's diversity: {name} (mean |distinct-4 - reference| = {d:.3f}).")
    problems = [r for c in configs for r in c.problems]
    if problems:
        out.append(f"{len(problems)} run(s) did not complete: " +
                   "; ".join(f"{r.path.name} {r.status} ({r.summary.error})" for r in problems) + ".")
    return out


