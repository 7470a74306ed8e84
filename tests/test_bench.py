"""bench/gpu.py's reduced CPU form runs end to end, so the GPU benchmark can't rot between the
sessions that have a GPU. What it prints is checked for shape, never for speed."""

import re
import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("transformers")


def test_gpu_benchmark_runs_in_its_reduced_cpu_form():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--cpu-smoke"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for part in ("## train", "## sample", "## sweep"):
        assert part in out, part
    train = re.search(r"\| tiny \| eager \| 4 x 32 \| ([\d,]+) \|", out)
    assert train and int(train.group(1).replace(",", "")) > 0
    # every sampler of generate_speed at both batch sizes, each with a ratio against transformers
    rows = re.findall(r"^\| (\w[\w.]*) \| (\d+) \| [\d,]+ \| [\d,]+ \| ([\d.]+)x \|$", out, re.M)
    assert {(name, batch) for name, batch, _ in rows} == {
        (s, b) for s in ("greedy", "pure", "top_k_40", "top_p_0.9", "min_p_0.1", "typical_0.95", "beam_4")
        for b in ("1", "2")}
    assert "| 2 packed |" in out and "| 2 one after another |" in out


def test_gpu_benchmark_without_cuda_says_how_to_run_it():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the full benchmark would run")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "no CUDA device here: run on a GPU machine, or pass --cpu-smoke for the reduced CPU form"]
