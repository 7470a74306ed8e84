"""hydra/sweeper=optuna as dropsample runs it: the Hydra Optuna sweeper plugin, with job
folders numbered by trial.

The plugin numbers a launch's jobs from 0, so a rerun that continues a stored study would
put trial 4 into job0/, over trial 0's run. This subclass starts the numbering at the
study's trial count, so job<N>/ holds trial N across reruns (one process adding trials at a
time, as a sweep run does). It also creates the sweep folder before the study opens its
SQLite file there. dropsample's CLI selects it (dropsample.tune.study_overrides); everything
else (sampler, direction, n_trials, n_jobs, params) is the plugin's own configuration.

Without the `optuna` extra this module defines nothing, so Hydra's plugin scan stays quiet.
"""

from __future__ import annotations

from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _PluginSweeper
except ImportError:  # the optuna extra is not installed
    _PluginSweeper = None


def trial_count(storage, study_name: str | None) -> int:
    """Trials already in the stored study (0 for a new one or an in-memory study)."""
    import logging

    import optuna

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the storage's schema check is not news
    if storage is None or study_name is None:
        return 0
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage=storage)]
    if study_name not in names:
        return 0
    return len(optuna.load_study(study_name=study_name, storage=storage).trials)


if _PluginSweeper is not None:

    class OptunaSweeper(_PluginSweeper):
        def setup(self, *, hydra_context, task_function, config) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            impl = self.sweeper
            impl.job_idx = trial_count(impl.storage, impl.study_name)
