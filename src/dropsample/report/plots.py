"""The report's plots (matplotlib, Agg backend): PNGs under plots/."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dropsample.report.collect import Configuration, _line_label, _rate


def plot_all(configs: list[Configuration], rows: list[dict], plots: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        path = plots / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # val perplexity and gap against the rate, one line per site set (and other swept values)
    for metric, name, ylabel in (("val_ppl", "val_ppl_vs_rate.png", "val perplexity (best checkpoint)"),
                                 ("gap", "gap_vs_rate.png", "val - train loss (nats)")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        lines: dict[str, list] = {}
        for c, row in zip(configs, rows):
            if _rate(c) is not None and row[metric] is not None:
                lines.setdefault(_line_label(c), []).append((_rate(c), row))
        for label, points in lines.items():
            points.sort(key=lambda p: p[0])
            x = [p[0] for p in points]
            y = [p[1][metric] for p in points]
            if metric == "val_ppl":
                err = [[max(r["val_ppl"] - (r["val_ppl_ci_low"] or r["val_ppl"]), 0) for _, r in points],
                       [max((r["val_ppl_ci_high"] or r["val_ppl"]) - r["val_ppl"], 0) for _, r in points]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
            else:
                ax.plot(x, y, marker="o", label=label)
        if metric == "gap":
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("dropout rate")
        ax.set_ylabel(ylabel)
        if lines:
            ax.legend(fontsize=7)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(configs):
        curves = [run.metrics for run in c.runs if run.metrics]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(r["step"] for r in m) for m in curves)))
        for key, style in (("val_loss", "-"), ("train_loss", "--")):
            y = [np.mean([next(r[key] for r in m if r["step"] == s) for m in curves]) for s in steps]
            ax.plot(steps, y, style, color=colors[i % len(colors)],
                    label=f"{c.label()} ({key.split('_')[0]})" if len(configs) <= 8 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats); solid val, dashed train")
    if len(configs) <= 8:
        ax.legend(fontsize=6)
    save(fig, "loss_curves.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^v<>p*hX"
    samplers = sorted({k.rsplit(".", 1)[0] for r in rows for k in r if k.endswith(".gen_ppl")} - {"reference"})
    for j, name in enumerate(samplers):
        pts = [(r.get(f"{name}.gen_ppl"), r.get(f"{name}.distinct_4")) for r in rows]
        pts = [p for p in pts if None not in p]
        if pts:
            ax.scatter(*zip(*pts), marker=markers[j % len(markers)], label=name)
    ref = [(r.get("reference.gen_ppl"), r.get("reference.distinct_4")) for r in rows]
    ref = [p for p in ref if None not in p]
    if ref:
        ax.scatter(*zip(*ref), marker="*", s=160, color="black", label="reference text")
    ax.set_xscale("log")
    ax.set_xlabel("gen-ppl (lower = more likely under the model)")
    ax.set_ylabel("distinct-4")
    if samplers or ref:
        ax.legend(fontsize=7)
    save(fig, "diversity_vs_quality.png")
    return written


