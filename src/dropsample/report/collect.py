"""Collect run folders and group them into configurations; aggregate seeds.

A configuration is a run's result identity without its seed (`schema.identity`); its
seeds are aggregated as mean and 95% t-interval. Training figures are taken at each run's
best checkpoint (the one `sample` uses by default); decoding figures come from each run's
latest samples/ folder. Failed and diverged runs get rows too.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

from dropsample.errors import DamagedFile, UserError
from dropsample.runs import RunFolder, Summary, find_runs
from dropsample.schema import flat, identity
from dropsample.stats import mean_ci

SAMPLER_METRICS = ("distinct_4", "self_bleu_4", "gen_ppl", "repetition")


@dataclass
class Run:
    path: Path
    config: dict  # flattened, resolved
    summary: Summary
    metrics: list[dict]
    samples: dict | None
    identity: dict = field(default_factory=dict)  # flattened result identity without the seed

    @property
    def status(self) -> str:
        return self.summary.status or "not started"

    def at_best(self) -> dict | None:
        rows = [r for r in self.metrics if r["step"] == self.summary.best_step]
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
    """Every file the report reads of one run, through RunFolder (damage -> DamagedFile)."""
    folder = RunFolder(path)
    cfg = folder.config()
    summary = folder.summary()
    samples = folder.sample_metrics(summary.latest_samples) if summary.latest_samples else None
    return Run(folder.path, flat(identity(cfg, seed=True)), summary, folder.metrics(), samples,
               flat(identity(cfg, seed=False)))


def collect(paths: list[Path], skip_damaged: bool = False) -> tuple[list[Run], list[str]]:
    """Every run under `paths` (skipped reruns replaced by the run that did the work).

    A run with a damaged file stops the report with that file's one-line error, unless
    `skip_damaged`: then it is left out and its error returned, to be listed in the report.
    """
    expanded = []
    for p in paths:
        matches = glob.glob(str(p)) if any(c in str(p) for c in "*?[") else [str(p)]
        expanded.extend(Path(m) for m in matches)
    missing = [str(p) for p in expanded if not p.exists()]
    if missing or not expanded:
        raise UserError(f"no such path: {', '.join(missing) or paths}; pass sweep folders, run folders or globs")
    runs, damaged, seen = [], [], set()
    for path in find_runs(expanded):
        try:
            run = load_run(path)
            if run.status == "skipped" and run.summary.same_as:
                # a rerun that found this configuration already done: report the run that did it
                target = Path(run.summary.same_as)
                if RunFolder(target).is_run():
                    run = load_run(target)
        except DamagedFile as err:
            if not skip_damaged:
                raise DamagedFile(err.path, err.problem, f"{err.fix}, or pass --skip-damaged to report without it") from None
            damaged.append(str(err))
            continue
        if run.path.resolve() not in seen:
            seen.add(run.path.resolve())
            runs.append(run)
    if not runs:
        raise UserError(f"no readable run folders under {', '.join(map(str, paths))}; pass a sweep or run folder")
    return runs, damaged


def group(runs: list[Run]) -> list[Configuration]:
    identities = [r.identity for r in runs]
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
    row["dropout"] = " ".join(f"{k}={v:g}" for k, v in (c.runs[0].summary.dropout or {}).items()
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
            # metrics.json entries are {"value", "low", "high"} (metrics/registry.py)
            row[f"{name}.{metric}"] = mean_ci([(v.get(metric) or {}).get("value") for v in values])[0]
    row["errors"] = "; ".join(f"{r.path.name}: {r.status} ({r.summary.error})" for r in c.problems)
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


