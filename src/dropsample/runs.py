"""The run folder: the one record every later command (sample, eval, report) reads.

    runs/<experiment_name>/<date>_<time>_<name>/
        .hydra/              config.yaml (resolved), overrides.yaml, hydra.yaml
        metrics.jsonl        one line per evaluation
        summary.json         status and headline figures (rewritten atomically)
        tokenizer.json
        train.log
        checkpoints/{best,last}/
        samples/<name>/      written by `dropsample sample`

summary.json's `status` is `running` while training (and sampling), then `completed`,
`failed`, `diverged` or `interrupted` (`skipped` in a sweep rerun); a run never says
`completed` unless it got there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dropsample.errors import UserError

# keys that name or place a run but do not change its results
NON_RESULT_KEYS = ("name", "runs_root", "experiment_name", "hydra")
NON_RESULT_TRAIN_KEYS = ("jobs_per_gpu", "log_interval", "device")


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def config_hash(cfg: DictConfig) -> str:
    """Identity of a configuration's results: the resolved config minus names and places."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_RESULT_KEYS:
        data.pop(key, None)
    for key in NON_RESULT_TRAIN_KEYS:
        data.get("train", {}).pop(key, None)
    data.get("data", {}).pop("cache_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    # files
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def checkpoint(self, which: str) -> Path:
        return self.path / "checkpoints" / which

    def config(self) -> DictConfig:
        path = self.path / ".hydra" / "config.yaml"
        if not path.is_file():
            raise UserError(f"{self.path} is not a dropsample run folder (no .hydra/config.yaml); pass a run folder")
        return OmegaConf.load(path)

    # summary
    def summary(self) -> dict:
        return read_json(self.summary_path) if self.summary_path.is_file() else {}

    def update_summary(self, **fields) -> dict:
        summary = self.summary()
        summary.update(fields)
        write_json_atomic(self.summary_path, summary)
        return summary

    # metrics
    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is not trustworthy
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: keep rows up to the checkpoint's step, drop what the lost process wrote after."""
        rows = [r for r in self.metrics() if r["step"] <= last_step]
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".metrics.")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, self.metrics_path)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders at or below each path (a run, a sweep, an experiment folder)."""
    found = []
    for path in paths:
        path = Path(path)
        if (path / ".hydra" / "config.yaml").is_file():
            found.append(path)
            continue
        found.extend(sorted(p.parent.parent for p in path.rglob(".hydra/config.yaml") if "samples" not in p.parts))
    seen, unique = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique
