"""The `dropsample` command: a thin map from subcommands to plain functions.

Bad input becomes one line on stderr and exit code 2 (3 for a damaged run file), never a
traceback; how a training job fails is decided in one place, task.py. Each command imports
its module when it runs, so `dropsample --help` and `status` never pay for importing torch.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, NamedTuple, Optional

import typer

from dropsample.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="How dropout at training time and decoding at inference shape a small GPT's perplexity, "
    "train/val gap and diversity.",
)
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(err: UserError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code)


@contextmanager
def _frozen_imports():
    """Import torch (and numpy) with Python's cyclic garbage collector off, then freeze what was
    imported out of later collections: a collection while torch imports, and every full one
    after it that walks torch's ~250k objects again, cost 0.07-0.15 s each, ~0.3 s of start-up in
    all. Those objects live as long as the process anyway; the import's own cyclic garbage
    (~7k objects, ~1 MB) is frozen with them, never freed. A process that imported
    torch already (tests calling the CLI in-process) is left as it is."""
    if "torch" in sys.modules:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _hydra_overrides_error(exc: Exception) -> UserError:
    """Hydra's multi-line composition errors, as one line that says what to do."""
    from dropsample.config import options

    text = str(exc)
    unknown = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if unknown:
        return UserError(f"{unknown.group(1)}: unknown key; `dropsample train --cfg job` lists every key")
    if re.search(r"Could not find 'hydra/sweeper/optuna'", text):
        return UserError('hydra/sweeper=optuna needs the Hydra Optuna sweeper; pip install "dropsample[optuna]"')
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        return UserError(f"{group}={option}: no such option; choose one of {', '.join(options(group))}")
    text = "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return UserError(f"{text} (see `dropsample train --cfg job` for every key, conf/ for the groups)")


def normalize(overrides: list[str]) -> list[str]:
    """`+experiment=x` (the spelling before `experiment` had a default) means `experiment=x`."""
    return [o[1:] if o.startswith("+experiment=") else o for o in overrides]


class Preflight(NamedTuple):
    jobs: int  # configs checked: every job of a basic sweep; an Optuna study's choices and end points
    folder: str  # the run folder, or the sweep folder
    pins: list[str]  # overrides the CLI adds: an Optuna study's sweeper class, storage and name


def preflight(overrides: list[str], multirun: bool) -> Preflight:
    """Compose and validate every job's config before Hydra creates any folder.

    Also checks each job's loggers are installed, its objective exists and its pretrained
    source (model.init_from) can be read and fits. Returns the
    output folder Hydra will use, resolved now so the CLI can pin it and read the sweep's
    outcome there. An Optuna study's trials are not known in advance: its base config and
    each declared choice and range end point are checked instead.
    """
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dropsample import distributed, tune
    from dropsample.config import hydra_context, job_config, validate
    from dropsample.loggers import check_installed
    from dropsample.sweep import expand_jobs

    try:
        with hydra_context():
            parsed = OverridesParser.create().parse_overrides(overrides)
            first = [o.input_line for o in parsed if not o.is_sweep_override()]
            composed = compose("config", overrides=first, return_hydra_config=True)
            hydra_cfg = composed.hydra
            study = multirun and tune.is_optuna(hydra_cfg)
            if study:
                jobs = tune.trial_jobs(hydra_cfg.sweeper.get("params"), overrides)
            elif multirun:
                # sweeps written in experiment files (hydra.sweeper.params) come before the command line
                jobs = expand_jobs(hydra_cfg.sweeper.get("params"), overrides)
            else:
                sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
                if sweeps:
                    raise UserError(f"{sweeps[0]} is a sweep; add -m to run one job per value")
                jobs = [overrides]
            planned = _launcher_processes(hydra_cfg) if multirun else None
            checked = []
            for job in jobs:
                # a single run's job is the composition above (first == overrides: no sweeps)
                cfg = validate(compose("config", overrides=job) if multirun else job_config(composed))
                check_installed(cfg.logger)
                tune.check(cfg)
                distributed.check(cfg.train.ddp, cfg.train.device, sweep=multirun, planned=planned)
                checked.append(cfg)
            if any(c.model.init_from for c in checked):  # torch only when a pretrained source is read
                from dropsample import pretrained

                pretrained.check(checked)
            folder = str(hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir)
            pins = tune.study_overrides(hydra_cfg, folder, cfg.experiment_name, overrides) if study else []
    except UserError:
        raise
    except Exception as exc:  # Hydra's override and composition errors
        raise _hydra_overrides_error(exc) from None
    return Preflight(len(jobs), folder, pins)


