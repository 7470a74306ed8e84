"""Sweep cost: what a multirun spends outside the jobs' own training, and (on a GPU box)
running small jobs one at a time against packing k jobs per GPU.

    python bench/sweep_overhead.py --jobs 4 --preset tiny --iters 200         # CPU: overhead per job
    python bench/sweep_overhead.py --jobs 8 --preset baby --pack 1 4 8        # GPU: sequential vs packed

Each configuration runs `dropsample train -m` in a fresh process in a temporary folder and
reads the jobs' summary.json files: training time = tokens_seen / tokens_per_sec.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_sweep(cwd: Path, args, n_jobs: int, per_gpu: int) -> dict:
    rates = ",".join(f"{0.3 * i / max(args.jobs - 1, 1):.4f}" for i in range(args.jobs))
    cmd = [sys.executable, "-m", "dropsample", "train", "-m", f"model={args.preset}", f"train.max_iters={args.iters}",
           f"train.eval_interval={args.iters}", "sample_after_train=false", f"dropout.rate={rates}",
           f"experiment_name=pack{n_jobs}x{per_gpu}", f"train.jobs_per_gpu={per_gpu}"]
    if n_jobs > 1:
        cmd += ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={n_jobs}"]
    tic = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - tic
    summaries = [json.loads(p.read_text()) for p in (cwd / "runs" / f"pack{n_jobs}x{per_gpu}").rglob("summary.json")]
    train = sum(s["tokens_seen"] / s["tokens_per_sec"] for s in summaries)
    tic = time.perf_counter()
    sweep = next((cwd / "runs" / f"pack{n_jobs}x{per_gpu}").glob("*_sweep"))
    subprocess.run([sys.executable, "-m", "dropsample", "report", str(sweep)], cwd=cwd, check=True,
                   capture_output=True)
    report = time.perf_counter() - tic
    return {"wall": wall, "train": train, "jobs": len(summaries), "report": report}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--pack", nargs="+", type=int, default=[1], help="jobs per GPU to compare (GPU boxes)")
    args = ap.parse_args()
    env_note = os.environ.get("DROPSAMPLE_DATA_DIR", "(downloading data)")
    print(f"{args.jobs} jobs of {args.preset}, {args.iters} steps each; data: {env_note}")
    print("| jobs at once | sweep wall s | sum of jobs' training s | overhead per job s | report s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.pack:
            r = run_sweep(Path(tmp), args, n_jobs=k, per_gpu=k)
            overhead = (r["wall"] - r["train"] / k) / r["jobs"] if k > 1 else (r["wall"] - r["train"]) / r["jobs"]
            print(f"| {k} | {r['wall']:.1f} | {r['train']:.1f} | {overhead:.2f} | {r['report']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
