"""Sweeps (Hydra multiruns): skipping finished configurations, one GPU per job, and
the sweep-level summary that lists what completed, what failed and why.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dropsample.errors import UserError
from dropsample.runs import FINISHED, RunFolder, find_runs, read_json, write_json_atomic
from dropsample.schema import Config

log = logging.getLogger("dropsample")
SWEEP_SUMMARY = "sweep_summary.json"


def find_completed(cfg: Config, digest: str, exclude: Path | None = None) -> Path | None:
    """A completed run of the same configuration anywhere under runs_root/experiment_name."""
    root = Path(cfg.runs_root) / cfg.experiment_name
    if not root.is_dir():
        return None
    for run_dir in find_runs([root]):
        if exclude is not None and run_dir.resolve() == Path(exclude).resolve():
            continue
        try:
            summary = RunFolder(run_dir).summary()
        except UserError:  # a damaged summary elsewhere is no reason to stop this job
            continue
        if summary.config_hash == digest and summary.status == "completed":
            return run_dir
    return None


@contextmanager
def device_slot(cfg: Config):
    """Yield the device for this job. With several GPUs and train.device=auto, hold an
    exclusive slot on one GPU (file locks under runs_root/.gpu-slots) so concurrent sweep
    jobs never share a GPU beyond `train.jobs_per_gpu`."""
    import torch

    n_gpus = torch.cuda.device_count() if cfg.train.device == "auto" else 0
    if n_gpus <= 1:
        yield None
        return
    with gpu_slot(Path(cfg.runs_root) / ".gpu-slots", n_gpus, cfg.train.jobs_per_gpu) as gpu:
        torch.cuda.set_device(gpu)
        yield f"cuda:{gpu}"


@contextmanager
def gpu_slot(lock_dir: Path, n_gpus: int, per_gpu: int, poll_seconds: float = 2.0):
    """Block until one of n_gpus * per_gpu slots is free; yield its GPU index."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        # fill GPUs breadth-first: slot 0 of every GPU before slot 1 of any
        for slot in range(per_gpu):
            for gpu in range(n_gpus):
                handle = open(lock_dir / f"gpu{gpu}-slot{slot}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                try:
                    handle.write(str(os.getpid()))
                    handle.flush()
                    yield gpu
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
        time.sleep(poll_seconds)


def expand_jobs(sweeper_params, overrides: list[str]) -> list[list[str]]:
    """Each job's override list, as Hydra's basic sweeper launches them: sweeps written in
    config (hydra.sweeper.params) first, then the command line's overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.to_container(sweeper_params) if sweeper_params else {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(lines)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def expected_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the sweep launches, from the multirun.yaml Hydra writes at its start."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        hydra_cfg = OmegaConf.load(path).hydra
        return len(expand_jobs(hydra_cfg.sweeper.get("params"), hydra_cfg.overrides.task))
    except Exception:  # damaged, or an override this Hydra cannot parse: show what exists
        return None


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """One row per job folder; a job whose summary.json is damaged shows as `damaged`."""
    rows = []
    for run_dir in find_runs([sweep_dir]):
        run = RunFolder(run_dir)
        row = {"run": str(run_dir), "overrides": " ".join(run.overrides())}
        try:
            summary = run.summary()
            row.update(status=summary.status or "not started", error=summary.error,
                       best_val_ppl=summary.best_val_ppl, same_as=summary.same_as)
        except UserError as err:
            row.update(status="damaged", error=str(err), best_val_ppl=None, same_as=None)
        rows.append(row)
    return rows


def read_sweep_summary(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / SWEEP_SUMMARY
    if not path.is_file():
        return None
    return read_json(path, "delete it; rerunning the sweep writes it again")


def varying_overrides(rows: list[dict]) -> list[str]:
    """Each job's overrides minus those every job shares: what the sweep varies."""
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    return [" ".join(o for o in r["overrides"].split() if o not in common) for r in rows]


def status_table(rows: list[dict], title: str, expected: int | None = None):
    from rich.markup import escape
    from rich.table import Table

    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    if expected is not None and expected > len(rows):
        counts["not started"] = counts.get("not started", 0) + expected - len(rows)
    caption = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if expected is not None:
        caption += f" (of {expected} jobs)"
    table = Table(title=title, caption=caption)
    for column in ("job", "swept values", "status", "best val ppl", "note"):
        table.add_column(column)
    for row, varying in zip(rows, varying_overrides(rows)):
        ppl = f"{row['best_val_ppl']:.3f}" if row.get("best_val_ppl") else ""
        note = row.get("error") or (f"same as {row['same_as']}" if row.get("same_as") else "")
        table.add_row(Path(row["run"]).name, escape(varying), row["status"], ppl, escape(note or ""))
    return table


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, write sweep_summary.json and print the table.
    The CLI reads the file back for its exit code."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = sweep_rows(sweep_dir)
        failed = [r for r in rows if r["status"] not in FINISHED]
        write_json_atomic(sweep_dir / SWEEP_SUMMARY, {"jobs": rows, "failed": len(failed), "total": len(rows)})
        from rich.console import Console

        Console(stderr=True).print(status_table(rows, f"sweep {sweep_dir}"))
        if failed:
            log.warning("%d of %d jobs did not complete; see %s", len(failed), len(rows), sweep_dir / SWEEP_SUMMARY)
