"""One run on two processes (DDP, gloo on CPU) against one process with the same global batch,
the run folder rank 0 alone writes, a bit-exact resume, per-rank dropout masks, a failing rank,
and the launch checks (distributed.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, compose, make_run_dir
from dropsample import distributed, training
from dropsample.distributed import Launch
from dropsample.errors import UserError
from dropsample.runs import RunFolder

# 2 ranks x batch 4 = one process with batch 8; dropout off so the two must agree
COMMON = [o for o in TINY if not o.startswith(("train.batch_size", "train.max_iters", "train.eval_interval"))] + [
    "train.max_iters=20", "train.eval_interval=10", "train.final_eval_tokens=4000", "dropout=none",
]
WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python ARGS` with one torch thread per process (two ranks share the test machine's cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=2 ARGS` on a free port."""
    return python("-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                  f"--master_port={free_port()}", *args, cwd=cwd)


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_cli_run(tmp_path_factory):
    """`torchrun --nproc_per_node=2 -m dropsample train ...` with batch 4 per rank, sampling included."""
    cwd = tmp_path_factory.mktemp("ddp_cli")
    result = torchrun("-m", "dropsample", "train", *COMMON, "train.batch_size=4", "experiment_name=ddp",
                      "samplers=[greedy]", "gen.num_samples=2", cwd=cwd)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (cwd / "runs" / "ddp").iterdir()
    return run_dir, result


def test_two_ranks_equal_one_process_with_the_same_global_batch(ddp_cli_run, tmp_path):
    run_dir, _ = ddp_cli_run
    cfg = compose(COMMON + ["train.batch_size=8", "sample_after_train=false"])
    single_dir = make_run_dir(tmp_path, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank has
    try:
        single = training.train(cfg, single_dir)
    finally:
        torch.set_num_threads(threads)
    ddp, one = rows(run_dir), rows(single_dir)
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [0, 10, 20]
    for a, b in zip(ddp, one):
        assert a["tokens"] == b["tokens"]  # global tokens: 2 ranks x 4 x 32 per step
        for key in ("train_loss", "val_loss", "train_loss_se", "val_loss_se", "train_bpb", "val_bpb"):
            # float32 sums in another order (two means of 4 rows vs one of 8): equal to ~1e-7
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert ddp[-1]["train_loss"] < ddp[0]["train_loss"] - 0.1, "training must have moved the weights"
    summary = RunFolder(run_dir).summary()
    assert (summary.world_size, summary.global_batch) == (2, 8)
    assert (single.world_size, single.global_batch) == (1, 8)
    # the whole-split evaluation: each rank scored half of the windows, the sums were all-reduced
    for key in ("val_loss", "val_loss_se", "val_bpb", "val_bpb_se", "train_loss", "gap_se"):
        assert getattr(summary, key) == pytest.approx(getattr(single, key), rel=1e-5), key
    assert summary.evaluation["splits"]["val"]["windows"] == single.evaluation["splits"]["val"]["windows"]
    from safetensors.torch import load_file

    w_ddp = load_file(run_dir / "checkpoints" / "last" / "model.safetensors")
    w_one = load_file(single_dir / "checkpoints" / "last" / "model.safetensors")
    for name in w_one:
        torch.testing.assert_close(w_ddp[name], w_one[name], rtol=1e-4, atol=1e-5)


def test_only_rank_zero_writes_the_run_folder(ddp_cli_run):
    run_dir, result = ddp_cli_run
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name], "both ranks used one folder"
    steps = [r["step"] for r in rows(run_dir)]
    assert steps == sorted(set(steps)), "a metrics row written twice"
    summary = RunFolder(run_dir).summary()
    assert summary.status == "completed" and summary.latest_samples is not None
    assert len(list((run_dir / "samples").iterdir())) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    log = (run_dir / "train.log").read_text().splitlines()
    evals = [line for line in log if "eval step" in line]
    assert len(evals) == 3, evals  # steps 0, 10, 20, logged by rank 0 only
    assert not list(run_dir.rglob(".tmp-*"))


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    """tests/ddp_worker.py on 2 ranks: full, interrupted and resumed runs (dropout 0.3), the
    ranks' outputs, then a run whose rank 1 fails (so the launcher exits non-zero)."""
    out = tmp_path_factory.mktemp("ddp_worker")
    overrides = [o for o in COMMON if o != "dropout=none"] + [
        "train.batch_size=2", "train.eval_interval=5", "sample_after_train=false", "dropout.rate=0.3"]
    result = torchrun(str(WORKER), str(out), json.dumps(overrides), cwd=out)
    assert (out / "masks.json").is_file(), result.stderr[-4000:]
    return out, result


def test_resume_after_an_interruption_is_bit_exact(worker_run):
    out, _ = worker_run
    record = json.loads((out / "masks.json").read_text())
    assert record["statuses"] == [["completed", "interrupted", "completed"]] * 2
    full, cut = RunFolder(out / "full").summary(), RunFolder(out / "cut").summary()
    assert cut.status == "completed" and full.world_size == cut.world_size == 2
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "best_step", "tokens_seen", "val_loss"):
        assert getattr(cut, key) == getattr(full, key), key
    timing = {"tokens_per_sec", "elapsed_sec"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(rows(out / "cut")) == strip(rows(out / "full"))
    assert len(rows(out / "full")) == 5  # steps 0, 5, 10, 15, 20: the cut one resumed in between
    # every rank's dropout stream is in the checkpoint
    from safetensors import safe_open

    with safe_open(str(out / "full" / "checkpoints" / "last" / "state.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"rng.torch", "rng.rank1.torch", "rng.data"} <= keys


def test_ranks_draw_different_dropout_masks(worker_run):
    out, _ = worker_run
    rank0, rank1 = json.loads((out / "masks.json").read_text())["outputs"]
    # same weights and input on both ranks: eval outputs agree, dropout (train mode) outputs do not
    assert rank0["eval"] == rank1["eval"]
    assert rank0["train"] != rank1["train"]


def test_a_failing_rank_never_leaves_a_completed_run(worker_run):
    out, result = worker_run
    assert result.returncode != 0
    assert "error (rank 1): RuntimeError: simulated bug on rank 1" in result.stderr
    summary = RunFolder(out / "run").summary()
    assert summary.status in ("failed", "interrupted"), summary.status
    assert summary.world_size == 2


def test_submitit_tasks_train_one_run_as_on_slurm(ddp_cli_run, tmp_path):
    """hydra/launcher=slurm with tasks_per_node=N takes this path: every submitit task runs the job
    and TorchDistributedEnvironment turns the job's tasks into ranks (here submitit's local executor)."""
    result = python("-m", "dropsample", "train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                    "hydra.launcher.gpus_per_node=0", *COMMON, "train.batch_size=4", "sample_after_train=false",
                    "experiment_name=sub", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    (job,) = (tmp_path / "runs" / "sub").glob("*_sweep/job0")
    summary = RunFolder(job).summary()
    assert (summary.status, summary.world_size, summary.global_batch) == ("completed", 2, 8)
    for a, b in zip(rows(job), rows(ddp_cli_run[0]), strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5) and a["step"] == b["step"]
    assert len([line for line in (job / "train.log").read_text().splitlines() if "eval step" in line]) == 3
    assert len(list((job.parent / ".submitit").glob("*/*_1_log.err"))) == 1, "rank 1 ran as a second task"


def test_resume_with_another_number_of_processes_is_refused(ddp_cli_run, tmp_path):
    run_dir, _ = ddp_cli_run
    cfg = RunFolder(run_dir).config()
    with pytest.raises(UserError, match=r"trained on 2 process\(es\), this launch has 1.*--nproc_per_node=2"):
        tr = training.build(cfg, run_dir)
        training.restore(tr)


def test_batches_of_the_ranks_partition_the_single_process_batch():
    data = torch.arange(1000)
    one = training.Batches(data, 8, 6, torch.device("cpu"), seed=3)
    ranks = [training.Batches(data, 8, 3, torch.device("cpu"), seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        x, y = one.next()  # (6, 8)
        parts = [b.next() for b in ranks]
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), y, rtol=0, atol=0)
        assert not torch.equal(parts[0][0], parts[1][0])


def test_rank_seeds_keep_rank_zero_and_differ():
    assert distributed.rank_seed(1337, 0) == 1337
    seeds = {distributed.rank_seed(1337, r) for r in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2 ** 63 for s in seeds)
    assert distributed.rank_seed(1337, 1) != distributed.rank_seed(1338, 1)


def test_device_auto_under_ddp_is_cuda_local_rank():
    """The code path only: no GPU here (not measured on a GPU)."""
    launch = Launch(rank=3, world_size=4, local_rank=1, local_world_size=2, launcher="torchrun")
    assert distributed.local_device("auto", launch, cuda_available=True, cuda_count=2) == "cuda:1"
    assert distributed.local_device("cuda", launch, cuda_available=True, cuda_count=4) == "cuda:1"
    assert distributed.local_device("auto", launch, cuda_available=False, cuda_count=0) == "cpu"
    # submitit makes one GPU visible to each task
    assert distributed.local_device("auto", launch, True, 1, environ={"CUDA_VISIBLE_DEVICES": "1"}) == "cuda:0"
    with pytest.raises(UserError, match="2 processes on this node but 1 GPU"):
        distributed.local_device("auto", launch, True, 1, environ={})


TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("ddp, device, environ, sweep, planned, words", [
    (True, "auto", {}, False, None, "train.ddp=true, but this process was not started by torchrun"),
    (False, "auto", TORCHRUN_ENV, False, None, "train.ddp=false, but the launcher starts 2 processes"),
    (None, "auto", {"RANK": "0", "WORLD_SIZE": "2"}, False, None, "MASTER_ADDR is not"),
    (None, "auto", TORCHRUN_ENV, True, None, "a sweep (-m) under torchrun is not supported"),
    (None, "cuda:1", TORCHRUN_ENV, False, None, "train.device=cuda:1 with 2 processes"),
    (True, "auto", {}, True, 1, "train.ddp=true, but"),  # slurm launcher with one task
])
def test_bad_launches_are_one_line(ddp, device, environ, sweep, planned, words):
    with pytest.raises(UserError) as err:
        distributed.check(ddp, device, sweep=sweep, planned=planned, environ=environ)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_good_launches_pass():
    distributed.check(None, "auto", environ={})
    distributed.check(None, "auto", environ=TORCHRUN_ENV)
    distributed.check(True, "cpu", environ=TORCHRUN_ENV)
    distributed.check(True, "auto", sweep=True, planned=4, environ={})  # slurm: 4 tasks per job


def test_cli_refuses_ddp_without_torchrun_before_any_folder(tmp_path):
    from conftest import run_cli

    result = run_cli("train", *COMMON, "train.ddp=true", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "train.ddp=true, but this process was not started by torchrun" in result.stderr
    assert not (tmp_path / "runs").exists()
