"""An interrupted run, resumed, ends exactly where the uninterrupted run ends (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, cli, compose, make_run_dir
from dropsample import training
from dropsample.runs import RunFolder

SHORT = [o for o in TINY if not o.startswith(("train.max_iters", "train.eval_interval"))] + [
    "train.max_iters=60", "train.eval_interval=10", "train.log_interval=7", "sample_after_train=false",
]


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows):
    drop = {"tokens_per_sec", "elapsed_sec"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def interrupt_after(monkeypatch, batches: int) -> None:
    """Make the next in-process training raise KeyboardInterrupt on its N-th batch (eval batches count)."""
    real_next, calls = training.Batches.next, [0]

    def interrupting(self):
        calls[0] += 1
        if calls[0] == batches:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(training.Batches, "next", interrupting)


@pytest.mark.parametrize("schedule", ["constant", "val_plateau"])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, monkeypatch, schedule):
    overrides = SHORT + [f"dropout.schedule.kind={schedule}", "dropout.schedule.plateau_threshold=0.5"]
    cfg = compose(overrides)
    full_dir = make_run_dir(tmp_path, cfg, "full")
    full = training.train(cfg, full_dir)
    assert full.status == "completed"

    cut_dir = make_run_dir(tmp_path, cfg, "cut")
    with monkeypatch.context() as m:
        interrupt_after(m, 45)  # mid-way: 60 steps + 4 batches per evaluation
        cut = training.train(cfg, cut_dir)
    assert cut.status == "interrupted"
    assert 0 < len(metrics(cut_dir)) < len(metrics(full_dir))
    resumed = training.train(cfg, cut_dir, resume=True)
    assert resumed.status == "completed", resumed.error
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "best_step", "tokens_seen"):
        assert getattr(resumed, key) == getattr(full, key), key
    assert comparable(metrics(cut_dir)) == comparable(metrics(full_dir))
    # the batch-loss curve: the lost process's points after its checkpoint are cut, the resumed
    # process's equal the uninterrupted run's
    curve = lambda d: [(r["step"], r["loss"], r["lr"]) for r in RunFolder(d).train_curve()]  # noqa: E731
    t = cfg.train
    assert [s for s, _, _ in curve(full_dir)] == sorted({*range(t.log_interval, t.max_iters + 1, t.log_interval),
                                                          t.max_iters})
    assert curve(cut_dir) == curve(full_dir)
    if schedule == "val_plateau":
        factors = [r["dropout_factor"] for r in metrics(full_dir)]
        assert min(factors) < 1.0, "the plateau rule must have lowered the rate for this test to mean something"


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    overrides = [o for o in SHORT if not o.startswith("train.max_iters")] + ["train.max_iters=400", "name=r"]
    full = cli("train", *overrides, "experiment_name=full", cwd=tmp_path, check=True)
    assert full.returncode == 0
    (full_dir,) = (tmp_path / "runs" / "full").iterdir()

    proc = subprocess.Popen([sys.executable, "-m", "dropsample", "train", *overrides, "experiment_name=killed"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs" / "killed").glob("*_r/metrics.jsonl")) if (tmp_path / "runs" / "killed").exists() else []
        if found and len(found[0].read_text().splitlines()) >= 4:
            os.kill(proc.pid, signal.SIGKILL)
            killed_dir = found[0].parent
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_dir is not None, "the run finished before it could be killed"
    assert RunFolder(killed_dir).summary().status == "running", "a killed run never claims completion"
    resumed = cli("train", "--resume", str(killed_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = RunFolder(full_dir).summary(), RunFolder(killed_dir).summary()
    assert b.status == "completed"
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "best_step"):
        assert getattr(a, key) == getattr(b, key), key
    assert comparable(metrics(killed_dir)) == comparable(metrics(full_dir))


def test_resume_refuses_what_it_cannot_do(tmp_path):
    result = cli("train", "--resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "not a dropsample run folder" in result.stderr
