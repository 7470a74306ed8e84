"""One job of an experiment (train, then sample from the best checkpoint) and the one
failure policy every job goes through.

    job(cfg, run_dir)  returns the run's Summary or raises
    run_task(...)      decides what a problem means:

        single run  bad input (UserError):  the folder is removed if the job never started,
                                            one line on stderr, exit 2 (3 for a damaged file)
                    a bug:                  traceback to train.log, one line, exit 1
                    diverged / interrupted: one line, exit 1
        sweep job   anything:               status and reason in summary.json, never raises,
                                            so one failing configuration cannot stop the others
        DDP rank > 0                        writes nothing: its error goes to stderr (the
                                            launcher's output) and it exits non-zero; the
                                            launcher stops the other ranks, and rank 0 records
                                            `interrupted` or `failed`, never `completed`
                                            (training ends with a barrier every rank must reach)

A sweep's outcome is read back from sweep_summary.json (sweep.py writes it). Reruns are
idempotent: a job finds its own folder completed and skips it, resumes a sound
interrupted or failed attempt from its last checkpoint, or moves an unsound one to
attempts/ and starts clean; a completed run of the same configuration elsewhere under
runs_root/experiment_name makes it `skipped` with `same_as`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

from dropsample import distributed, headline, loggers, sweep, training
from dropsample.config import validate
from dropsample.errors import UserError
from dropsample.runs import RunFolder, Summary
from dropsample.sample import sample_run
from dropsample.schema import Config, config_hash

log = logging.getLogger("dropsample")


def job(cfg: Config, run_dir: Path, *, resume: bool = False) -> Summary:
    """Train `cfg` into run_dir, then sample from it. Raises on bad input and bugs."""
    # DDP: each process trains on its own GPU (cuda:LOCAL_RANK), not on a sweep's GPU slot
    slot = (nullcontext(distributed.local_device(cfg.train.device, distributed.info())) if distributed.active()
            else sweep.device_slot(cfg))
    # keep_open: the samples go to the same experiment-logger runs as the training
    with slot as device, loggers.keep_open(run_dir):
        summary = training.train(cfg, run_dir, resume=resume, device=device)
        if not distributed.is_main():  # rank 0 samples and reports
            return summary
        return after_training(cfg, RunFolder(run_dir), summary, device)


def after_training(cfg: Config, run: RunFolder, summary: Summary, device: str | None = None) -> Summary:
    """A trained job's last stage: sample from the best checkpoint (or print the headline)."""
    if summary.status == "completed" and cfg.sample_after_train:
        # the experiment is not complete until its samples are written
        run.update_summary(status="running", stage="sampling")
        try:
            sample_run(run.path, samplers=cfg.samplers, gen=cfg.gen, device=device, judge=cfg.judge)
        except UserError as err:
            raise RuntimeError(f"sampling after training: {err}") from None
        summary = run.update_summary(status="completed", stage=None)
    elif summary.status == "completed":
        headline.print_run(run, summary)
    return summary


def plan_rerun(cfg: Config, run: RunFolder) -> str:
    """What to do with a job folder that may hold an earlier attempt: fresh, skip or resume."""
    if not run.has_started():
        return "fresh"
    digest = config_hash(cfg)
    try:
        summary = run.summary()
        same = summary.config_hash == digest
        if same and summary.status == "completed":
            return "skip"
        if same and run.load_checkpoint("last").state.get("config_hash") == digest:
            return "resume"
    except UserError:  # damaged or missing pieces: not sound
        pass
    where = run.archive_attempt()
    log.info("an earlier attempt in %s could not be resumed; moved it to %s", run.path, where)
    return "fresh"


def run_task(raw_cfg, run_dir: Path, *, sweep_job: bool, resume: bool = False) -> Summary | None:
    """The failure policy around `job` (see the module docstring)."""
    run = RunFolder(run_dir)
    if not distributed.is_main():
        return _run_other_rank(raw_cfg, run, sweep_job=sweep_job, resume=resume)
    try:
        cfg = validate(raw_cfg, run.launch_dir() if resume else None)  # a resumed run's paths: from its launch
        distributed.check(cfg.train.ddp, cfg.train.device, sweep=sweep_job)
        if sweep_job and not resume:
            done, resume = plan_sweep_job(cfg, run)
            if done is not None:
                return done
        summary = job(cfg, run.path, resume=resume)
    except UserError as err:
        if sweep_job:
            return sweep_failure(run, err)
        if not run.has_started():
            discard(run.path)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except Exception as exc:  # bugs, out of memory, ...: recorded, never silent
        summary = sweep_failure(run, exc)
        if sweep_job:
            return summary
        reason = summary.error
        print(f"error: {reason} (details in {run.log_path})", file=sys.stderr)
        raise SystemExit(1) from None
    if not sweep_job and summary.status != "completed":
        print(f"error: run {summary.status}: {summary.error} ({run.path})", file=sys.stderr)
        raise SystemExit(1)
    return summary


