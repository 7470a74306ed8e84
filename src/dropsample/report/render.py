"""The report's outputs: report.md (or one self-contained report.html), results.csv and the
terminal summary.

report.md reads like a results section: the configurations, (1) the training table, (2) one
decoding table per metric family (rows: configuration x metric; columns: samplers and the human
reference; cells `mean ± half-width` of the 95% interval), (3) the findings with their
evidence, (4) the plots. A table wider than WIDTH characters is split into several, each
repeating the row labels. results.csv is long-format: one row per configuration x sampler x
metric (training figures: stage "training", no sampler), with the interval, ready to pivot.
"""

from __future__ import annotations

import base64
import csv
import html
import re
from pathlib import Path

from dropsample.metrics.registry import BY_NAME, FAMILIES
from dropsample.report.collect import REFERENCE, Configuration, _short, family_of, metric_order
from dropsample.report.findings import Finding, fmt, fmt_value, ranking_metric

WIDTH = 100  # report.md's tables fit this many characters per line
SHORT_LABEL = 24  # longer configuration labels become C1, C2, ... with a legend
TRAINING_UNITS = {"val_ppl": "per token", "val_bpb": "bits/byte", "gap": "nats/token", "val_loss": "nats/token",
                  "train_loss": "nats/token", "best_step": "step"}
CSV_COLUMNS = ("configuration", "tokenizer", "seeds", "stage", "sampler", "metric", "family", "unit", "value",
               "low", "high", "interval")


# ---------------------------------------------------------------------------
# labels


def row_labels(configs: list[Configuration]) -> list[str]:
    """What the tables call each configuration: its short label, or C1, C2, ... when long."""
    short = [c.short_label() for c in configs]
    if max(map(len, short), default=0) <= SHORT_LABEL and len(set(short)) == len(short):
        return short
    return [f"C{i + 1}" for i in range(len(configs))]


def metric_header(name: str) -> str:
    return BY_NAME[name].label if name in BY_NAME else name


# ---------------------------------------------------------------------------
# markdown tables that fit WIDTH


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]], keep: int = 1, width: int = WIDTH) -> list[str]:
    """A markdown table, split by columns into several (each repeating the first `keep` columns)
    when one line would be wider than `width`. Returns lines; tables separated by a blank line."""
    header = [_cell(h) for h in header]
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(header[j]), *(len(r[j]) for r in rows)) if rows else len(header[j]) for j in range(len(header))]
    chunks, current = [], []
    base = 1 + sum(widths[j] + 3 for j in range(keep))
    for j in range(keep, len(header)):
        if current and base + sum(widths[k] + 3 for k in current + [j]) > width:
            chunks.append(current)
            current = []
        current.append(j)
    chunks.append(current)
    out = []
    for chunk in chunks:
        cols = list(range(keep)) + chunk
        if out:
            out.append("")

        def line(cells):
            return "| " + " | ".join(cells[j].ljust(widths[j]) if j < keep else cells[j].rjust(widths[j])
                                     for j in cols) + " |"

        out.append(line(header))
        out.append("|" + "|".join(("-" * (widths[j] + 1) + ":" if j >= keep else "-" * (widths[j] + 2))
                                  for j in cols) + "|")
        out += [line(r) for r in rows]
    return out


def training_table(configs: list[Configuration], labels: list[str]) -> list[str]:
    header = ["configuration", "dropout (rate: sites)", "schedule", "seeds", "val ppl", "bits/byte",
              "gap (nats)", "best step"]
    rows = []
    for c, label in zip(configs, labels):
        t = c.training
        rows.append([label, c.dropout(), c.schedule(), str(len(c.completed)), fmt(t["val_ppl"]), fmt(t["val_bpb"]),
                     fmt(t["gap"], signed=True), fmt_value(t["best_step"].value, 0)])
    return md_table(header, rows)


def decoding_families(configs: list[Configuration]) -> dict[str, list[str]]:
    """family -> metrics measured (word-level ones: token-level twins are in results.csv)."""
    names = {m for c in configs for rows in c.decoding.values() for m, e in rows.items() if e.value is not None}
    out: dict[str, list[str]] = {}
    for m in metric_order(names):
        if m.endswith("_token") and m.removesuffix("_token") in names:
            continue
        out.setdefault(family_of(m), []).append(m)
    return {f: out[f] for f in FAMILIES if f in out}


def samplers_of(configs: list[Configuration]) -> list[str]:
    names: list[str] = []
    for c in configs:
        names += [s for s in c.samplers() if s not in names and s != REFERENCE]
    return names + ([REFERENCE] if any(REFERENCE in c.decoding for c in configs) else [])


