"""Adaptive sweeps (hydra/sweeper=optuna): a stored study survives diverging trials and
continues on a rerun; the objective is read from the run folder; bad input fails before
any trial."""

import json
import subprocess
import sys

import pytest

from conftest import cli
from dropsample import tune
from dropsample.cli import preflight
from dropsample.errors import ConfigError, UserError
from dropsample.runs import RunFolder, write_json_atomic

optuna = pytest.importorskip("optuna", reason='needs pip install "dropsample[optuna]"')

# A handful of steps per trial; lr=1e6 makes the loss NaN at step 1 (the trial diverges).
# Optuna's random sampler with seed 2 draws (lr, rate) = (1e-3, 0), (1e-3, 0.1), (1e-3, 0) again
# and (1e6, 0.1), then (1e-3, 0) in the rerun: a repeat, skipped as the same configuration,
# and a diverging trial. (Not the grid sampler: hydra-optuna-sweeper 1.3 stops the whole
# sweep when the grid's last trial fails.)
TRIAL = ["model=tiny", "train.max_iters=4", "train.eval_interval=2", "train.eval_iters=1", "train.batch_size=8",
         "train.warmup_iters=0", "sample_after_train=false", "experiment_name=tuning", "hydra.sweep.dir=runs/tuning/study",
         "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=2",
         "hydra.sweeper.n_jobs=1", "train.lr=choice(1e-3,1e6)", "dropout.rate=choice(0.0,0.1)"]


