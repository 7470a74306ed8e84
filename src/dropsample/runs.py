"""The run folder: the one record every later command (sample, eval, report) reads.

    runs/<experiment_name>/<date>_<time>_<name>/     (sweeps: <date>_<time>_sweep/job<N>/)
        .hydra/              config.yaml (resolved), overrides.yaml, hydra.yaml
        summary.json         status and headline figures (Summary below; rewritten atomically)
        metrics.jsonl        one line per evaluation (METRICS_ROW below)
        train_curve.jsonl    the training batch loss every train.log_interval steps (TRAIN_POINT)
        train.log
        tokenizer.json
        checkpoints/{best,last}/   see checkpoint.py
        samples/<name>/      written by `dropsample sample`: <sampler>.jsonl, reference.jsonl, metrics.json
        eval.json            `dropsample eval` results by checkpoint
        logs/                experiment loggers' files (loggers.py): tensorboard/, wandb/, csv/, loggers.json
        attempts/<n>/        an earlier failed attempt of this job, moved aside by a rerun

`RunFolder` owns every path above and every read and write of these files. A file that
exists but cannot be read raises DamagedFile: one line naming the file, what is wrong,
and the way out. Nothing here unpickles anything.

summary.json's `status` is `running` while training (and sampling), then `completed`,
`failed`, `diverged` or `interrupted` (`skipped` in a sweep rerun); a run never says
`completed` unless it got there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

from dropsample.config import validate
from dropsample.errors import DamagedFile, UserError

STATUSES = ("running", "completed", "failed", "diverged", "interrupted", "skipped")
FINISHED = ("completed", "skipped")  # a sweep counts these as done


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: Path, fix: str, kind: type = dict):
    """JSON that must exist and be a `kind`; anything else is DamagedFile with `fix`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise DamagedFile(path, "not UTF-8 text", fix) from None
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"invalid JSON at line {exc.lineno}", fix) from None
    except IsADirectoryError:
        raise DamagedFile(path, "a folder where a file should be", fix) from None
    if not isinstance(data, kind):
        raise DamagedFile(path, f"holds a {type(data).__name__}, not a {kind.__name__}", fix) from None
    return data