def decoding_table(configs: list[Configuration], labels: list[str], metrics: list[str]) -> list[str]:
    samplers = samplers_of(configs)
    header = ["configuration", "metric"] + samplers
    rows = []
    for c, label in zip(configs, labels):
        for m in metrics:
            rows.append([label, metric_header(m)] + [fmt(c.decoding.get(s, {}).get(m)) for s in samplers])
    return md_table(header, rows, keep=2)


def _metric_note(m: str, judged: bool = True) -> str:
    if m not in BY_NAME:
        return f"{m} (not in the metric registry)"
    d = BY_NAME[m]
    unit = {"word": "words", "token": "model tokens", "text": "whole texts",
            "judge": "scored by the judge" if judged else "self-scored (no judge)"}[d.unit]
    better = {"higher": "higher is better", "lower": "lower is better",
              "reference": "nearer the human reference is better"}[d.better]
    return f"{d.label}: on {unit}, {better}" if d.unit in ("word", "token", "text") else f"{d.label}: {unit}, {better}"


# ---------------------------------------------------------------------------
# report.md


def markdown(inputs, configs: list[Configuration], facts: list[Finding], plots: list[tuple[str, str]],
             headline: str | None) -> str:
    """The whole report.md; `plots` are (alt text, relative path)."""
    labels = row_labels(configs)
    runs = sum(len(c.runs) for c in configs)
    rank = ranking_metric([c for c in configs if c.completed] or configs)
    lines = ["# dropsample report", "",
             f"Inputs: {', '.join(map(str, inputs))} ({runs} runs, {len(configs)} configurations). Every figure is "
             "`mean ± half-width` of a 95% interval: Student-t over seeds when a configuration has two or more, "
             "otherwise the run's own (±1.96 standard errors of the whole-split evaluation; seeded bootstrap "
             "over samples for decoding metrics); no interval where none was recorded.", ""]
    if rank == "val_bpb":
        lines += ["The runs use different tokenizers, so their per-token perplexities are not comparable: compare "
                  "them by **bits per byte**.", ""]
    lines += ["## Configurations", ""]
    for c, label in zip(configs, labels):
        names = ", ".join(r.path.name for r in c.runs)
        full = c.label()
        lines.append(f"- **{label}**" + (f": {full}" if full != label else "") +
                     f"; tokenizer {c.tokenizer}; dropout {c.dropout()}, schedule {c.schedule()}; runs: {names}")
    lines += ["", "## Training", "",
              "At the best checkpoint, evaluated on the whole validation split. Gap = val - train loss.", ""]
    lines += training_table(configs, labels)
    families = decoding_families(configs)
    if families:
        lines += ["", "## Decoding", "",
                  "One table per metric family; columns are samplers and the human reference text. Word-level "
                  "figures (token-level twins, `*_token`, are in results.csv)."
                  + (f" Headline metric: {metric_header(headline)}." if headline else ""), ""]
        judged = any(r.judge() for c in configs for r in c.completed)
        for family, metrics in families.items():
            lines += [f"### {family.capitalize()}", "", "; ".join(_metric_note(m, judged) for m in metrics) + ".", ""]
            lines += decoding_table(configs, labels, metrics) + [""]
    lines += ["", "## Findings", ""]
    lines += [f"- {f.text()}" for f in facts] or ["- (not enough completed runs for findings)"]
    problems = [c for c in configs if c.problems]
    if problems:
        lines += ["", "## Runs that did not complete", ""]
        lines += [f"- {c.label()}: {r.path.name} {r.status} ({r.summary.error})" for c in problems for r in c.problems]
    if plots:
        lines += ["", "## Plots", ""]
        for alt, path in plots:
            lines += [f"![{alt}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------
# results.csv


def results_rows(configs: list[Configuration]) -> list[dict]:
    """One row per configuration x sampler x metric (training figures: stage training)."""
    swept = list(configs[0].values) if configs else []
    out = []
    for c in configs:
        base = {"configuration": c.label(), **{k: _short(v) for k, v in c.values.items()},
                "tokenizer": c.tokenizer, "seeds": len(c.completed)}
        for name, e in c.training.items():
            if e.value is not None:
                out.append({**base, "stage": "training", "sampler": "", "metric": name, "family": "training",
                            "unit": TRAINING_UNITS[name], "value": e.value, "low": e.low, "high": e.high,
                            "interval": e.how})
        for sampler in c.samplers():
            for name in metric_order(list(c.decoding[sampler])):
                e = c.decoding[sampler][name]
                if e.value is None:
                    continue
                out.append({**base, "stage": "decoding", "sampler": sampler, "metric": name,
                            "family": family_of(name), "unit": BY_NAME[name].unit if name in BY_NAME else "",
                            "value": e.value, "low": e.low, "high": e.high, "interval": e.how})
    for row in out:
        for k in swept:
            row.setdefault(k, "")
    return out


def write_csv(path: Path, rows: list[dict], swept: list[str]) -> None:
    """Floats as Python writes them (repr): read back, they are the same numbers."""
    columns = ["configuration", *swept, *CSV_COLUMNS[1:]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


# ---------------------------------------------------------------------------
# report.html: the same document, one file, the plots inline


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def to_html(md: str, images: dict[str, bytes], base: Path, title: str = "dropsample report") -> str:
    """report.md's subset of markdown (headings, paragraphs, lists, tables, images) as HTML, each
    image a base64 data URI: from `images` (path -> PNG bytes), else read from base / path."""
    body, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"^(#{1,6}) (.*)", line)
        image = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$", line)
        if heading:
            n = len(heading.group(1))
            body.append(f"<h{n}>{_inline(heading.group(2))}</h{n}>")
            i += 1
        elif image:
            alt, src = image.groups()
            data = images.get(src)
            if data is None and (base / src).is_file():
                data = (base / src).read_bytes()
            uri = f"data:image/png;base64,{base64.b64encode(data).decode()}" if data else html.escape(src)
            body.append(f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{_inline(alt)}'
                        "</figcaption></figure>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]] for r in rows]
            out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]) + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in cells[2:]]
            body.append("\n".join(out + ["</table>"]))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |!\[)", lines[i]):
                para.append(lines[i])
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0;font-variant-numeric:tabular-nums}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child"
             "{text-align:left}img{max-width:100%}figcaption{font-size:90%;color:#555}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}"
            f"</title>\n<style>{style}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