def trials(sweep_dir):
    study = optuna.load_study(study_name="tuning", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return study.trials


def check_trials(cwd, sweep, numbers):
    done = trials(sweep)
    assert [t.number for t in done] == numbers
    for t in done:
        run = RunFolder(sweep / f"job{t.number}")  # job<N> holds trial N
        assert {f"{k}={v}" for k, v in t.params.items()} <= set(run.overrides())
        summary = run.summary()
        if t.params["train.lr"] > 1:
            assert (t.state.name, t.value, summary.status) == ("FAIL", None, "diverged")
            continue
        assert t.state.name == "COMPLETE"
        if summary.status == "skipped":  # the same configuration completed in an earlier trial's folder
            summary = RunFolder(cwd / summary.same_as).summary()  # same_as: relative to where it ran
        assert (t.value, summary.status) == (summary.val_loss, "completed")  # exactly the run's number
    return done


def test_study_survives_diverging_trials_continues_on_rerun_and_is_reported(tmp_path):
    first = cli("train", "-m", *TRIAL, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-2000:]  # like any sweep whose jobs failed
    assert "1 of 4 jobs failed" in first.stderr and "Traceback" not in first.stderr
    sweep = tmp_path / "runs" / "tuning" / "study"
    assert (sweep / "optuna.db").is_file()
    done = check_trials(tmp_path, sweep, [0, 1, 2, 3])
    assert [t.state.name for t in done].count("FAIL") == 1, "seed 2 should draw one diverging trial"
    assert RunFolder(sweep / "job2").summary().status == "skipped", "seed 2 should repeat trial 0's configuration"
    before = (sweep / "job0" / "summary.json").read_text()

    # the same storage and study name: the rerun adds a trial to the same study, in a new folder
    again = cli("train", "-m", *TRIAL, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert again.returncode == 1 and "1 of 5 jobs failed" in again.stderr, again.stderr[-2000:]
    check_trials(tmp_path, sweep, [0, 1, 2, 3, 4])
    assert RunFolder(sweep / "job4").is_run()
    assert (sweep / "job0" / "summary.json").read_text() == before

    from dropsample.report.command import report_command

    report_command([sweep])
    text = (sweep / "report.md").read_text()
    best = min((t for t in trials(sweep) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"**Best: trial {best.number}**, val_loss = {best.value:.6g}" in text
    assert "5 trials (" in text and " failed)" in text
    assert (sweep / "plots" / "study_tuning_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- before any trial ---------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("dropout.rate=interval(0.0,1.0)", "dropout.rate: got 1.0; a dropout rate must be in [0, 1)"),
    ("dropout.sites=choice([attn],[ffn])", "dropout.sites: unknown site 'ffn'"),
    ("train.batch_size=range(0,4)", "train.batch_size: got 0; must be a positive integer"),
    ("objective=val_los", "objective: unknown objective 'val_los'; use val_loss"),
    ("objective=top_k_40.distinct_4", "objective: 'top_k_40.distinct_4' names sampler 'top_k_40', which is not "
                                      "in samplers (greedy, top_p_0.9)"),
])
def test_study_checks_its_base_config_choices_and_end_points(override, message):
    args = ["model=tiny", "samplers=[greedy,top_p_0.9]", "hydra/sweeper=optuna", "dropout.rate=interval(0.0,0.3)",
            override]
    with pytest.raises(UserError) as err:
        preflight(args, multirun=True)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tune_dropout_experiment_composes_into_a_stored_study():
    checked, folder, pins = preflight(["experiment=tune_dropout", "model=tiny"], multirun=True)
    assert checked == 1 + 2 + 6 + 4  # the base config, the rate's two ends, six site sets, four schedules
    assert folder == "runs/tune_dropout/study"
    assert pins[0] == f"hydra.sweeper._target_={tune.SWEEPER}"
    assert pins[1].endswith("runs/tune_dropout/study/optuna.db'")
    assert pins[2] == "hydra.sweeper.study_name='tune_dropout'"
    # a basic sweep gets no Optuna pins
    assert preflight(["model=tiny", "dropout.rate=0,0.1"], multirun=True).pins == []


@pytest.mark.parametrize("args", [["hydra/sweeper=optuna", "dropout.rate=interval(0,0.3)"], ["experiment=tune_dropout"]])
def test_missing_optuna_plugin_fails_in_one_line(tmp_path, args):
    code = ("import sys; sys.modules['hydra_plugins.hydra_optuna_sweeper'] = None; "
            f"sys.argv = ['dropsample', 'train', '-m', 'model=tiny', *{args!r}]; "
            "from dropsample.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: hydra/sweeper=optuna needs the Hydra Optuna sweeper; ' \
                                    'pip install "dropsample[optuna]"'
    assert not (tmp_path / "runs").exists()


# -- the objective, read from a run folder ---------------------------------------------------


def finished_run(path, **fields):
    run = RunFolder(path)
    run.update_summary(**fields)
    return run


def test_objective_reads_the_summary_and_the_sampler_metrics(tmp_path):
    run = finished_run(tmp_path / "a", status="completed", val_loss=1.25, gap=0.125, latest_samples="s")
    run.samples("s").mkdir(parents=True)
    write_json_atomic(run.samples("s") / "metrics.json", {"samplers": {"top_p_0.9": {"distinct_4": 0.75}}})
    summary = run.summary()
    assert tune.value("val_loss", summary, run.path) == 1.25
    assert tune.value("gap", summary, run.path) == 0.125
    assert tune.value("top_p_0.9.distinct_4", summary, run.path) == 0.75  # the sampler name holds a dot
    # a job skipped because the same configuration completed elsewhere returns that run's number
    skipped = finished_run(tmp_path / "b", status="skipped", same_as=str(run.path))
    assert tune.value("gap", skipped.summary(), skipped.path) == 0.125


def test_objective_of_a_failed_run_or_a_missing_number_is_none(tmp_path, caplog):
    diverged = finished_run(tmp_path / "d", status="diverged", val_loss=3.0)
    assert tune.value("val_loss", diverged.summary(), diverged.path) is None
    assert "the run diverged" in caplog.text
    done = finished_run(tmp_path / "c", status="completed", val_loss=3.0)
    assert tune.value("val_bpb", done.summary(), done.path) is None  # a run from before bits per byte
    assert "has no number val_bpb" in caplog.text
    (done.path / "summary.json").write_text("{broken")
    assert tune.value("val_loss", None, done.path) is None


def test_objective_aliases_and_summary_fields_are_accepted(tmp_path):
    from conftest import compose

    for name in ("val_loss", "val_ppl", "val_bpb", "final_val_loss", "gap", "greedy.distinct_4", "greedy.gen_ppl"):
        tune.check(compose(["model=tiny", "samplers=[greedy]", f"objective={name}"]))
    with pytest.raises(ConfigError, match="sample_after_train=false"):
        tune.check(compose(["model=tiny", "samplers=[greedy]", "objective=greedy.distinct_4",
                            "sample_after_train=false"]))
    assert json.loads(json.dumps(tune.sample_metric_names()))  # plain names, from metrics.py itself
