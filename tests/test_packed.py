"""Packed sweeps (packed.py, hydra/launcher=packed): K configurations trained as one batched
computation give each configuration what it would have got alone."""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, cli, compose, run_cli

BASE = [o for o in TINY if not o.startswith(("train.max_iters", "train.eval_interval", "train.eval_iters",
                                             "train.batch_size"))] + [
    "train.max_iters=4", "train.eval_interval=2", "train.eval_iters=2", "train.batch_size=4",
    "train.final_eval_tokens=512", "sample_after_train=false", "train.device=cpu", "train.log_interval=1",
]
# dropout off; every site, locked sites and all variants; a schedule that switches dropout off
VARIANTS = [
    ["dropout.rate=0", "seed=1"],
    ["dropout=everywhere", "dropout.rate=0.1", "dropout.locked=[embd,mlp_hidden]", "dropout.word=0.1",
     "dropout.drop_head=0.2", "dropout.drop_path=0.3", "seed=2", "train.lr=3e-3"],
    ["dropout.rate=0.3", "dropout.schedule.kind=early", "dropout.schedule.end_step=2", "seed=3",
     "train.grad_clip=0", "train.weight_decay=0"],
]


def configs(tmp_path, variants, extra=()):
    return [compose(BASE + list(extra) + v + [f"runs_root={tmp_path}"]) for v in variants]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_packed_runs_equal_separate_runs_with_dropout_off_and_on(tmp_path, monkeypatch):
    """Three configurations packed, interrupted after step 2 and resumed by a rerun, against each
    trained alone without a stop: the same losses, weights, AdamW state and dropout RNG state."""
    from dropsample import training
    from dropsample.packed import run_jobs

    cfgs = configs(tmp_path, VARIANTS)
    alone = [run_jobs([(c, tmp_path / f"alone{i}")])[0] for i, c in enumerate(cfgs)]
    real = training.evaluate

    def evaluate(tr, step, estimates=None):
        real(tr, step, estimates)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate", evaluate)
    jobs = [(c, tmp_path / f"packed{i}") for i, c in enumerate(cfgs)]
    assert [s.status for s in run_jobs(jobs)] == ["interrupted"] * 3
    monkeypatch.setattr(training, "evaluate", real)
    packed = run_jobs(jobs)
    for i in range(3):
        assert "resuming" in (tmp_path / f"packed{i}" / "train.log").read_text()
    assert [s.status for s in packed] == [s.status for s in alone] == ["completed"] * 3
    assert "training 3 configurations packed" in (tmp_path / "packed0" / "train.log").read_text()
    assert "packed" not in (tmp_path / "alone0" / "train.log").read_text()
    for i in range(3):
        p_rows, a_rows = metrics(tmp_path / f"packed{i}"), metrics(tmp_path / f"alone{i}")
        assert [r["step"] for r in p_rows] == [r["step"] for r in a_rows] == [0, 2, 4]
        for p, a in zip(p_rows, a_rows):
            for key in ("train_loss", "val_loss", "lr", "dropout_factor"):
                assert p[key] == pytest.approx(a[key], abs=2e-5), (i, p["step"], key)
            assert p["dropout"] == a["dropout"]
        # the batch-loss curve: every step once, though the pack was interrupted after step 2
        p_curve = [json.loads(x) for x in (tmp_path / f"packed{i}" / "train_curve.jsonl").read_text().splitlines()]
        a_curve = [json.loads(x) for x in (tmp_path / f"alone{i}" / "train_curve.jsonl").read_text().splitlines()]
        assert [r["step"] for r in p_curve] == [r["step"] for r in a_curve] == [1, 2, 3, 4]
        assert [r["loss"] for r in p_curve] == pytest.approx([r["loss"] for r in a_curve], abs=2e-5)
        for which in ("best", "last"):
            folder = tmp_path / f"packed{i}" / "checkpoints" / which
            for name in ("model.safetensors", "config.json", "tokenizer.json", "state.safetensors", "state.json"):
                assert (folder / name).is_file(), (i, which, name)
        pw = load_file(str(tmp_path / f"packed{i}/checkpoints/last/model.safetensors"))
        aw = load_file(str(tmp_path / f"alone{i}/checkpoints/last/model.safetensors"))
        assert pw.keys() == aw.keys()
        for key in pw:
            torch.testing.assert_close(pw[key], aw[key], atol=2e-5, rtol=1e-4)
        ps = load_file(str(tmp_path / f"packed{i}/checkpoints/last/state.safetensors"))
        as_ = load_file(str(tmp_path / f"alone{i}/checkpoints/last/state.safetensors"))
        assert ps.keys() == as_.keys()
        for key in ps:
            if key.startswith("optimizer."):
                torch.testing.assert_close(ps[key], as_[key], atol=1e-5, rtol=1e-3)
        # the dropout generator drew exactly what the lone run drew: same RNG state afterwards
        assert torch.equal(ps["rng.torch"], as_["rng.torch"]) and torch.equal(ps["rng.data"], as_["rng.data"])
        p_sum = json.loads((tmp_path / f"packed{i}/summary.json").read_text())
        a_sum = json.loads((tmp_path / f"alone{i}/summary.json").read_text())
        assert p_sum["val_loss"] == pytest.approx(a_sum["val_loss"], abs=2e-5)
        assert p_sum["best_step"] == a_sum["best_step"] and p_sum["config_hash"] == a_sum["config_hash"]


