import math

import pytest
import torch

from conftest import TINY, compose, make_run_dir
from dropsample import checkpoint, training
from dropsample.model import GPT, GPTConfig
from dropsample.runs import RunFolder
from dropsample.schema import TrainConfig

SHORT = [o for o in TINY if not o.startswith(("train.max_iters", "train.eval_interval"))] + [
    "train.max_iters=40", "train.eval_interval=10", "sample_after_train=false",
]


def test_learning_rate_schedule_by_hand():
    t = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=4, lr_decay_iters=14, max_iters=20)
    assert training.lr_at(0, t) == pytest.approx(1 / 5)  # linear warm-up: (step + 1) / (warmup + 1)
    assert training.lr_at(3, t) == pytest.approx(4 / 5)
    assert training.lr_at(4, t) == pytest.approx(1.0)  # cosine starts at the peak
    assert training.lr_at(9, t) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)
    assert training.lr_at(14, t) == pytest.approx(0.1)
    assert training.lr_at(19, t) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices_and_embeddings():
    cfg = compose(["model=tiny"])
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    opt = training.make_optimizer(model, cfg.train, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == cfg.train.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()


def test_nan_loss_stops_as_diverged_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = compose(SHORT)
    run_dir = make_run_dir(tmp_path, cfg)
    real, calls = GPT.forward, [0]

    def poisoned(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls[0] += 1
            if calls[0] > 25:  # training step 25 (0-based) goes NaN
                return out[0], out[1] * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    summary = training.train(cfg, run_dir)
    assert summary.status == "diverged"
    assert summary.error == "loss became nan at step 25"
    last = checkpoint.load(run_dir / "checkpoints" / "last")
    assert last.state["step"] == 20
    assert all(torch.isfinite(w).all() for w in last.load_model().state_dict().values())
    assert [r["step"] for r in RunFolder(run_dir).metrics()] == [0, 10, 20]


def test_dropout_rates_in_effect_are_logged_per_evaluation(tmp_path):
    cfg = compose(SHORT + ["dropout.schedule.kind=early", "dropout.schedule.end=0.5", "dropout.rate=0.2",
                           "dropout.word=0.1"])
    run_dir = make_run_dir(tmp_path, cfg)
    assert training.train(cfg, run_dir).status == "completed"
    rows = RunFolder(run_dir).metrics()
    assert [r["dropout_factor"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0]  # steps 0..40, off from step 20
    assert rows[1]["dropout"]["attn"] == 0.2 and rows[1]["dropout"]["word"] == 0.1
    assert rows[2]["dropout"]["attn"] == 0.0 and rows[2]["dropout"]["word"] == 0.0


def test_val_plateau_rows_describe_one_moment(tmp_path):
    """Rates and factor in a metrics row are those in effect from that step on (after the plateau update)."""
    cfg = compose(SHORT + ["dropout.schedule.kind=val_plateau", "dropout.schedule.plateau_threshold=10",
                           "dropout.rate=0.2", "dropout.schedule.plateau_factor=0.5"])
    run_dir = make_run_dir(tmp_path, cfg)
    assert training.train(cfg, run_dir).status == "completed"
    rows = RunFolder(run_dir).metrics()
    # val never falls by 10 nats, so every evaluation after the first halves the factor
    assert [r["dropout_factor"] for r in rows] == [1.0, 0.5, 0.25, 0.125, 0.0625]
    for r in rows:
        assert r["dropout"]["attn"] == pytest.approx(0.2 * r["dropout_factor"])
        assert r["dropout"]["embd"] == pytest.approx(0.2 * r["dropout_factor"])
