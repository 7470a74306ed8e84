"""`dropsample report`: many runs -> one row per configuration, plots and computed findings."""

from __future__ import annotations

import json
from pathlib import Path

from dropsample.report.collect import collect, group, summarize
from dropsample.runs import RunFolder
from dropsample.report.findings import findings
from dropsample.report.plots import plot_all
from dropsample.report.render import print_table, write_csv, write_markdown
from dropsample.report.study import study_report


def report_command(paths: list[Path], out: Path | None = None, skip_damaged: bool = False) -> Path:
    runs, damaged = collect(paths, skip_damaged)
    configs = group(runs)
    configs.sort(key=lambda c: [json.dumps(v, default=str) for v in c.values.values()])
    rows = [summarize(c) for c in configs]
    if out is None:
        first = Path(paths[0])
        out = first if len(paths) == 1 and first.is_dir() and not RunFolder(first).is_run() else Path("report")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    plots = plot_all(configs, rows, out / "plots")
    facts = findings(configs, rows)
    facts += [f"Left out, could not be read: {d}" for d in damaged]
    write_markdown(out / "report.md", paths, configs, rows, facts, plots)
    print_table(rows, facts)
    study_report(paths, out)  # Optuna sweeps: trials, best configuration, objective history
    return out


