"""Shared fixtures: offline data from ../shared/data, a private token cache, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DROPSAMPLE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()

# tiny, fast settings shared by the end-to-end tests
TINY = [
    "model=tiny",
    "train.max_iters=40",
    "train.eval_interval=20",
    "train.eval_iters=2",
    "train.batch_size=8",
    "train.warmup_iters=5",
    "gen.num_samples=4",
    "gen.prompt_tokens=8",
    "gen.max_new_tokens=24",
    "samplers=[greedy,top_p_0.9]",
]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    if not (DATA_DIR / "tinyshakespeare" / "input.txt").is_file():
        pytest.exit(f"test data not found in {DATA_DIR}; set DROPSAMPLE_DATA_DIR to a copy of shared/data", 2)
    os.environ["DROPSAMPLE_DATA_DIR"] = str(DATA_DIR)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("DROPSAMPLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf")))
    yield


def compose(overrides: list[str]):
    """The config `dropsample train OVERRIDES` would run, without Hydra creating folders."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dropsample.config import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def make_run_dir(tmp_path: Path, cfg, name: str = "run") -> Path:
    """A run folder as Hydra lays it out (so sample/eval/resume can read .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


def cli(*args: str, cwd: Path, timeout: int = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed command in a fresh process (Hydra owns global state)."""
    result = subprocess.run(
        [sys.executable, "-m", "dropsample", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dropsample {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result
