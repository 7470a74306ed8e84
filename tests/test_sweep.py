"""Sweeps are Hydra multiruns: launchers, failure isolation, skipping finished work, the report."""

import csv
import json
import os
import shutil
import threading
import time


from conftest import TINY, cli

SWEEP = [o for o in TINY if not o.startswith(("train.max_iters", "gen.max_new_tokens"))] + [
    "train.max_iters=20", "gen.max_new_tokens=12",
]


def sweep_dirs(cwd, experiment):
    return sorted((cwd / "runs" / experiment).glob("*_sweep"))


def summaries(sweep_dir):
    return [json.loads((job / "summary.json").read_text()) for job in sorted(sweep_dir.glob("job*"))]


def test_two_job_multirun_leaves_two_complete_run_folders(tmp_path):
    result = cli("train", "-m", *SWEEP, "dropout.rate=0,0.2", "experiment_name=two", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = sweep_dirs(tmp_path, "two")
    jobs = sorted(sweep.glob("job*"))
    assert len(jobs) == 2
    for job, rate in zip(jobs, (0.0, 0.2)):
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["dropout"]["embd"] == rate
        for name in ("metrics.jsonl", "tokenizer.json", "train.log", ".hydra/config.yaml",
                     "checkpoints/best/model.safetensors", "checkpoints/last/state.json"):
            assert (job / name).is_file(), name
    table = json.loads((sweep / "sweep_summary.json").read_text())["jobs"]
    assert [j["status"] for j in table] == ["completed", "completed"]
    status = cli("status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0 and "2 completed (of 2 jobs)" in status.stdout
    shutil.rmtree(jobs[1])  # as if the second job had not started yet
    status = cli("status", str(sweep), cwd=tmp_path)
    assert "1 completed, 1 not started (of 2 jobs)" in status.stdout


def test_joblib_sweep_of_four_then_report(tmp_path):
    result = cli("train", "-m", *SWEEP, "dropout.rate=0,0.1,0.2,0.3", "experiment_name=four",
                 "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = sweep_dirs(tmp_path, "four")
    assert [s["status"] for s in summaries(sweep)] == ["completed"] * 4
    # two jobs at once share the cores instead of each taking all of them
    assert {s["cpu_threads"] for s in summaries(sweep)} == {max(1, (os.cpu_count() or 1) // 2)}
    report = cli("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))  # long format: configuration x sampler x metric
    val = [r for r in rows if r["metric"] == "val_ppl"]
    assert sorted(float(r["dropout.rate"]) for r in val) == [0.0, 0.1, 0.2, 0.3]
    assert all(float(r["value"]) > 1 and float(r["low"]) < float(r["value"]) and r["seeds"] == "1" for r in val)
    # word-level distinct-4 is undefined on these few-word completions; gen-ppl always exists
    for sampler in ("top_p_0.9", "reference"):
        assert len([r for r in rows if (r["sampler"], r["metric"]) == (sampler, "gen_ppl")]) == 4
    for name in ("val_ppl_vs_rate.png", "gap_vs_rate.png", "loss_curves.png", "diversity_vs_quality.png"):
        assert (sweep / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (sweep / "report.md").read_text()
    assert "by val perplexity" in md or "difference in val perplexity" in md
    assert "Train/val gap (val - train loss, nats): " in md
    training = md[md.index("## Training"):md.index("## Decoding")]
    assert all(f"| rate={r}" in training for r in ("0.0", "0.1", "0.2", "0.3"))
    assert "(plots/val_ppl_vs_rate.png)" in md


def test_submitit_local_two_jobs(tmp_path):
    result = cli("train", "-m", *SWEEP, "dropout.rate=0,0.1", "experiment_name=sub", "sample_after_train=false",
                 "hydra/launcher=submitit_local", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep,) = sweep_dirs(tmp_path, "sub")
    assert [s["status"] for s in summaries(sweep)] == ["completed", "completed"]


def test_a_failing_job_does_not_stop_the_others(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("All the world's a stage, and all the men and women merely players.\n" * 200)
    result = cli("train", "-m", *SWEEP, "data=text", f"data.path={good},{tmp_path / 'missing.txt'}",
                 "experiment_name=fail", cwd=tmp_path)
    assert result.returncode == 1
    assert "1 of 2 jobs failed" in result.stderr and "Traceback" not in result.stderr
    (sweep,) = sweep_dirs(tmp_path, "fail")
    statuses = [s["status"] for s in summaries(sweep)]
    assert statuses == ["completed", "failed"]
    failed = json.loads((sweep / "sweep_summary.json").read_text())["jobs"][1]
    assert "missing.txt does not exist" in failed["error"]
    report = cli("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    md = (sweep / "report.md").read_text()
    assert "1 run(s) did not complete" in md and "## Runs that did not complete" in md


def test_rerunning_a_finished_sweep_runs_nothing_new(tmp_path):
    args = ["train", "-m", *SWEEP, "dropout.rate=0,0.2", "experiment_name=again", "sample_after_train=false"]
    assert cli(*args, cwd=tmp_path).returncode == 0
    second = cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    first_sweep, second_sweep = sweep_dirs(tmp_path, "again")
    assert [s["status"] for s in summaries(second_sweep)] == ["skipped", "skipped"]
    assert not list(second_sweep.rglob("checkpoints")), "nothing was trained again"
    assert {s["same_as"] for s in summaries(second_sweep)} == {str(p.relative_to(tmp_path)) for p in first_sweep.glob("job*")}
    # a changed value is new work
    third = cli("train", "-m", *SWEEP, "dropout.rate=0,0.3", "experiment_name=again", "sample_after_train=false",
                cwd=tmp_path)
    assert [s["status"] for s in summaries(sweep_dirs(tmp_path, "again")[2])] == ["skipped", "completed"]
    assert third.returncode == 0


def test_slurm_and_parallel_launcher_presets_compose():
    from hydra import compose as hc
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dropsample.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        h = hc("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
        assert h.hydra.launcher._target_.endswith("SlurmLauncher")
        assert h.hydra.launcher.partition == "gpu" and h.hydra.launcher.gpus_per_node == 1
        p = hc("config", overrides=["hydra/launcher=parallel"], return_hydra_config=True)
        assert p.hydra.launcher._target_.endswith("JoblibLauncher") and p.hydra.launcher.n_jobs == 2


def test_gpu_slots_never_share_a_gpu(tmp_path):
    from dropsample.sweep import gpu_slot

    held, lock, clashes = [], threading.Lock(), []
    peak = {"max": 0}

    def job():
        with gpu_slot(tmp_path, n_gpus=2, per_gpu=1, poll_seconds=0.01) as gpu:
            with lock:
                held.append(gpu)
                if held.count(gpu) > 1:
                    clashes.append(gpu)
                peak["max"] = max(peak["max"], len(held))
            time.sleep(0.05)
            with lock:
                held.remove(gpu)

    threads = [threading.Thread(target=job) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == [], "two jobs held one GPU"
    assert peak["max"] == 2 and held == []


def test_rerun_into_the_same_sweep_folder_is_idempotent(tmp_path):
    """A completed job in its own folder is skipped untouched; an interrupted one resumes without
    repeating rows; an unsound one is moved to attempts/ and trained clean."""
    sweep = tmp_path / "fixed"
    args = ["train", "-m", *SWEEP, "dropout.rate=0,0.1,0.2", "experiment_name=fixed", f"hydra.sweep.dir={sweep}",
            "sample_after_train=false"]
    assert cli(*args, cwd=tmp_path).returncode == 0
    jobs = sorted(sweep.glob("job*"))
    done = {p: p.read_bytes() for p in (jobs[0] / "metrics.jsonl", jobs[0] / "checkpoints" / "last" / "state.json")}
    summary1 = json.loads((jobs[1] / "summary.json").read_text())
    (jobs[1] / "summary.json").write_text(json.dumps({**summary1, "status": "interrupted"}))
    (jobs[2] / "summary.json").write_text("{ cut")  # unsound: cannot tell what happened

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert all(path.read_bytes() == data for path, data in done.items()), "job0 was not touched"
    assert [s["status"] for s in summaries(sweep)] == ["completed"] * 3
    for job in jobs:
        steps = [json.loads(x)["step"] for x in (job / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 20], (job.name, steps)
    assert not (jobs[1] / "attempts").exists(), "a sound attempt resumes in place"
    assert (jobs[2] / "attempts" / "1" / "summary.json").read_text() == "{ cut"
    assert (jobs[2] / "attempts" / "1" / "checkpoints" / "last" / "state.json").is_file()
