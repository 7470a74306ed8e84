"""Shared fixtures: offline data from ../shared/data, a private token cache, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# a folder laid out like shared/data: tinyshakespeare/input.txt, wikitext-2/{valid,test}.txt
DATA_DIR = Path(os.environ.get("DROPSAMPLE_DATA_DIR", REPO.parent / "shared" / "data")).resolve()

# tiny, fast settings shared by the end-to-end tests
TINY = [
    "model=tiny",
    "train.max_iters=40",
    "train.eval_interval=20",
    "train.eval_iters=2",
    "train.batch_size=8",
    "train.warmup_iters=5",
    # the final whole-split evaluation of the 1M-character train split is most of a tiny run's time
    "train.final_eval_tokens=4000",
    "gen.num_samples=4",
    "gen.prompt_tokens=8",
    "gen.max_new_tokens=24",
    "samplers=[greedy,top_p_0.9]",
]


def _download_tiny_shakespeare() -> Path:
    """Online without a local copy: fetch the corpus once through dropsample's own downloader."""
    global DATA_DIR
    from dropsample.config import compose
    from dropsample.data import download

    preset = compose([]).data
    target = Path(os.environ.get("DROPSAMPLE_CACHE_DIR", Path.home() / ".cache" / "dropsample")) / "testdata"
    corpus = target / "tinyshakespeare" / "input.txt"
    if not corpus.is_file():
        fetched = download.fetch(preset.url, target / "downloads", sha256=preset.sha256)
        corpus.parent.mkdir(parents=True, exist_ok=True)
        corpus.write_bytes(fetched.read_bytes())
    DATA_DIR = target
    return target


def needs_wikitext():
    return pytest.mark.skipif(not (DATA_DIR / "wikitext-2" / "test.txt").is_file(),
                              reason=f"no wikitext-2 files in {DATA_DIR}")


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    global DATA_DIR
    if not (DATA_DIR / "tinyshakespeare" / "input.txt").is_file():
        try:
            DATA_DIR = _download_tiny_shakespeare()
        except Exception as exc:  # offline, no local copy
            pytest.exit(f"Tiny Shakespeare not found in {DATA_DIR} and not downloadable ({exc}); "
                        "set DROPSAMPLE_DATA_DIR to a folder with tinyshakespeare/input.txt", 2)
    os.environ["DROPSAMPLE_DATA_DIR"] = str(DATA_DIR)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("DROPSAMPLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf")))
    yield


def compose(overrides: list[str]):
    """The typed config `dropsample train OVERRIDES` would run, without Hydra creating folders."""
    from dropsample.config import compose as hydra_compose
    from dropsample.config import validate

    return validate(hydra_compose(overrides))


def make_run_dir(tmp_path: Path, cfg, name: str = "run") -> Path:
    """A run folder as Hydra lays it out (so sample/eval/resume can read .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    from dropsample.schema import to_dict

    run_dir = tmp_path / name
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(to_dict(cfg)), run_dir / ".hydra" / "config.yaml")
    return run_dir


def sampler(name: str = "s", **settings):
    """A Sampler with typed settings, as `samplers` entries resolve to."""
    from dropsample.config import sampler_settings
    from dropsample.schema import Sampler

    return Sampler(name, sampler_settings(settings))


def cli(*args: str, cwd: Path, timeout: int = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed command in a fresh process (Hydra owns global state)."""
    result = subprocess.run(
        [sys.executable, "-m", "dropsample", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dropsample {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def run_cli(*args: str, cwd: Path | None = None):
    """The CLI in this process (no interpreter start-up): exit code, stdout, stderr.

    For commands that do not start Hydra (sample, eval, export, report, status, train --resume).
    An exception the CLI lets escape is re-raised, so a traceback fails the test loudly.
    """
    import contextlib
    import types

    from typer.testing import CliRunner

    from dropsample.cli import app

    with contextlib.chdir(cwd) if cwd else contextlib.nullcontext():
        result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return types.SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def to_transformers(model, folder: Path):
    """The same weights as transformers' GPT2LMHeadModel (the test peer)."""
    import transformers

    from dropsample.export import write_hf_model

    write_hf_model(model, folder)
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