# ---------------------------------------------------------------------------
# the terminal


def terminal(configs: list[Configuration], facts: list[Finding], headline: str | None, where: Path | None,
             console=None) -> None:
    """A compact training table and the headline metric's table, at the console's width (rich
    sizes a Console to the terminal); numbers wrap between value and ± rather than being cut."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    labels = row_labels(configs)
    tokenizers = sorted({c.tokenizer for c in configs})
    caption = (f"different tokenizers ({', '.join(tokenizers)}): compare bits/byte, not ppl"
               if len(tokenizers) > 1 else None)
    table = Table(title="Training: best checkpoint, 95% intervals", title_justify="left", caption=caption)
    for header, left in (("configuration", True), ("seeds", False), ("val ppl", False), ("bits/byte", False),
                         ("gap (nats)", False)):
        table.add_column(header, justify="left" if left else "right", overflow="fold")
    for c, label in zip(configs, labels):
        t = c.training
        table.add_row(escape(label), str(len(c.completed)), fmt(t["val_ppl"]), fmt(t["val_bpb"]),
                      fmt(t["gap"], signed=True), style=None if not c.problems else "red")
    console.print(table)
    samplers = samplers_of(configs)
    if headline and samplers:
        judged = any(r.judge() for c in configs for r in c.completed)
        title = f"{metric_header(headline)}: {_metric_note(headline, judged).split(': ', 1)[-1]}"
        dec = Table(title=title, title_justify="left")
        cells = {(label, s): fmt(c.decoding.get(s, {}).get(headline)) for c, label in zip(configs, labels)
                 for s in samplers}
        # the orientation with fewer columns: samplers as rows when there are fewer configurations
        rows, cols = (samplers, labels) if len(labels) < len(samplers) else (labels, samplers)
        dec.add_column("sampler" if rows is samplers else "configuration", overflow="fold")
        for col in cols:
            dec.add_column(escape(col), justify="right", overflow="fold")
        for r in rows:
            dec.add_row(escape(r), *(cells[(r, col) if rows is labels else (col, r)] for col in cols))
        console.print(dec)
    if labels != [c.short_label() for c in configs]:
        for c, label in zip(configs, labels):
            console.print(f"{label}: {escape(c.label())}", highlight=False)
    for f in facts:
        console.print(f"- {escape(f.statement)}", highlight=False)
    if where is not None:
        console.print(f"Full report (tables, evidence, plots): {escape(str(where))}", highlight=False)