# ---------------------------------------------------------------------------
# summary.json: which fields exist and which stage writes them


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Summary:
    # the task wrapper (task.py)
    status: Optional[str] = None  # one of STATUSES
    error: Optional[str] = None  # why a run did not complete
    stage: Optional[str] = None  # "sampling" while `train` samples
    same_as: Optional[str] = None  # skipped: the run folder that completed this configuration
    attempts: Optional[int] = None  # earlier attempts moved to attempts/
    # training, at its start
    config_hash: Optional[str] = None  # schema.config_hash: the configuration's identity
    experiment: Optional[str] = None
    name: Optional[str] = None
    data: Optional[dict] = None  # train: data.TokenizedData.describe() (what was read, per-role documents/chars/bytes/tokens)
    dropout: Optional[dict] = None  # resolved base rate per site and variant
    dropout_schedule: Optional[str] = None
    params: Optional[int] = None
    init_from: Optional[dict] = None  # pretrained source: source, kind, revision (hub commit or weights sha256), shape
    device: Optional[str] = None
    dtype: Optional[str] = None
    torch_version: Optional[str] = None
    cpu_threads: Optional[int] = None
    world_size: Optional[int] = None  # processes training the run (DDP; 1 without)
    global_batch: Optional[int] = None  # sequences per optimizer step: batch_size x grad_accum x world_size
    # training, at its end (also after divergence or interruption)
    steps: Optional[int] = None
    best_val_loss: Optional[float] = None
    best_val_ppl: Optional[float] = None
    best_step: Optional[int] = None
    final_train_loss: Optional[float] = None
    final_val_loss: Optional[float] = None
    final_train_ppl: Optional[float] = None
    final_val_ppl: Optional[float] = None
    final_val_bpc: Optional[float] = None  # character level
    # training, after it completed: the best checkpoint on whole splits (evaluation.split_loss)
    evaluation: Optional[dict] = None  # checkpoint, step, max_tokens, and per split every figure
    val_loss: Optional[float] = None
    val_loss_se: Optional[float] = None
    val_ppl: Optional[float] = None
    val_ppl_low: Optional[float] = None  # 95% interval: exp(val_loss -+ 1.96 SE)
    val_ppl_high: Optional[float] = None
    val_bpb: Optional[float] = None
    val_bpb_se: Optional[float] = None
    train_loss: Optional[float] = None
    train_loss_se: Optional[float] = None
    gap: Optional[float] = None  # val_loss - train_loss
    gap_se: Optional[float] = None
    ppl_ratio: Optional[float] = None  # exp(gap)
    tokens_seen: Optional[int] = None
    tokens_per_sec: Optional[float] = None
    wall_seconds: Optional[float] = None
    # `dropsample sample`
    samples: Optional[dict] = None  # name -> {path, headline per sampler, reference}
    latest_samples: Optional[str] = None
    # `dropsample eval`
    eval: Optional[dict] = None
    # keys written by a newer dropsample: kept as they are when this one rewrites the file
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict, path: Path, fix: str) -> "Summary":
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values, extra = {}, {}
        for key, value in data.items():
            if key not in known:
                extra[key] = value
                continue
            kind = known[key].type.removeprefix("Optional[").removesuffix("]")
            ok = value is None or {
                "str": isinstance(value, str), "int": isinstance(value, int) and not isinstance(value, bool),
                "float": _number(value), "dict": isinstance(value, dict),
            }.get(kind, True)
            if not ok:
                raise DamagedFile(path, f"{key} is {value!r}, not a {kind}", fix)
            values[key] = value
        if values.get("status") is not None and values["status"] not in STATUSES:
            raise DamagedFile(path, f"status {values['status']!r} is none of {', '.join(STATUSES)}", fix)
        return cls(**values, extra=extra)

    def to_json(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        return {**{k: v for k, v in data.items()}, **extra}

    @staticmethod
    def check_fields(names) -> None:
        unknown = set(names) - {f.name for f in fields(Summary)} | ({"extra"} & set(names))
        if unknown:
            raise KeyError(f"summary.json has no field {sorted(unknown)}; declare it in runs.Summary")


# metrics.jsonl: one row per evaluation, written by training, read by resume and the report
METRICS_ROW = (
    "step", "tokens", "train_loss", "val_loss", "train_ppl", "val_ppl", "gap", "lr",
    "dropout_factor", "dropout", "tokens_per_sec", "elapsed_sec",
)  # + train_bpc, val_bpc at character level
# train_curve.jsonl: the loss of the optimizer step's batch (dropout on, as trained), its lr and speed
TRAIN_POINT = ("step", "loss", "lr", "tokens_per_sec")


def _append_row(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


# ---------------------------------------------------------------------------


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- paths ---------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def hydra_path(self) -> Path:
        return self.path / ".hydra" / "hydra.yaml"

    @property
    def overrides_path(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        return self.checkpoints_dir / which

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    def samples(self, name: str) -> Path:
        return self.samples_dir / name

    @property
    def logs_dir(self) -> Path:
        """Experiment loggers' own files; loggers.py owns what is inside."""
        return self.path / "logs"

    @property
    def attempts_dir(self) -> Path:
        return self.path / "attempts"

    @contextmanager
    def logging_to_file(self):
        """Outside Hydra (resume, sample): log INFO to the console and append to train.log."""
        root = logging.getLogger()
        previous = root.level
        root.setLevel(logging.INFO)
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()
            root.setLevel(previous)

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def has_started(self) -> bool:
        """Anything that makes this folder a run's record (a job that never started has none)."""
        return self.summary_path.exists() or self.checkpoints_dir.exists()

    # -- config --------------------------------------------------------------
    def raw_config(self) -> dict:
        """The saved config as written (plain data; report grouping and old runs)."""
        if not self.config_path.is_file():
            raise UserError(f"{self.path} is not a dropsample run folder (no .hydra/config.yaml); pass a run folder")
        fix = "restore it, or delete the run folder and train again"
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            raise DamagedFile(self.config_path, "unparsable YAML" + (f" near line {line + 1}" if line is not None
                                                                    else ""), fix) from None
        if not isinstance(data, dict):
            raise DamagedFile(self.config_path, "not a mapping of config keys", fix)
        return data

    def launch_dir(self) -> Path | None:
        """The directory the run was launched from (Hydra's runtime.cwd in .hydra/hydra.yaml):
        the config's relative paths are relative to it. None when not recorded (then the
        working directory stands in, as before)."""
        try:
            cwd = yaml.load(self.hydra_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            cwd = cwd["hydra"]["runtime"]["cwd"]
        except (OSError, yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
            return None
        return Path(cwd) if isinstance(cwd, str) and Path(cwd).is_absolute() else None

    def config(self):
        """The run's config, typed and checked against the schema (relative paths anchored at
        the launch directory)."""
        raw = self.raw_config()
        try:
            return validate(raw, self.launch_dir())
        except UserError as err:
            raise DamagedFile(self.config_path, f"not a valid config: {err}",
                              "restore it, or delete the run folder and train again") from None

    def overrides(self) -> list[str]:
        if not self.overrides_path.is_file():
            return []
        try:
            data = yaml.safe_load(self.overrides_path.read_text()) or []
        except (yaml.YAMLError, UnicodeDecodeError):
            return []  # only shown in `status`: never worth stopping for
        return [str(x) for x in data] if isinstance(data, list) else []

    # -- summary -------------------------------------------------------------
    SUMMARY_FIX = "delete the run folder and rerun its job (a sweep rerun into the same folder does that)"

    def summary(self) -> Summary:
        if not self.summary_path.exists():
            return Summary()
        return Summary.from_json(read_json(self.summary_path, self.SUMMARY_FIX), self.summary_path, self.SUMMARY_FIX)

    def update_summary(self, **fields) -> Summary:
        """Set these fields (declared in Summary) and rewrite summary.json atomically."""
        Summary.check_fields(fields)
        summary = self.summary()
        for key, value in fields.items():
            setattr(summary, key, value)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.summary_path, summary.to_json())
        return summary

    # -- metrics.jsonl and train_curve.jsonl ---------------------------------
    @property
    def train_curve_path(self) -> Path:
        return self.path / "train_curve.jsonl"

    def append_metrics(self, row: dict) -> None:
        _append_row(self.metrics_path, row)

    def append_train_point(self, row: dict) -> None:
        """One TRAIN_POINT row: the training batch loss at a log interval (rank 0 only)."""
        _append_row(self.train_curve_path, row)

    def metrics(self) -> list[dict]:
        """Evaluation rows. A last line cut by a kill is dropped; damage before the end is an error."""
        return self._rows(self.metrics_path, ("train_loss", "val_loss", "gap", "train_ppl", "val_ppl"))

    def train_curve(self) -> list[dict]:
        """Training-batch losses at every log interval (empty for runs made before it existed)."""
        return self._rows(self.train_curve_path, ("loss", "lr"))

    def _rows(self, path: Path, numbers: tuple[str, ...]) -> list[dict]:
        if not path.is_file():
            return []
        fix = "delete the run folder and rerun its job, or resume it: dropsample train --resume " + str(self.path)
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise DamagedFile(path, "not UTF-8 text", fix) from None
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError
            except ValueError:
                if number == len(lines):
                    break  # the line a killed process was writing
                raise DamagedFile(path, f"line {number} is not a metrics row", fix) from None
            for key in numbers:
                if key in row and not (_number(row[key]) or row[key] is None):
                    raise DamagedFile(path, f"line {number}: {key} is {row[key]!r}", fix)
            rows.append(row)
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """On resume: keep rows up to the checkpoint's step, drop what the lost process wrote after
        (in metrics.jsonl and train_curve.jsonl alike)."""
        for path, rows in ((self.metrics_path, self.metrics()), (self.train_curve_path, self.train_curve())):
            if not path.is_file():
                continue
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".metrics.")
            with os.fdopen(fd, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= last_step)
            os.replace(tmp, path)

    # -- checkpoints ---------------------------------------------------------
    def load_checkpoint(self, which: str, fix: str | None = None):
        """checkpoints/<which>, verified (see checkpoint.load); missing -> UserError, damaged -> DamagedFile."""
        from dropsample import checkpoint  # torch: `status` and `report` never need it

        folder = checkpoint.resolve(self.checkpoint(which))
        if fix is None:
            other = "last" if which == "best" else "best"
            fix = f"use the {other} checkpoint (--checkpoint {other}, or gen.checkpoint={other} for sample)"
        if folder is None:
            raise UserError(f"{self.path} has no checkpoints/{which}; train it first or use the "
                            f"{'last' if which == 'best' else 'best'} checkpoint")
        try:
            return checkpoint.load(folder)
        except checkpoint.CheckpointError as exc:
            raise DamagedFile(exc.path, exc.problem, fix) from None

    # -- samples and eval ----------------------------------------------------
    def sample_metrics_path(self, name: str) -> Path:
        return self.samples(name) / "metrics.json"

    def sample_file(self, name: str, sampler: str) -> Path:
        """samples/<name>/<sampler>.jsonl, the sampler's name made safe for a file name."""
        safe = "".join(c if c.isalnum() or c in "._-+=" else "_" for c in sampler)
        return self.samples(name) / f"{safe}.jsonl"

    def sample_metrics(self, name: str) -> dict | None:
        path = self.sample_metrics_path(name)
        if not path.is_file():
            return None
        return read_json(path, f"delete {path.parent} and sample again: dropsample sample {self.path}")

    def eval_history(self) -> dict:
        if not self.eval_path.exists():
            return {}
        return read_json(self.eval_path, f"delete {self.eval_path}; `dropsample eval` writes it again")

    def write_eval(self, key: str, record: dict) -> None:
        history = self.eval_history()
        history[key] = record
        write_json_atomic(self.eval_path, history)

    # -- attempts ------------------------------------------------------------
    def archive_attempt(self) -> Path:
        """Move an earlier attempt's results to attempts/<n>/ so a rerun starts clean (train.log stays)."""
        n = 1 + sum(1 for _ in self.attempts_dir.glob("*")) if self.attempts_dir.is_dir() else 1
        target = self.attempts_dir / str(n)
        target.mkdir(parents=True)
        for path in (self.summary_path, self.metrics_path, self.checkpoints_dir, self.samples_dir, self.eval_path,
                     self.tokenizer_path, self.logs_dir):
            if path.exists():
                shutil.move(str(path), target / path.name)
        return target


def finite(value) -> float | None:
    """A JSON-safe float: None for NaN and infinities."""
    return float(value) if value is not None and math.isfinite(value) else None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders at or below each path (a run, a sweep, an experiment folder)."""
    found = []
    for path in paths:
        path = Path(path)
        if RunFolder(path).is_run():
            found.append(path)
            continue
        found.extend(sorted(p.parent.parent for p in path.rglob(".hydra/config.yaml")
                            if "samples" not in p.parts and "attempts" not in p.parts))
    seen, unique = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique
