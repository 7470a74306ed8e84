"""The report's plots (matplotlib, Agg backend), each returned as a `Plot` record before saving.

    loss_curves.png            train and val loss at every logged point of metrics.jsonl, one
                               colour per configuration, mean over seeds with a 95% band (t over
                               seeds; one seed: +-1.96 SE of the eval batches where recorded)
    <val>_vs_<key>.png         val ppl (bits/byte across tokenizers) against the swept key, error bars
    gap_vs_<key>.png           train/val gap against the swept key, error bars
    diversity_vs_quality.png   per sampler and configuration: quality (MAUVE, or gen-ppl) against
                               diversity (distinct-4 on words), interval whiskers, the human reference a star
    knob_<setting>.png         a sampler setting (temperature, top-p, top-k, ...) swept over three or
                               more values: the headline metric along it

Figures are 8 x 4.5 in at 110 dpi (880 px, GitHub's column width) with 10-11 pt text; legends
sit outside the axes so they never hide data.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from dropsample.metrics.registry import BY_NAME
from dropsample.report.collect import REFERENCE, Configuration, Estimate, _number, _short, line_label, swept_axis
from dropsample.stats import mean_ci, normal_interval

SIZE = (8, 4.5)
DPI = 110


@dataclass
class Plot:
    name: str  # file name under plots/
    title: str  # alt text
    fig: object  # matplotlib Figure, open until saved
    series: list[str] = field(default_factory=list)  # the legend's entries: one per data series

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9})
    return plt


def _finish(fig, ax, name: str, title: str) -> Plot:
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return Plot(name, title, fig, list(labels))


def _colors(plt):
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def loss_curves(configs: list[Configuration]) -> Plot:
    plt = _plt()
    fig, ax = plt.subplots(figsize=SIZE)
    colors = _colors(plt)
    for i, c in enumerate(configs):
        runs = [r for r in (c.completed or c.runs) if r.metrics]
        if not runs:
            continue
        color = colors[i % len(colors)]
        # train: the batch loss at every log interval (train_curve.jsonl) when the runs have it,
        # else the eval-mode train loss at evaluations; val: every evaluation
        curves = all(r.curve for r in runs)
        train = ("loss", "curve") if curves else ("train_loss", "metrics")
        for (key, source), style, word in ((train, "--", "train"), (("val_loss", "metrics"), "-", "val")):
            by_step: dict[int, list[tuple[float, float | None]]] = {}
            for r in runs:
                for row in (r.curve if source == "curve" else r.metrics):
                    if _number(row.get(key)):
                        by_step.setdefault(row["step"], []).append((row[key], row.get(f"{key}_se")))
            if not by_step:
                continue
            steps = sorted(by_step)
            mean, low, high = [], [], []
            for s in steps:
                values = by_step[s]
                if len(values) >= 2:
                    m, lo, hi = mean_ci([v for v, _ in values])
                else:
                    m = values[0][0]
                    lo, hi = normal_interval(m, values[0][1] if _number(values[0][1]) else None)
                mean.append(m)
                low.append(m if lo is None else lo)
                high.append(m if hi is None else hi)
            ax.plot(steps, mean, style, color=color, marker="." if len(steps) <= 30 else None,
                    label=f"{c.short_label()}: {word}")
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    seeds = max((len(c.completed) for c in configs), default=0)
    band = "95% t-interval over seeds" if seeds >= 2 else "±1.96 SE of the eval batches"
    train = ("train: batch loss every log interval, dropout on" if all(r.curve for c in configs for r in c.runs)
             else "train: eval-mode loss")
    return _finish(fig, ax, "loss_curves.png", f"Train (dashed) and val (solid) loss; {train}; bands: {band}")


def _xy(configs: list[Configuration], axis: str | None):
    """x positions along the swept key (numbers, or category positions) and the tick labels."""
    values = [c.values.get(axis) if axis else c.label() for c in configs]
    if all(_number(v) for v in values):
        return [float(v) for v in values], None
    cats = []
    for v in values:
        if _short(v) not in cats:
            cats.append(_short(v))
    return [cats.index(_short(v)) for v in values], cats


def _errorbar(ax, x, estimates: list[Estimate], **kw):
    y = [e.value for e in estimates]
    err = [[e.value - e.low if e.has_interval else 0 for e in estimates],
           [e.high - e.value if e.has_interval else 0 for e in estimates]]
    return ax.errorbar(x, y, yerr=err, capsize=4, marker="o", **kw)


def against_key(configs: list[Configuration], metric: str) -> Plot:
    """`metric` (val_ppl, val_bpb or gap) against the swept key, one line per other swept values."""
    plt = _plt()
    axis = swept_axis(configs)
    fig, ax = plt.subplots(figsize=SIZE)
    done = [c for c in configs if c.training.get(metric) and c.training[metric].value is not None]
    x, cats = _xy(done, axis)
    lines: dict[str, list[tuple[float, Estimate]]] = {}
    for xi, c in zip(x, done):
        lines.setdefault(line_label(c, axis), []).append((xi, c.training[metric]))
    for label, points in lines.items():
        points.sort(key=lambda p: p[0])
        _errorbar(ax, [p[0] for p in points], [p[1] for p in points], label=label if len(lines) > 1 else None)
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats, rotation=20 if max(map(len, cats), default=0) > 8 else 0)
    key = axis.rsplit(".", 1)[-1] if axis else "configuration"
    ax.set_xlabel(axis or "configuration")
    ylabel = {"val_ppl": "val perplexity (per token)", "val_bpb": "val bits per byte",
              "gap": "val - train loss (nats/token)"}[metric]
    ax.set_ylabel(ylabel)
    if metric == "gap":
        ax.axhline(0, color="grey", lw=0.8)
    seeds = max((len(c.completed) for c in done), default=0)
    bars = "95% t-interval over seeds" if seeds >= 2 else "95% interval (±1.96 SE)"
    plot = _finish(fig, ax, f"{metric}_vs_{key}.png", f"{ylabel.split(' (')[0]} vs {axis or 'configuration'}; "
                                                       f"bars: {bars}")
    if len(lines) == 1:
        plot.series = list(lines)  # one unlabelled line: still one series
    return plot


def diversity_vs_quality(configs: list[Configuration]) -> Plot | None:
    plt = _plt()
    present = {m for c in configs for rows in c.decoding.values() for m in rows}
    quality = "mauve" if "mauve" in present else "gen_ppl" if "gen_ppl" in present else None
    diversity = "distinct_4" if "distinct_4" in present else None
    if quality is None or diversity is None:
        return None
    fig, ax = plt.subplots(figsize=SIZE)
    markers = "osD^v<>p*hX"
    samplers = []
    for c in configs:
        samplers += [s for s in c.samplers() if s not in samplers and s != REFERENCE]

    def whiskers(e: Estimate):
        return [[e.value - e.low if e.has_interval else 0], [e.high - e.value if e.has_interval else 0]]

    for j, name in enumerate(samplers + [REFERENCE]):
        label = "human reference" if name == REFERENCE else name
        first = True
        for c in configs:
            q, d = c.decoding.get(name, {}).get(quality), c.decoding.get(name, {}).get(diversity)
            if q is None or d is None or q.value is None or d.value is None:
                continue
            style = dict(marker="*", markersize=14, color="black") if name == REFERENCE else \
                dict(marker=markers[j % len(markers)], color=_colors(plt)[j % len(_colors(plt))])
            ax.errorbar([q.value], [d.value], xerr=whiskers(q), yerr=whiskers(d), linestyle="none", capsize=3,
                        label=label if first else None, **style)
            first = False
    if quality == "gen_ppl":
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")  # perplexities span orders of magnitude; plain numbers on the ticks
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(ScalarFormatter())
    qm, dm = BY_NAME[quality], BY_NAME[diversity]
    ax.set_xlabel(f"{qm.label} ({'judge' if quality == 'mauve' else 'perplexity of the text'}; "
                  f"{'higher' if qm.better == 'higher' else 'nearer the reference'} is better)")
    ax.set_ylabel(f"{dm.label} (share of distinct 4-grams of words)")
    return _finish(fig, ax, "diversity_vs_quality.png",
                   f"Quality vs diversity per sampler ({len(configs)} configuration(s)); whiskers: 95% intervals")


def knob_curves(configs: list[Configuration], headline: str) -> list[Plot]:
    """A sampler setting swept over >= 3 values with everything else equal: the headline along it."""
    plt = _plt()
    out = []
    settings = {}
    for c in configs:
        for r in c.completed:
            for name, s in r.knobs().items():
                settings.setdefault(name, s)
    knobs = sorted({k for s in settings.values() for k, v in s.items() if _number(v)})  # every numeric setting
    for knob in knobs:
        groups: dict[str, list[tuple[float, str]]] = {}
        for name, s in settings.items():
            if not _number(s.get(knob)):
                continue
            rest = {k: v for k, v in s.items() if k != knob}
            groups.setdefault(repr(sorted(rest.items())), []).append((float(s[knob]), name))
        groups = {k: sorted(v) for k, v in groups.items() if len({x for x, _ in v}) >= 3}
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=SIZE)
        for members in groups.values():
            for c in configs:
                points = [(x, c.decoding.get(name, {}).get(headline)) for x, name in members]
                points = [(x, e) for x, e in points if e is not None and e.value is not None]
                if points:
                    label = c.short_label() if len(groups) == 1 else f"{c.short_label()}: {members[0][1]}..."
                    _errorbar(ax, [p[0] for p in points], [p[1] for p in points], label=label)
        m = BY_NAME.get(headline)
        ax.set_xlabel(f"{knob} (sampler setting)")
        unit = {"word": "on words", "token": "on model tokens", "text": "on whole texts", "judge": "judge"}
        ax.set_ylabel(f"{m.label} ({unit.get(m.unit, m.unit)})" if m else headline)
        out.append(_finish(fig, ax, f"knob_{knob}.png", f"{m.label if m else headline} along {knob}; "
                                                        "bars: 95% intervals"))
    return out


def plot_all(configs: list[Configuration], headline: str | None, rank: str) -> list[Plot]:
    """Every plot the configurations support (figures open; `save` or `Plot.png` then `close`)."""
    plots = [loss_curves(configs)]
    done = [c for c in configs if c.completed]
    if done:
        plots += [against_key(done, rank), against_key(done, "gap")]
        dq = diversity_vs_quality(done)
        if dq is not None:
            plots.append(dq)
        if headline:
            plots += knob_curves(done, headline)
    return plots


def save(plots: list[Plot], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in plots:
        p.fig.savefig(folder / p.name, dpi=DPI)
        paths.append(folder / p.name)
    return paths


def close(plots: list[Plot]) -> None:
    plt = _plt()
    for p in plots:
        plt.close(p.fig)
