"""bench/startup.py runs the real CLI to its first optimizer step and accounts for the time by
phase. What it prints is checked for shape and for how often the config is composed, never for
speed."""

import importlib.util
import re
import subprocess
import sys

from conftest import REPO

BENCH = REPO / "bench" / "startup.py"


def phases() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("startup_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PHASES


def test_startup_benchmark_accounts_for_every_phase(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH), "--repeats", "1", "--",
         "model=tiny", "train.eval_iters=2", "train.batch_size=8"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    # the warm-up run filled the benchmark's own token cache; the measured run read it
    assert "token cache hit" in out
    # a single run's config is composed by the CLI's preflight once and by hydra.main twice
    # (its mode, then the job): a second preflight composition would show here
    assert re.search(r"Hydra compositions per run: 3 \(", out), out
    rows = dict(re.findall(r"^\| ([\w.\- ]+?) \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M))
    assert tuple(rows) == phases()
    total = float(re.search(r"^\| \*\*total\*\* \| \| \*\*([\d.]+)\*\* \|", out, re.M).group(1))
    assert total > 0 and all(float(s) >= 0 for s in rows.values())
    assert not list(tmp_path.iterdir()), "the benchmark writes nothing into the working folder"