def _launcher_processes(hydra_cfg) -> int | None:
    """Processes a submitit launcher (slurm, submitit_local) starts per job (nodes x tasks_per_node:
    one DDP run); None for the others."""
    launcher = hydra_cfg.get("launcher") or {}
    if "hydra_submitit_launcher" not in str(launcher.get("_target_", "")):
        return None
    return int(launcher.get("nodes") or 1) * int(launcher.get("tasks_per_node") or 1)


def _hydra_task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dropsample import distributed
    from dropsample.task import run_task
    from dropsample.tune import value

    hc = HydraConfig.get()
    _share_cpu_threads(hc)
    out = Path(hc.runtime.output_dir)
    # under torchrun the CLI started the process group already; SLURM tasks (submitit) start it here
    with distributed.session():
        main = distributed.is_main()
        if not main:
            _detach_file_logging()  # train.log is rank 0's
        summary = run_task(cfg, out, sweep_job=hc.mode == RunMode.MULTIRUN)
    if not main:  # the launcher reads rank 0's result
        return None
    # what an adaptive sweeper (Optuna) optimises: a number, or None for a failed trial
    return value(str(cfg.get("objective", "val_loss")), summary, out)


def _detach_file_logging() -> None:
    """A DDP rank > 0 logs to its console only (Hydra gave every process a handler on train.log)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def _share_cpu_threads(hc) -> None:
    """n parallel local jobs split the cores: otherwise each starts one torch thread per core
    and the jobs oversubscribe the machine."""
    import os

    import torch

    n_jobs = hc.launcher.get("n_jobs") if "Joblib" in str(hc.launcher.get("_target_", "")) else None
    if isinstance(n_jobs, int) and n_jobs > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_jobs))


@app.command(context_settings=HYDRA_ARGS)
def train(
    ctx: typer.Context,
    multirun: bool = typer.Option(False, "-m", "--multirun", help="One job per combination of swept values."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue RUN_DIR from checkpoints/last."),
) -> None:
    """Train a GPT (then sample from it). Arguments are Hydra overrides.

    Config groups (conf/): model=tiny|baby|shakespeare|gpt2, data=tiny_shakespeare|wikitext2|text,
    dropout=standard|none|everywhere, experiment=rate_sweep|site_sweep|decoding_sweep|early_dropout,
    hydra/launcher=basic|parallel|packed|slurm|joblib|submitit_local|submitit_slurm.

    Examples:
      dropsample train model=shakespeare dropout.rate=0.2 train.max_iters=3000
      dropsample train -m dropout.rate=0,0.1,0.2 seed=0,1
      dropsample train --cfg job      (print the composed config)
    """
    with _frozen_imports():
        from dropsample import distributed  # torch

    overrides = normalize(list(ctx.args))
    hydra_flags = [a for a in overrides if a in ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")]
    if multirun and hydra_flags:  # Hydra itself would raise a ValueError traceback
        _fail(UserError(f"{hydra_flags[0]} prints one run's config or Hydra's settings and cannot go with -m; "
                        f"drop -m (and give each swept key one value) to see a job's config"))
    try:
        launch = distributed.launch()  # torchrun's environment: one run on launch.world_size processes
    except UserError as err:
        _fail(err)
    if resume is not None:
        if overrides:
            _fail(UserError("--resume continues a run with its own config; drop the overrides"))
        from dropsample.task import resume as resume_run

        try:
            with distributed.session(launch):
                resume_run(resume)
        except UserError as err:  # the process group could not start
            _fail(err)
        return
    folder = None
    if not any(a.startswith("-") for a in overrides):  # Hydra's own flags (--cfg, --info) run nothing
        try:
            _, folder, pins = preflight(overrides, multirun)
        except UserError as err:
            if launch.rank:  # every rank composed the same config: rank 0 says it once
                raise typer.Exit(err.exit_code) from None
            _fail(err)
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        if not any(o.startswith(key + "=") for o in overrides):
            overrides.append(f"{key}='{folder}'")
        overrides += pins
    import hydra

    from dropsample.config import conf_dir

    try:
        with distributed.session(launch):
            if launch.distributed and folder is not None:
                folder = distributed.broadcast(folder)
                key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
                overrides = [o for o in overrides if not o.startswith(key + "=")] + [f"{key}='{folder}'"]
                if launch.rank:
                    overrides.append("hydra.output_subdir=null")  # .hydra/ is rank 0's to write
            sys.argv = ["dropsample"] + (["--multirun"] if multirun else []) + overrides
            hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_hydra_task)()
    except UserError as err:  # the process group could not start
        _fail(err)
    if multirun and folder is not None:
        _sweep_exit(Path(folder))


def _sweep_exit(sweep_dir: Path) -> None:
    """The sweep's outcome, from the sweep_summary.json its callback wrote."""
    from dropsample.sweep import SWEEP_SUMMARY, read_sweep_summary

    try:
        outcome = read_sweep_summary(sweep_dir)
    except UserError as err:
        _fail(err)
    if outcome is None:
        typer.echo(f"error: the sweep wrote no {SWEEP_SUMMARY} in {sweep_dir}; see the log above", err=True)
        raise typer.Exit(1)
    if outcome.get("failed"):
        typer.echo(f"error: {outcome['failed']} of {outcome['total']} jobs failed; "
                   f"see {sweep_dir / SWEEP_SUMMARY}", err=True)
        raise typer.Exit(1)