def test_each_configuration_draws_its_own_masks(tmp_path):
    """Different seeds: independent masks; same seed and rates (another lr): the same masks, as alone."""
    from dropsample.packed import Member, Pack, _start
    from dropsample.runs import RunFolder

    cfgs = configs(tmp_path, [["dropout=everywhere", "dropout.rate=0.5", "seed=1"],
                              ["dropout=everywhere", "dropout.rate=0.5", "seed=2"],
                              ["dropout=everywhere", "dropout.rate=0.5", "seed=1", "train.lr=1e-2"]])
    members = []
    for i, cfg in enumerate(cfgs):
        m = Member(cfg=cfg, run=RunFolder(tmp_path / f"m{i}"))
        m.run.path.mkdir()
        _start(m, None)
        members.append(m)
    pack = Pack(members)
    masks = pack.masks([m.tr.base_rates for m in members], 4, cfgs[0].model.block_size)
    assert len(masks) == 1 + 2 * 4 + 1  # embd; attn, resid_attn, mlp_hidden, resid_mlp per layer; head
    for mask in masks:
        kept = mask != 0
        assert not torch.equal(kept[0], kept[1])  # seeds 1 and 2
        assert torch.equal(mask[0], mask[2])  # seed 1 twice
        assert kept[1].float().mean().item() == pytest.approx(0.5, abs=0.1)
        assert set(mask.unique().tolist()) == {0.0, 2.0}
    for m in members:
        m.tr.loggers.close()
        m.stack.close()


def test_a_diverging_or_failing_configuration_fails_alone(tmp_path, monkeypatch):
    from dropsample import packed, training
    from dropsample.packed import run_jobs

    cfgs = configs(tmp_path, [["seed=1"], ["seed=2", "train.lr=1e6", "train.grad_clip=0", "train.warmup_iters=0"],
                              ["seed=3"]])
    real = training.final_evaluation

    def final_evaluation(tr):
        if tr.run.path.name == "job2":
            raise RuntimeError("forced failure")
        return real(tr)

    monkeypatch.setattr(training, "final_evaluation", final_evaluation)
    results = run_jobs([(c, tmp_path / f"job{i}") for i, c in enumerate(cfgs)])
    assert [r.status for r in results] == ["completed", "diverged", "failed"]
    assert "RuntimeError: forced failure" in results[2].error
    assert "traceback" in (tmp_path / "job2" / "train.log").read_text()
    assert metrics(tmp_path / "job0")[-1]["step"] == 4
    assert (tmp_path / "job0" / "checkpoints" / "best" / "model.safetensors").is_file()
    assert math.isfinite(results[0].val_loss)
    assert "diverged" in (tmp_path / "job1" / "train.log").read_text()
    assert "diverged" not in (tmp_path / "job0" / "train.log").read_text()
    assert packed._current is None


def test_launcher_packs_same_shapes_and_runs_other_shapes_alone(tmp_path):
    result = cli("train", "-m", "hydra/launcher=packed", *[o for o in BASE if o != "sample_after_train=false"],
                 "train.max_iters=2", "model.n_layer=1,2", "seed=1,2", "samplers=[greedy]", "experiment_name=packed", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "runs" / "packed").glob("*_sweep")
    jobs = sorted(sweep.glob("job*"))
    assert len(jobs) == 4
    logs = [(job / "train.log").read_text() for job in jobs]
    # n_layer=1 with seed 1 and 2 pack together, so do n_layer=2's; no log holds another pack's lines
    assert "training 2 configurations packed: job0, job1" in logs[0] and "job2, job3" not in logs[0]
    assert "training 2 configurations packed: job2, job3" in logs[3] and "job0" not in logs[3]
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["latest_samples"]
    assert json.loads((sweep / "sweep_summary.json").read_text())["failed"] == 0
    status = run_cli("status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0 and "4 completed (of 4 jobs)" in status.stdout
    report = run_cli("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with open(sweep / "results.csv") as f:  # long format: two configurations, each with its two seeds
        rows = list(csv.DictReader(f))
    assert sorted({(r["model.n_layer"], r["seeds"]) for r in rows}) == [("1", "2"), ("2", "2")]
