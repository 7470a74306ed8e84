"""Collect run folders, group seeds into configurations, and give every figure an interval.

A configuration is a run's result identity without its seed (`schema.identity`). Every figure
of a configuration is an `Estimate` (value, 95% low/high, how the interval was made, and the
per-seed values the paired tests need):

- two or more seeds: the mean over seeds with a Student-t interval over seeds;
- one run: its own uncertainty, i.e. the final whole-split evaluation's standard error for
  training figures (summary.json: val_loss_se, val_bpb_se, gap_se, val_ppl_low/high) and the
  seeded bootstrap interval over samples for decoding figures (samples/<name>/metrics.json).

Training figures come from the summary's final evaluation of the best checkpoint (older runs
without one: the metrics.jsonl row at the best step, no interval). Decoding figures come from
each run's latest samples/ folder. metrics.json may hold a metric as a plain number (no
interval) or as {"value", "low", "high"} (metrics/registry.py); both are read.
Failed and diverged runs are kept, to be listed.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dropsample.errors import DamagedFile, UserError
from dropsample.metrics.registry import BY_NAME, FAMILIES
from dropsample.runs import RunFolder, Summary, find_runs
from dropsample.schema import flat, identity
from dropsample.stats import mean_ci, normal_interval

REFERENCE = "reference"  # the human text's row in metrics.json, a column of the decoding tables

# training figures: summary name -> column header (with its unit)
TRAINING = {
    "val_ppl": "val ppl",
    "val_bpb": "bits/byte",
    "gap": "gap (nats)",
    "val_loss": "val loss (nats)",
    "train_loss": "train loss (nats)",
    "best_step": "best step",
}


@dataclass
class Estimate:
    """One figure: its value and 95% interval, and how that interval was made."""

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 1  # seeds behind the value
    how: str = ""  # "t over 3 seeds", "±1.96 SE", "bootstrap", "" (no interval)
    per_seed: dict = field(default_factory=dict)  # seed -> that seed's value (paired tests)

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def half(self) -> float | None:
        """Half-width of the interval (for `value ± half`; bootstrap intervals may be skewed:
        the larger side is shown so the ± never understates)."""
        if not self.has_interval or self.value is None:
            return None
        return max(self.value - self.low, self.high - self.value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_entry(entry) -> Estimate | None:
    """A metrics.json entry: a number (no interval) or {"value", "low", "high"}; anything else None."""
    if _number(entry):
        return Estimate(float(entry))
    if isinstance(entry, dict) and "value" in entry:
        value = entry["value"]
        if not _number(value):
            return Estimate(None)
        low, high = entry.get("low"), entry.get("high")
        if _number(low) and _number(high):
            return Estimate(float(value), float(low), float(high), how="bootstrap")
        return Estimate(float(value))
    return None


def family_of(name: str) -> str:
    """The registry's family of a metric; names the registry does not know go to "other"."""
    return BY_NAME[name].family if name in BY_NAME else "other"


