"""The report's view of an Optuna study (hydra/sweeper=optuna): every trial, the best
configuration and the objective's history.

A sweep folder is a study when its jobs' .hydra/hydra.yaml name an Optuna sweeper; the
study is read back from the storage and study name recorded there (tune.study_overrides
pins both), and trial N is matched to job<N>/ (dropsample's sweeper numbers job folders by
trial) when that job's overrides are the trial's parameters.

Each trial is one training run with one seed, so the objective of one trial carries no
interval: the section says so and gives the command that reruns the best configuration
over seeds, whose report then has intervals.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dropsample.errors import UserError
from dropsample.runs import RunFolder, find_runs
from dropsample.tune import PLUGIN_SWEEPER, SWEEPER

log = logging.getLogger("dropsample")


@dataclass
class Trial:
    number: int
    state: str  # COMPLETE, FAIL, RUNNING, PRUNED, WAITING
    value: float | None
    params: dict
    run: Path | None = None
    note: str = ""  # why a trial failed, from its run's summary


@dataclass
class Study:
    folder: Path
    storage: str
    name: str
    objective: str
    direction: str  # minimize or maximize
    trials: list[Trial] = field(default_factory=list)

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]

    @property
    def best(self) -> Trial | None:
        pick = max if self.direction == "maximize" else min
        return pick(self.complete, key=lambda t: t.value) if self.complete else None

    def running_best(self) -> list[tuple[int, float]]:
        """(trial number, best objective so far) at each complete trial."""
        out, best = [], None
        better = (lambda a, b: a > b) if self.direction == "maximize" else (lambda a, b: a < b)
        for t in sorted(self.complete, key=lambda t: t.number):
            if best is None or better(t.value, best):
                best = t.value
            out.append((t.number, best))
        return out


def _sweeper_of(sweep_dir: Path) -> tuple[dict, RunFolder] | None:
    """The Optuna sweeper settings recorded by the sweep's jobs, with one of those jobs."""
    for run_dir in find_runs([sweep_dir]):
        path = run_dir / ".hydra" / "hydra.yaml"
        try:
            sweeper = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("sweeper", {})
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(sweeper, dict) and sweeper.get("_target_") in (PLUGIN_SWEEPER, SWEEPER):
            return sweeper, RunFolder(run_dir)
        return None  # the first readable job decides: one sweep has one sweeper
    return None