@app.command(context_settings=HYDRA_ARGS)
def sample(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A run folder."),
    name: Optional[str] = typer.Option(None, "--name", help="samples/<name>/ (default: a timestamp)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt for every sample."),
) -> None:
    """Generate with each sampler from a run's checkpoint and compare quality and diversity.

    Overrides: samplers=[greedy,top_k_40,{base: top_p_0.9, temperature: 0.7}] gen.num_samples=200
    gen.max_new_tokens=256 gen.checkpoint=last gen.mc_dropout=true ...
    """
    with _frozen_imports():
        from dropsample.sample import sample_command

    try:
        sample_command(run_dir, list(ctx.args), name=name, prompt=prompt)
    except UserError as err:
        _fail(err)


@app.command("eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    mc_samples: int = typer.Option(0, "--mc-samples", help="Also: perplexity of the mean of K MC-dropout predictions."),
    batches: int = typer.Option(0, "--batches", help="Evaluate on this many batches (0 = the whole split)."),
) -> None:
    """Loss, perplexity and bits per character on val (and test) for a checkpoint."""
    with _frozen_imports():
        from dropsample.evaluation import eval_command

    try:
        eval_command(run_dir, checkpoint, mc_samples=mc_samples, max_batches=batches)
    except UserError as err:
        _fail(err)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder."),
    out_dir: Path = typer.Argument(..., help="Folder to write."),
    format: str = typer.Option("hf", "--format", help="hf: a folder transformers loads as GPT2LMHeadModel."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
) -> None:
    """Export a checkpoint for other tools."""
    with _frozen_imports():
        from dropsample.export import export_hf

    try:
        if format != "hf":
            raise UserError(f"--format {format!r} is not supported; use --format hf")
        export_hf(run_dir, out_dir, checkpoint)
    except UserError as err:
        _fail(err)


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="Sweep folders, run folders, or globs of them."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where report.md, results.csv and plots go."),
    skip_damaged: bool = typer.Option(False, "--skip-damaged", help="Leave out runs whose files are damaged."),
    format: str = typer.Option("md", "--format", help="md: report.md + results.csv + plots/; csv: results.csv; "
                               "html: one self-contained report.html (+ results.csv)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Headline sample metric (default: mauve when "
                                         "measured, else distinct_4)."),
) -> None:
    """Compare runs: training and decoding tables with 95% intervals, findings, plots."""
    from dropsample.report.command import report_command

    try:
        report_command(paths, out, skip_damaged=skip_damaged, format=format, metric=metric)
    except UserError as err:
        _fail(err)


@app.command()
def status(path: Path = typer.Argument(..., help="A sweep or experiment folder.")) -> None:
    """Jobs done, running and failed in a sweep."""
    from rich.console import Console

    from dropsample.sweep import expected_jobs, status_table, sweep_rows

    rows = sweep_rows(path)
    if not rows:
        _fail(UserError(f"no runs under {path}; pass a sweep or experiment folder"))
    Console().print(status_table(rows, str(path), expected_jobs(path)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app()
