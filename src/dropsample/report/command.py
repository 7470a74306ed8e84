"""`dropsample report`: runs -> configurations -> tables, findings and plots in one format.

    --format md     report.md, results.csv and plots/ (the default)
    --format csv    results.csv only
    --format html   report.html (one file, the plots inline) and results.csv
    --metric NAME   the headline sample metric (default: MAUVE when measured, else distinct-4)
"""

from __future__ import annotations

from pathlib import Path

from dropsample.errors import UserError
from dropsample.report import plots as plotting
from dropsample.report.collect import collect, group
from dropsample.report.findings import findings, headline_metric, ranking_metric
from dropsample.report.render import markdown, results_rows, terminal, to_html, write_csv
from dropsample.report.study import study_sections
from dropsample.runs import RunFolder

FORMATS = ("md", "csv", "html")


def _check_metric(metric: str, configs) -> None:
    measured = sorted({m for c in configs for rows in c.decoding.values() for m in rows})
    if metric not in measured:
        raise UserError(f"--metric {metric}: not measured in these runs; choose one of "
                        f"{', '.join(measured) or '(none: sample the runs first)'}")


def report_command(paths: list[Path], out: Path | None = None, skip_damaged: bool = False, format: str = "md",
                   metric: str | None = None, console=None) -> Path:
    """Write the report for `paths` into `out` (default: the one sweep folder given, else ./report)."""
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown; use one of {', '.join(FORMATS)}")
    runs, damaged = collect(paths, skip_damaged)
    configs = group(runs)
    if metric is not None:
        _check_metric(metric, configs)
    if out is None:
        first = Path(paths[0])
        out = first if len(paths) == 1 and first.is_dir() and not RunFolder(first).is_run() else Path("report")
    out.mkdir(parents=True, exist_ok=True)
    done = [c for c in configs if c.completed]
    headline = headline_metric(done, metric)
    write_csv(out / "results.csv", results_rows(configs), list(configs[0].values))
    facts = findings(configs, headline, damaged)
    where = out / "results.csv"
    if format != "csv":
        figures = plotting.plot_all(configs, headline, ranking_metric(done or configs))
        try:
            shown = [(p.title, f"plots/{p.name}") for p in figures]
            text = markdown(paths, configs, facts, shown, headline)
            if format == "md":
                plotting.save(figures, out / "plots")
                images = {}
            else:
                images = {f"plots/{p.name}": p.png() for p in figures}
        finally:
            plotting.close(figures)
        for section in study_sections(paths, out):  # Optuna sweeps: trials, best configuration, history
            text += "\n" + section
        if format == "md":
            where = out / "report.md"
            where.write_text(text)
        else:
            where = out / "report.html"
            where.write_text(to_html(text, images, out))
    terminal(configs, facts, headline, where, console)
    return out