@dataclass
class Run:
    path: Path
    config: dict  # flattened, resolved
    summary: Summary
    metrics: list[dict]
    samples: dict | None  # samples/<latest>/metrics.json as written
    identity: dict = field(default_factory=dict)  # flattened result identity without the seed
    curve: list[dict] = field(default_factory=list)  # train_curve.jsonl: batch loss every log interval

    @property
    def status(self) -> str:
        return self.summary.status or "not started"

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def tokenizer(self) -> str:
        return str(self.config.get("data.tokenizer", "char"))

    def at_best(self) -> dict | None:
        rows = [r for r in self.metrics if r["step"] == self.summary.best_step and "val_loss" in r]
        return rows[0] if rows else None

    def training(self, name: str) -> Estimate:
        """One training figure of this run with its own interval (see the module docstring)."""
        s = self.summary
        if name == "best_step":
            return Estimate(float(s.best_step) if s.best_step is not None else None)
        final = {"val_ppl": s.val_ppl, "val_bpb": s.val_bpb, "gap": s.gap, "val_loss": s.val_loss,
                 "train_loss": s.train_loss}[name]
        if final is not None:
            if name == "val_ppl":
                return _with(final, s.val_ppl_low, s.val_ppl_high, "1.96 SE")
            se = {"val_bpb": s.val_bpb_se, "gap": s.gap_se, "val_loss": s.val_loss_se,
                  "train_loss": s.train_loss_se}[name]
            return _with(final, *normal_interval(final, se), "1.96 SE")
        row = self.at_best() or {}  # a run without a final evaluation: the eval batches at the best step
        value = row.get(name)
        if name in ("val_loss", "train_loss") and _number(value):
            return _with(value, *normal_interval(value, row.get(f"{name}_se")), "1.96 SE (eval batches)")
        return Estimate(float(value) if _number(value) else None)

    def decoding(self) -> dict[str, dict[str, Estimate]]:
        """sampler (and "reference") -> metric -> Estimate, from the latest metrics.json."""
        data = self.samples or {}
        rows = dict(data.get("samplers") or {})
        if isinstance(data.get(REFERENCE), dict):
            rows[REFERENCE] = data[REFERENCE]
        out: dict[str, dict[str, Estimate]] = {}
        for sampler, values in rows.items():
            if not isinstance(values, dict):
                continue
            parsed = {m: read_entry(v) for m, v in values.items()}
            out[sampler] = {m: e for m, e in parsed.items() if e is not None}
        return out

    def judge(self) -> str | None:
        """Who scored the text (metrics.json "judge": {"kind": "run", "path", "step"}, {"kind":
        "transformers", "id"}); None when the model scored its own text ("kind": "self") or
        nothing names a judge."""
        judge = (self.samples or {}).get("judge")
        if judge is None or (isinstance(judge, dict) and judge.get("kind") == "self"):
            return None
        if isinstance(judge, dict):
            step = f" (step {judge['step']})" if judge.get("step") is not None else ""
            for key in ("id", "path", "name", "model", "run"):
                if judge.get(key):
                    return f"{judge.get('kind', 'judge')} {judge[key]}{step}"
            return json.dumps(judge, sort_keys=True)
        return str(judge)

    def knobs(self) -> dict[str, dict]:
        """sampler -> its decoding settings, as metrics.json recorded them."""
        settings = (self.samples or {}).get("settings") or {}
        return {k: v for k, v in settings.items() if isinstance(v, dict)}


def _with(value, low, high, how) -> Estimate:
    if low is None or high is None:
        return Estimate(float(value))
    return Estimate(float(value), float(low), float(high), how=how)


def aggregate(estimates: dict) -> Estimate:
    """seed -> that run's Estimate  =>  the configuration's Estimate (see the module docstring)."""
    values = {seed: e for seed, e in estimates.items() if e is not None and e.value is not None}
    if not values:
        return Estimate(None, n=0)
    per_seed = {seed: e.value for seed, e in values.items()}
    if len(values) == 1:
        (only,) = values.values()
        return Estimate(only.value, only.low, only.high, 1, only.how, per_seed)
    m, lo, hi = mean_ci(list(per_seed.values()))
    return Estimate(m, lo, hi, len(values), f"t over {len(values)} seeds", per_seed)


