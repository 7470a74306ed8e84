"""One job of an experiment: train a configuration, then sample from its best checkpoint.

Single runs report problems and exit non-zero; inside a sweep (Hydra multirun) a job
never raises, so one failing configuration cannot stop the others: it records its
status and reason in its summary.json, which the sweep summary collects.
"""

from __future__ import annotations

import logging
import shutil
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from dropsample.errors import UserError
from dropsample.runs import RunFolder, config_hash

log = logging.getLogger("dropsample")


def _looks_like_run(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / "checkpoints").exists()


def discard_folder(path: Path) -> None:
    """Remove a folder that Hydra created for a job that never started (bad input)."""
    if path.is_dir() and not _looks_like_run(path):
        logging.shutdown()  # release train.log before removing it
        shutil.rmtree(path, ignore_errors=True)


def run_job(cfg: DictConfig, run_dir: Path, *, multirun: bool, resume: bool = False) -> dict:
    from dropsample import sweep, training

    run = RunFolder(run_dir)
    try:
        if multirun and not resume:
            done = sweep.find_completed(cfg, config_hash(cfg), exclude=run_dir)
            if done is not None:
                log.info("skipping: the same configuration already completed in %s", done)
                return run.update_summary(status="skipped", same_as=str(done), config_hash=config_hash(cfg))
        with sweep.device_slot(cfg) as device:
            summary = training.train(cfg, run_dir, resume=resume, device=device)
            if summary["status"] == "completed" and cfg.sample_after_train:
                from dropsample.sample import sample_run

                # the experiment is not complete until its samples are written
                run.update_summary(status="running", stage="sampling")
                try:
                    sample_run(run_dir, samplers=cfg.samplers, gen=cfg.gen, device=device)
                except UserError as err:
                    raise RuntimeError(f"sampling after training: {err}") from None
                summary = run.update_summary(status="completed", stage=None)
    except UserError as err:
        if multirun:
            log.error("configuration error: %s", err)
            return run.update_summary(status="failed", error=f"bad input: {err}")
        discard_folder(run_dir)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except Exception as exc:  # bugs, out of memory, ...: recorded, never silent
        reason = f"{type(exc).__name__}: {exc}"
        log.error("job failed: %s\n%s", reason, traceback.format_exc())
        summary = run.update_summary(status="failed", error=reason)
        if not multirun:
            print(f"error: {reason} (details in {run_dir / 'train.log'})", file=sys.stderr)
            raise SystemExit(1) from None
        return summary
    if not multirun and summary["status"] != "completed":
        print(f"error: run {summary['status']}: {summary.get('error')} ({run_dir})", file=sys.stderr)
        raise SystemExit(1)
    return summary


def log_to_run_folder(run_dir: Path) -> None:
    """Outside Hydra (resume, sample): log to the console and append to RUN_DIR/train.log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)


def resume_run(run_dir: Path) -> dict:
    from dropsample import checkpoint

    run = RunFolder(run_dir)
    try:
        cfg = run.config()
        if checkpoint.resolve(run.checkpoint("last")) is None:
            raise UserError(f"{run_dir} has no checkpoints/last to resume from; start a new run instead")
        if run.summary().get("status") == "completed":
            raise UserError(f"{run_dir} already completed; nothing to resume")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    log_to_run_folder(run_dir)
    return run_job(cfg, run_dir, multirun=False, resume=True)
