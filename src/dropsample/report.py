"""`dropsample report`: many runs -> one row per configuration, plots and computed findings.

A configuration is a resolved config minus its seed (and names, places, device);
its seeds are aggregated as mean and 95% t-interval. Training figures are taken at
each run's best checkpoint (the one `sample` uses by default); decoding figures come
from each run's latest samples/ folder. Failed and diverged runs get rows too.
"""

from __future__ import annotations

import csv
import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from dropsample.errors import UserError
from dropsample.runs import RunFolder, find_runs

IGNORED_KEYS = ("name", "runs_root", "experiment_name", "seed", "train.device", "train.jobs_per_gpu",
                "train.log_interval", "data.cache_dir", "data.path", "gen.name")
SAMPLER_METRICS = ("distinct_4", "self_bleu_4", "gen_ppl", "repetition")
# two-sided 95% Student t quantiles by degrees of freedom (normal beyond 30)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    if df in T95:
        return T95[df]
    below = [d for d in T95 if d < df]
    return T95[max(below)] if df <= 30 else 1.96


def mean_ci(values: list[float]) -> tuple[float | None, float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, None
    m = float(np.mean(values))
    if len(values) < 2:
        return m, None, None
    half = t95(len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return m, m - half, m + half


def flatten(d, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@dataclass
class Run:
    path: Path
    config: dict  # flattened, resolved
    summary: dict
    metrics: list[dict]
    samples: dict | None

    @property
    def status(self) -> str:
        return self.summary.get("status", "not started")

    def at_best(self) -> dict | None:
        rows = [r for r in self.metrics if r["step"] == self.summary.get("best_step")]
        return rows[0] if rows else None


@dataclass
class Configuration:
    key: str
    values: dict  # the swept values
    runs: list[Run] = field(default_factory=list)

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    @property
    def problems(self) -> list[Run]:
        return [r for r in self.runs if r.status != "completed"]

    def label(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.values.items()) or "all runs"


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def load_run(path: Path) -> Run:
    folder = RunFolder(path)
    config = flatten(OmegaConf.to_container(folder.config(), resolve=False))
    summary = folder.summary()
    samples = None
    latest = summary.get("latest_samples")
    if latest and (folder.path / "samples" / latest / "metrics.json").is_file():
        samples = json.loads((folder.path / "samples" / latest / "metrics.json").read_text())
    return Run(folder.path, config, summary, folder.metrics(), samples)


def collect(paths: list[Path]) -> list[Run]:
    expanded = []
    for p in paths:
        matches = glob.glob(str(p)) if any(c in str(p) for c in "*?[") else [str(p)]
        expanded.extend(Path(m) for m in matches)
    missing = [str(p) for p in expanded if not p.exists()]
    if missing or not expanded:
        raise UserError(f"no such path: {', '.join(missing) or paths}; pass sweep folders, run folders or globs")
    runs, seen = [], set()
    for path in find_runs(expanded):
        run = load_run(path)
        if run.status == "skipped" and run.summary.get("same_as"):
            # a rerun that found this configuration already done: report the run that did it
            target = Path(run.summary["same_as"])
            if (target / ".hydra" / "config.yaml").is_file():
                run = load_run(target)
        if run.path.resolve() not in seen:
            seen.add(run.path.resolve())
            runs.append(run)
    if not runs:
        raise UserError(f"no run folders under {', '.join(map(str, paths))}; pass a sweep or run folder")
    return runs


def group(runs: list[Run]) -> list[Configuration]:
    def identity(run: Run) -> dict:
        return {k: v for k, v in run.config.items() if not k.startswith("hydra.") and k not in IGNORED_KEYS}

    identities = [identity(r) for r in runs]
    keys = sorted({k for i in identities for k in i})
    swept = [k for k in keys if len({json.dumps(i.get(k), sort_keys=True) for i in identities}) > 1]
    configs: dict[str, Configuration] = {}
    for run, ident in zip(runs, identities):
        key = json.dumps(ident, sort_keys=True, default=str)
        if key not in configs:
            configs[key] = Configuration(key, {k: ident.get(k) for k in swept})
        configs[key].runs.append(run)
    return list(configs.values())


def summarize(c: Configuration) -> dict:
    best_rows = [r.at_best() for r in c.completed]
    best_rows = [r for r in best_rows if r]
    row = {"configuration": c.label(), **{k: _short(v) for k, v in c.values.items()}}
    row["dropout"] = " ".join(f"{k}={v:g}" for k, v in (c.runs[0].summary.get("dropout") or {}).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool) and v)
    row["seeds"] = len(c.completed)
    row["status"] = ", ".join(sorted({r.status for r in c.runs}))
    m, lo, hi = mean_ci([r["val_ppl"] for r in best_rows])
    row.update(val_ppl=m, val_ppl_ci_low=lo, val_ppl_ci_high=hi)
    row["train_ppl"] = mean_ci([r["train_ppl"] for r in best_rows])[0]
    row["gap"] = mean_ci([r["gap"] for r in best_rows])[0]
    row["best_step"] = mean_ci([r["step"] for r in best_rows])[0]
    samplers = {}
    for run in c.completed:
        for name, values in ((run.samples or {}).get("samplers") or {}).items():
            samplers.setdefault(name, []).append(values)
        reference = (run.samples or {}).get("reference")
        if reference:
            samplers.setdefault("reference", []).append(reference)
    for name, values in samplers.items():
        for metric in SAMPLER_METRICS:
            row[f"{name}.{metric}"] = mean_ci([v.get(metric) for v in values])[0]
    row["errors"] = "; ".join(f"{r.path.name}: {r.status} ({r.summary.get('error')})" for r in c.problems)
    return row


def _rate(c: Configuration) -> float | None:
    runs = c.completed or c.runs
    value = runs[0].config.get("dropout.rate")
    return float(value) if isinstance(value, (int, float)) else None


def _line_label(c: Configuration) -> str:
    rest = {k: v for k, v in c.values.items() if k != "dropout.rate"}
    if "dropout.sites" not in rest:
        rest = {"dropout.sites": (c.runs[0].config.get("dropout.sites")), **rest}
    return ", ".join(f"{k.replace('dropout.', '')}={_short(v)}" for k, v in rest.items())


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in set(v):  # average ranks of ties
            idx = [i for i, w in enumerate(v) if w == value]
            r[idx] = np.mean(r[idx])
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


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
                   "; ".join(f"{r.path.name} {r.status} ({r.summary.get('error')})" for r in problems) + ".")
    return out


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


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def report_command(paths: list[Path], out: Path | None = None) -> Path:
    runs = collect(paths)
    configs = group(runs)
    configs.sort(key=lambda c: [json.dumps(v, default=str) for v in c.values.values()])
    rows = [summarize(c) for c in configs]
    if out is None:
        first = Path(paths[0])
        out = first if len(paths) == 1 and first.is_dir() and not (first / ".hydra").exists() else Path("report")
    out.mkdir(parents=True, exist_ok=True)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (_column_order(k), k))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plots = plot_all(configs, rows, out / "plots")
    facts = findings(configs, rows)
    _write_markdown(out / "report.md", paths, configs, rows, facts, plots)
    _print_table(rows, facts)
    return out


