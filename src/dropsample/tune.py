"""Adaptive sweeps (hydra/sweeper=optuna): what a trial returns, where its study lives, and
which values are checked before the first trial.

The objective: each sweep job returns one number, read from its finished run folder.

    objective=val_loss              summary.json's val_loss: the best checkpoint on the whole val split
    objective=val_ppl / val_bpb     best_val_ppl / best_val_bpb
    objective=FIELD                 any number in summary.json: final_val_loss, gap, ppl_ratio, ...
    objective=SAMPLER.METRIC        that sampler's metric in the latest samples/<name>/metrics.json,
                                    e.g. top_p_0.9.distinct_4 (needs sample_after_train=true)

Which way is better is the sweeper's setting, hydra.sweeper.direction (minimize by default).
A run that failed, diverged or lacks the number returns None, no number: the Optuna sweeper
records that trial as failed (TrialState.FAIL) and the study goes on. (Not NaN: the plugin,
hydra-optuna-sweeper 1.3, then tells Optuna the trial's result twice and stops the study.)
A job skipped because the same configuration already completed returns that run's number.

The study: dropsample's Optuna sweeper (src/hydra_plugins/dropsample_optuna) stores it in
SQLite under the sweep folder, named after experiment_name, unless hydra.sweeper.storage or
study_name say otherwise; `study_overrides` pins these on the command line so multirun.yaml
records where the study is.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from dropsample.metrics import registry
from dropsample.config import resolve_samplers
from dropsample.errors import ConfigError, UserError
from dropsample.runs import RunFolder, Summary
from dropsample.schema import Config

log = logging.getLogger("dropsample")

STUDY_DB = "optuna.db"  # in the sweep folder
PLUGIN_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
SWEEPER = "hydra_plugins.dropsample_optuna.sweeper.OptunaSweeper"


def summary_numbers() -> list[str]:
    """summary.json fields that hold one number."""
    numeric = ("Optional[float]", "Optional[int]", "float", "int")
    return [f.name for f in fields(Summary) if f.type in numeric]


def sample_metric_names() -> list[str]:
    """The per-sampler metrics `dropsample sample` writes (metrics/registry.py)."""
    return sorted(registry.BY_NAME)


def check(cfg: Config) -> None:
    """An objective that no run could produce fails here, before any training."""
    name = cfg.objective
    if "." not in name:
        if name not in summary_numbers():
            raise ConfigError("objective", f"unknown objective {cfg.objective!r}; use val_loss, val_ppl, val_bpb, "
                              f"a number of summary.json ({', '.join(summary_numbers())}) or SAMPLER.METRIC")
        return
    sampler, metric = name.rsplit(".", 1)  # sampler names may hold dots (top_p_0.9), metric names never
    names = [s.name for s in resolve_samplers(cfg.samplers)]
    if sampler not in names:
        raise ConfigError("objective", f"{cfg.objective!r} names sampler {sampler!r}, which is not in samplers "
                          f"({', '.join(names)})")
    if metric not in sample_metric_names():
        raise ConfigError("objective", f"{cfg.objective!r}: no sampler metric {metric!r}; choose from "
                          f"{', '.join(sample_metric_names())}")
    if not cfg.sample_after_train:
        raise ConfigError("objective", f"{cfg.objective!r} is a sampler metric, but sample_after_train=false; "
                          "set it to true or use a training objective such as val_loss")


def value(objective: str, summary: Summary | None, run_dir: Path) -> float | None:
    """The objective of a finished sweep job; None, with a log line saying why, when there is none."""
    try:
        return _value(objective, summary, RunFolder(run_dir))
    except UserError as err:  # a damaged file: the trial fails, the study goes on
        log.error("objective %s: %s", objective, err)
        return None


def _value(objective: str, summary: Summary | None, run: RunFolder) -> float | None:
    if summary is not None and summary.status == "skipped" and summary.same_as:
        run = RunFolder(Path(summary.same_as))
        summary = run.summary()
    if summary is None or summary.status != "completed":
        status = summary.status if summary is not None else "no summary"
        log.warning("objective %s: the run %s (%s); the trial counts as failed", objective, status, run.path)
        return None
    name = objective
    if "." in name:
        sampler, metric = name.rsplit(".", 1)
        record = run.sample_metrics(summary.latest_samples) if summary.latest_samples else None
        number = ((record or {}).get("samplers", {}).get(sampler) or {}).get(metric)
        if isinstance(number, dict):  # a metrics.json entry: {"value", "low", "high"}
            number = number.get("value")
        where = f"samples/{summary.latest_samples}/metrics.json" if record else "no samples"
    else:
        number = summary.to_json().get(name)
        where = "summary.json"
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        log.error("objective %s: %s in %s has no number %s; the trial counts as failed", objective, run.path,
                  where, name)
        return None
    return float(number)


# ---------------------------------------------------------------------------
# The study, before any trial


def is_optuna(hydra_cfg) -> bool:
    return str(hydra_cfg.sweeper.get("_target_", "")) in (PLUGIN_SWEEPER, SWEEPER)


def study_overrides(hydra_cfg, sweep_dir: str, experiment_name: str, overrides: list[str]) -> list[str]:
    """What the CLI pins for an Optuna sweep: dropsample's sweeper class, and the study's
    storage and name when the config leaves them null (multirun.yaml then records both)."""
    given = {o.split("=", 1)[0] for o in overrides}
    pins = [] if "hydra.sweeper._target_" in given else [f"hydra.sweeper._target_={SWEEPER}"]
    sweeper = hydra_cfg.sweeper
    if sweeper.get("storage") is None and "hydra.sweeper.storage" not in given:
        pins.append(f"hydra.sweeper.storage='sqlite:///{(Path(sweep_dir) / STUDY_DB).resolve()}'")
    if sweeper.get("study_name") is None and "hydra.sweeper.study_name" not in given:
        pins.append(f"hydra.sweeper.study_name='{experiment_name}'")
    return pins


def trial_jobs(sweeper_params, overrides: list[str]) -> list[list[str]]:
    """Override lists to validate before an Optuna study: the base config, then each declared
    choice and each range or interval end point in turn (the trials themselves are not known
    before the study runs). Sweeps written in config (hydra.sweeper.params) come first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(sweeper_params) if sweeper_params else {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(lines)
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    fixed = {o.get_key_element() for o in parsed if not o.is_sweep_override()}
    jobs = [base]
    for o in parsed:
        if not o.is_sweep_override() or o.get_key_element() in fixed:  # a fixed value wins over a sweep
            continue
        key = o.get_key_element()
        if o.is_choice_sweep():
            values = list(o.sweep_string_iterator())
        else:  # interval(a, b) and range(a, b): Optuna may draw either end
            sweep = o.value()
            values = [sweep.start, getattr(sweep, "end", getattr(sweep, "stop", None))]
        jobs += [base + [f"{key}={v}"] for v in values]
    return jobs