def _run_other_rank(raw_cfg, run: RunFolder, *, sweep_job: bool, resume: bool) -> Summary | None:
    """run_task on a DDP rank > 0: the same job, following rank 0's rerun decisions, writing
    nothing; a problem is one line (and a bug's traceback) on this process's stderr."""
    rank = distributed.info().rank
    try:
        cfg = validate(raw_cfg, run.launch_dir() if resume else None)
        distributed.check(cfg.train.ddp, cfg.train.device, sweep=sweep_job)
        if sweep_job and not resume:
            action = distributed.broadcast(None)
            if action == "skip" or (action != "resume" and distributed.broadcast(None)):
                return run.summary()
            resume = action == "resume"
        return job(cfg, run.path, resume=resume)
    except UserError as err:
        print(f"error (rank {rank}): {err}", file=sys.stderr)
        if sweep_job:
            return Summary(status="failed", error=f"bad input: {err}")
        raise SystemExit(err.exit_code) from None
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        print(f"error (rank {rank}): {reason}\n{traceback.format_exc()}", file=sys.stderr)
        if sweep_job:
            return Summary(status="failed", error=reason)
        raise SystemExit(1) from None


def plan_sweep_job(cfg: Config, run: RunFolder) -> tuple[Summary | None, bool]:
    """A sweep job's rerun decision: (its final summary, False) when it is skipped, else
    (None, whether it resumes from its own checkpoint)."""
    action = distributed.broadcast(plan_rerun(cfg, run))  # rank 0 decides; DDP ranks follow
    if action == "skip":
        log.info("skipping: this job already completed in %s", run.path)
        return run.summary(), False
    resume = action == "resume"
    done = None if resume else sweep.find_completed(cfg, config_hash(cfg), exclude=run.path)
    if done is not None and (RunFolder(done).summary().world_size or 1) != distributed.info().world_size:
        done = None  # trained on another number of processes: another global batch, another result
    if not resume:
        distributed.broadcast(done is not None)  # the DDP ranks skip with rank 0
    if done is not None:
        log.info("skipping: the same configuration already completed in %s", done)
        return run.update_summary(status="skipped", same_as=str(done), config_hash=config_hash(cfg)), False
    return None, resume


def sweep_failure(run: RunFolder, exc: Exception) -> Summary:
    """What an exception means for a sweep job: its folder says failed and why, and the sweep
    goes on (bad input: one line; anything else: the traceback goes to train.log).
    Call it from the `except` block that caught `exc`."""
    if isinstance(exc, UserError):
        log.error("bad input: %s", exc)
        return run.update_summary(status="failed", error=f"bad input: {exc}")
    reason = f"{type(exc).__name__}: {exc}"
    append_traceback(run, traceback.format_exc())
    log.error("job failed: %s (traceback in %s)", reason, run.log_path)
    return run.update_summary(status="failed", error=reason)


def append_traceback(run: RunFolder, text: str) -> None:
    """Tracebacks go to train.log only: the console gets one line."""
    run.path.mkdir(parents=True, exist_ok=True)
    with open(run.log_path, "a") as f:
        f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] traceback:\n{text}\n")


def discard(path: Path) -> None:
    """Remove a folder Hydra created for a job that never started (bad input)."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == Path(path).resolve():
            handler.close()
            logging.getLogger().removeHandler(handler)
    shutil.rmtree(path, ignore_errors=True)


def resume(run_dir: Path) -> Summary:
    """`dropsample train --resume RUN_DIR`: continue a stopped run under the same policy."""
    run = RunFolder(run_dir)
    try:
        raw = run.raw_config()
        run.config()  # damage shows before anything else
        if run.summary().status == "completed":
            raise UserError(f"{run_dir} already completed; nothing to resume")
        run.load_checkpoint("last", fix=f"it cannot resume from there: delete {run_dir} and train again, "
                                        "or sample and evaluate from checkpoints/best")
    except UserError as err:
        if distributed.is_main():  # DDP: every rank read the same files; rank 0 says it once
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    with run.logging_to_file() if distributed.is_main() else nullcontext():
        return run_task(raw, run.path, sweep_job=False, resume=True)
