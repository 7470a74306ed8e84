"""The report's outputs: report.md, results.csv and the terminal table."""

from __future__ import annotations

import csv
from pathlib import Path

from dropsample.report.collect import SAMPLER_METRICS


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


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


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = sorted({k for r in rows for k in r}, key=lambda k: (_column_order(k), k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, inputs, configs, rows, facts, plots) -> None:
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


def print_table(rows: list[dict], facts: list[str]) -> None:
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