def _column_order(key: str) -> int:
    fixed = ["configuration", "dropout", "seeds", "status", "val_ppl", "val_ppl_ci_low", "val_ppl_ci_high",
             "train_ppl", "gap", "best_step"]
    if key in fixed:
        return fixed.index(key)
    if key == "errors":
        return 1000
    return 100 if "." in key and key.split(".")[0] not in ("dropout", "model", "train", "data", "gen") else 50


def _headline_columns(rows: list[dict]) -> list[str]:
    samplers = sorted({k.rsplit(".", 1)[0] for r in rows for k in r if k.endswith(".distinct_4")})
    cols = ["configuration", "seeds", "status", "val_ppl", "train_ppl", "gap", "best_step"]
    return cols + [f"{s}.{m}" for s in samplers for m in SAMPLER_METRICS]


def _write_markdown(path: Path, inputs, configs, rows, facts, plots) -> None:
    cols = _headline_columns(rows)
    lines = ["# dropsample report", "", f"Inputs: {', '.join(map(str, inputs))} ({sum(len(c.runs) for c in configs)} runs, "
             f"{len(configs)} configurations). Training figures at each run's best checkpoint; "
             "val perplexity as mean [95% t-interval] over seeds.", "", "## Findings", ""]
    lines += [f"- {f}" for f in facts] or ["- (not enough completed runs for findings)"]
    lines += ["", "## Results", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            if c == "val_ppl" and row["val_ppl"] is not None and row["val_ppl_ci_low"] is not None:
                cells.append(f"{row['val_ppl']:.3f} [{row['val_ppl_ci_low']:.3f}, {row['val_ppl_ci_high']:.3f}]")
            else:
                cells.append(_fmt(row.get(c)).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    problems = [r for r in rows if r["errors"]]
    if problems:
        lines += ["", "## Runs that did not complete", ""] + [f"- {r['configuration']}: {r['errors']}" for r in problems]
    lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def _print_table(rows: list[dict], facts: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # the terminal gets the training figures and distinct-4 per sampler; report.md and results.csv have all
    cols = [c for c in _headline_columns(rows) if "." not in c or c.endswith(".distinct_4")]
    table = Table(title="dropsample report", caption="per sampler: distinct-4; all metrics in report.md")
    for c in cols:
        header = c.replace(".distinct_4", "").replace("_", " ")
        left = c in ("configuration", "status")
        table.add_column(header, justify="left" if left else "right", overflow="fold", no_wrap=not left)
    for row in rows:
        style = None if row["status"] == "completed" else "red"
        table.add_row(*(escape(_fmt(row.get(c))) for c in cols), style=style)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    for fact in facts:
        console.print(f"- {escape(fact)}")
