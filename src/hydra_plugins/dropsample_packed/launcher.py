"""hydra/launcher=packed: Hydra's basic launcher, except that the jobs of a sweep that can
train together (dropsample.packed.pack_key: same model shape, data, batch size, max_iters...)
train in one process as one batched computation; the others run one after another as usual.

Each job still gets its own folder, .hydra/ files and train.log from Hydra's own job set-up
(hydra.core.utils.run_job, with a task that only records where the job goes); then
dropsample.packed.run_jobs trains them under task.py's sweep policy, so one failing or
diverging configuration marks only its own folder.

    dropsample train -m hydra/launcher=packed dropout.rate=0,0.1,0.2,0.3 seed=0,1

This module is imported by Hydra's plugin scan: it imports nothing heavy at module level.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, open_dict

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction

log = logging.getLogger(__name__)


def _where(task_cfg: DictConfig):
    """The task of the set-up pass: the job's config and folder, nothing run yet."""
    return task_cfg, Path(HydraConfig.get().runtime.output_dir)


class PackedLauncher(Launcher):
    def __init__(self, max_pack: Optional[int] = None) -> None:
        super().__init__()
        self.max_pack = max_pack
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dropsample.packed import run_jobs
        from dropsample.tune import value

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, packed where they fit")
        returns: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            returns.append(run_job(hydra_context=self.hydra_context, task_function=_where, config=sweep_config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                                   configure_logging=False))
        ready = [r for r in returns if r.status == JobStatus.COMPLETED]
        summaries = run_jobs([r.return_value for r in ready], max_pack=self.max_pack)
        for ret, summary in zip(ready, summaries):
            task_cfg, out = ret.return_value
            # what an adaptive sweeper (Optuna) optimises, as cli._hydra_task returns it
            ret.return_value = value(str(task_cfg.get("objective", "val_loss")), summary, out)
        return returns