def load_study(sweep_dir: Path) -> Study | None:
    """The study behind a sweep folder; None when it is no Optuna sweep or cannot be read."""
    found = _sweeper_of(Path(sweep_dir))
    if found is None:
        return None
    sweeper, job = found
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    if not storage or not name:
        log.warning("%s: an Optuna sweep whose study was kept in memory only; no trials to report", sweep_dir)
        return None
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the storage's schema check is not news
    try:
        import optuna
    except ImportError:
        log.warning('%s is an Optuna study; pip install "dropsample[optuna]" to report its trials', sweep_dir)
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        stored = optuna.load_study(study_name=name, storage=storage)
    except Exception as exc:  # missing or damaged database: the rest of the report still stands
        log.warning("%s: cannot read study %r from %s (%s); the report leaves it out", sweep_dir, name, storage,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    try:
        objective = str(job.raw_config().get("objective", "val_loss"))
    except UserError:
        objective = "val_loss"
    study = Study(Path(sweep_dir), storage, name, objective, stored.direction.name.lower())
    for t in stored.trials:
        study.trials.append(Trial(t.number, t.state.name, t.value, dict(t.params)))
    _match_runs(study)
    return study


def _match_runs(study: Study) -> None:
    """job<N>/ is trial N when its overrides hold the trial's parameters; note why failed ones failed."""
    for trial in study.trials:
        run = RunFolder(study.folder / f"job{trial.number}")
        if not run.is_run():
            continue
        given = set(run.overrides())
        if not all(f"{k}={v}" in given for k, v in trial.params.items()):
            continue
        trial.run = run.path
        if trial.state != "COMPLETE":
            try:
                summary = run.summary()
                trial.note = f"{summary.status}: {summary.error}" if summary.error else str(summary.status)
            except UserError as err:
                trial.note = str(err)


# ---------------------------------------------------------------------------
# Outputs


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_history(study: Study, path: Path) -> Path:
    """Objective per trial (failed trials as red crosses on the top edge) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    done = sorted(study.complete, key=lambda t: t.number)
    failed = [t.number for t in study.trials if t.state == "FAIL"]
    if done:
        ax.plot([t.number for t in done], [t.value for t in done], "o", color="tab:blue", label="trial")
        best = study.running_best()
        last = max(t.number for t in study.trials)
        ax.step([n for n, _ in best] + [last], [v for _, v in best] + [best[-1][1]], where="post",
                color="tab:orange", label=f"best so far ({study.direction})")
    if failed:
        top = max((t.value for t in done), default=1.0)
        ax.plot(failed, [top] * len(failed), "x", color="tab:red", label="failed (no value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(study.objective)
    ax.set_title(f"Optuna study {study.name}")
    ax.legend(loc="best", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


STATE_WORDS = {"COMPLETE": "completed", "FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running",
               "WAITING": "waiting"}


def _state(trial: Trial) -> str:
    return STATE_WORDS.get(trial.state, trial.state.lower())


def markdown(study: Study, plot: Path, out: Path) -> str:
    counts: dict[str, int] = {}
    for t in study.trials:
        word = _state(t)
        counts[word] = counts.get(word, 0) + 1
    lines = [f"## Optuna study `{study.name}`", "",
             f"Objective `{study.objective}`, "
             f"{study.direction}d; {len(study.trials)} trials ("
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"); storage `{study.storage}`.", ""]
    best = study.best
    if best is None:
        lines += ["No trial completed, so there is no best configuration.", ""]
    else:
        setting = " ".join(f"{k}={v}" for k, v in best.params.items())
        where = f" ({best.run})" if best.run else ""
        lines += [f"**Best: trial {best.number}**, {study.objective} = {best.value:.6g} with `{setting}`{where}.",
                  "Each trial is one run with one seed, so this number has no interval; before trusting a "
                  "difference between trials, rerun the best few over seeds and compare their intervals: "
                  f"`dropsample train -m {setting} seed=0,1,2`.", ""]
    names = sorted({k for t in study.trials for k in t.params})
    lines += ["| trial | state | " + study.objective + " | " + " | ".join(names) + " | run | note |",
              "|" + "---|" * (len(names) + 5)]
    for t in study.trials:
        cells = [str(t.number), _state(t), _fmt(t.value), *(_fmt(t.params.get(k)) for k in names),
                 t.run.name if t.run else "-", t.note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    try:
        shown = plot.relative_to(out)
    except ValueError:
        shown = plot
    lines += ["", f"![objective per trial]({shown})", ""]
    return "\n".join(lines)


def print_study(study: Study) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    names = sorted({k for t in study.trials for k in t.params})
    best = study.best
    table = Table(title=f"Optuna study {study.name} ({study.objective}, {study.direction})",
                  caption=f"best: trial {best.number}, {best.value:.6g}" if best else "no trial completed")
    for column in ("trial", "state", study.objective, *names, "note"):
        table.add_column(escape(column), overflow="fold")
    for t in study.trials:
        table.add_row(str(t.number), _state(t), _fmt(t.value), *(escape(_fmt(t.params.get(k))) for k in names),
                      escape(t.note))
    Console(stderr=True).print(table)  # at the terminal's width; columns fold, never cut numbers


def study_sections(paths: list[Path], out: Path) -> list[str]:
    """For each given folder that holds an Optuna study: its history plot under out/plots, its
    trials table on the terminal, and its report section (markdown), returned."""
    sections = []
    for path in paths:
        study = load_study(Path(path)) if Path(path).is_dir() else None
        if study is None:
            continue
        plot = plot_history(study, out / "plots" / f"study_{_slug(study.name)}_history.png")
        print_study(study)
        sections.append(markdown(study, plot, out))
    return sections


def study_report(paths: list[Path], out: Path) -> list[str]:
    """study_sections, each appended to out/report.md."""
    sections = study_sections(paths, out)
    with open(out / "report.md", "a") as f:
        for section in sections:
            f.write("\n" + section)
    return sections