@dataclass
class Configuration:
    key: str
    values: dict  # the swept values
    runs: list[Run] = field(default_factory=list)
    training: dict[str, Estimate] = field(default_factory=dict)
    decoding: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # sampler -> metric -> Estimate

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    @property
    def problems(self) -> list[Run]:
        return [r for r in self.runs if r.status != "completed"]

    @property
    def tokenizer(self) -> str:
        return self.runs[0].tokenizer

    def label(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.values.items()) or "all runs"

    def short_label(self) -> str:
        """The swept values with the keys' last parts: `rate=0.3, sites=[attn]`."""
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in self.values.items()) or "all runs"

    def dropout(self) -> str:
        """Rates by site, sites sharing a rate grouped: `0.3: embd attn; head 0.1`; `none`."""
        run = self.runs[0]
        rates = run.summary.dropout
        if not rates:  # a run that failed before training recorded its resolved rates: the config's
            rate, sites = run.config.get("dropout.rate"), run.config.get("dropout.sites") or []
            rates = {site: rate for site in sites} if _number(rate) else {}
        by_rate: dict[float, list[str]] = {}
        for site, rate in rates.items():
            if _number(rate) and rate:
                by_rate.setdefault(rate, []).append(site)
        locked = rates.get("locked") or []
        text = "; ".join(f"{r:g}: {' '.join(s)}" for r, s in by_rate.items()) or "none"
        return text + (f" (locked: {' '.join(locked)})" if locked else "")

    def schedule(self) -> str:
        return self.runs[0].summary.dropout_schedule or str(self.runs[0].config.get("dropout.schedule.kind", "constant"))

    def samplers(self) -> list[str]:
        """Samplers in the order they were run, the reference last."""
        names = [s for s in self.decoding if s != REFERENCE]
        return names + ([REFERENCE] if REFERENCE in self.decoding else [])


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
               flat(identity(cfg, seed=False)), folder.train_curve())


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


def _seed_key(run: Run, i: int):
    return run.seed if run.seed is not None else f"run{i}"


def group(runs: list[Run]) -> list[Configuration]:
    """Configurations (sorted by their swept values), each with its figures aggregated over seeds."""
    identities = [r.identity for r in runs]
    keys = sorted({k for i in identities for k in i})
    swept = [k for k in keys if len({json.dumps(i.get(k), sort_keys=True) for i in identities}) > 1]
    configs: dict[str, Configuration] = {}
    for run, ident in zip(runs, identities):
        key = json.dumps(ident, sort_keys=True, default=str)
        if key not in configs:
            configs[key] = Configuration(key, {k: ident.get(k) for k in swept})
        configs[key].runs.append(run)
    out = sorted(configs.values(), key=lambda c: [(0, v, "") if _number(v) else (1, 0, json.dumps(v, default=str))
                                                  for v in c.values.values()])  # 2 before 10
    for c in out:
        summarize(c)
    return out


def summarize(c: Configuration) -> None:
    """Fill c.training and c.decoding from its completed runs."""
    done = c.completed
    c.training = {name: aggregate({_seed_key(r, i): r.training(name) for i, r in enumerate(done)})
                  for name in TRAINING}
    per_run = [(r, r.decoding()) for r in done]
    samplers: list[str] = []
    for _, dec in per_run:
        samplers += [s for s in dec if s not in samplers]
    c.decoding = {}
    for sampler in samplers:
        metrics: list[str] = []
        for _, dec in per_run:
            metrics += [m for m in dec.get(sampler, {}) if m not in metrics]
        c.decoding[sampler] = {
            m: aggregate({_seed_key(r, i): dec.get(sampler, {}).get(m) for i, (r, dec) in enumerate(per_run)})
            for m in metrics}


def metric_order(names) -> list[str]:
    """Registered metrics in the registry's order (by family), unknown names after them."""
    known = [m for m in BY_NAME if m in names]
    return sorted(known, key=lambda m: FAMILIES.index(BY_NAME[m].family)) + sorted(set(names) - set(known))


def swept_axis(configs: list[Configuration]) -> str | None:
    """The swept key plots put on the x axis: dropout.rate when swept, else the first numeric
    swept key, else the first swept key (sites, schedule, variant: categories)."""
    keys = list(configs[0].values) if configs else []
    if not keys:
        return None
    if "dropout.rate" in keys:
        return "dropout.rate"
    numeric = [k for k in keys if all(_number(c.values.get(k)) for c in configs)]
    return (numeric or keys)[0]


def line_label(c: Configuration, axis: str | None) -> str:
    """What separates the lines of a plot along `axis`: the other swept values."""
    rest = {k: v for k, v in c.values.items() if k != axis}
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in rest.items()) or "all"
