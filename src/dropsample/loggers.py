"""Experiment loggers: a run's numbers also go to TensorBoard, Weights & Biases, MLflow or CSV.

    conf/logger/*.yaml -> schema.LoggerConfig -> start() -> Loggers -> one Backend per logger

What is logged, and where it comes from (training.py and sample.py make these calls):

    Loggers.hparams(cfg)        at the start: the config, flat dotted keys
    Loggers.train_step(...)     every train.log_interval steps: train/loss (the step's last
                                micro-batch), train/lr, train/tokens_per_sec, dropout/factor and
                                dropout/<site or variant> (the rates in effect at that step)
    Loggers.evaluation(row)     every evaluation: eval/<name> for each number of the
                                metrics.jsonl row (train_loss, val_loss, gap, *_ppl, *_bpc, ...)
    Loggers.final(summary)      at the end: the status, and final/<field> for each number of
                                summary.json (not for an interrupted run: its resumed run logs them)
    log_samples(...)            after each sampler: samples/<name>/<sampler>/<metric> and its
                                first `logger.samples` completions as text

Steps are optimizer steps done, the `step` of metrics.jsonl.

A resumed run (`train --resume`, or a sweep rerun resuming a job) continues the same logger
runs, and no step appears twice. The checkpoint it resumes from is at step S; the lost process
may have logged beyond S, and the resumed one recomputes those steps bit for bit:

    tensorboard  a new event file with purge_step=S+1: TensorBoard drops the older events after S
    csv          rows after S are cut, as RunFolder.truncate_metrics does for metrics.jsonl
    wandb        the run id stored in logs/loggers.json, resume="allow"; steps up to the last one
                 the lost process sent (also kept in loggers.json) are not sent again
    mlflow       the run id stored in logs/loggers.json; for each metric, steps the tracking store
                 already holds are not sent again

The backends' packages are optional extras (pip install "dropsample[tensorboard]" ...):
`check_installed` names the missing one before any training. A backend that fails mid-run
is switched off with one warning: a logger never stops a training run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropsample.errors import ConfigError, UserError
from dropsample.runs import RunFolder, read_json, write_json_atomic
from dropsample.schema import Config, LoggerConfig, flat, to_dict

log = logging.getLogger("dropsample")

STATE_FILE = "loggers.json"  # under RunFolder.logs_dir: run ids and the last step each backend sent

# the import names each backend needs, and the extra that installs them
REQUIRES = {
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
    "csv": (),
}

# summary.json numbers a TensorBoard HPARAMS view shows next to each run's hyper-parameters
HPARAM_METRICS = ("best_val_loss", "best_val_ppl", "final_val_loss", "gap")


def check_installed(logger: LoggerConfig) -> None:
    """One line naming the extra to install, for the first enabled logger whose package is missing."""
    for name in logger.enabled():
        missing = [m for m in REQUIRES[name] if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError("logger", f"{name} needs the {', '.join(missing)} package"
                              f"{'s' if len(missing) > 1 else ''}; pip install \"dropsample[{name}]\" "
                              f"(or drop {name} from logger=)")


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(values: dict, prefix: str) -> dict[str, float]:
    """The finite numbers of a flat dict, keys prefixed ('eval/val_loss')."""
    out = {}
    for key, value in values.items():
        number = _number(value)
        if number is not None:
            out[f"{prefix}{key}"] = number
    return out


def hparams_of(cfg: Config) -> dict[str, Any]:
    """The config as flat dotted keys with scalar values (lists and nulls as text)."""
    out = {}
    for key, value in flat(to_dict(cfg)).items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


# ---------------------------------------------------------------------------
# Backends: each writes with its library's own writer


@dataclass
class Opening:
    """What a backend is opened with. `mode`: fresh, resume (from the checkpoint at `step`) or
    append (a later command adding to the run, e.g. `dropsample sample`). `state` is the
    run's logs/loggers.json, which backends update in place and persist with `save()`."""

    cfg: Config
    run: RunFolder
    mode: str
    step: int | None
    state: dict
    save: Any


class Backend:
    """What every logger does; each method gets plain names and numbers."""

    name = ""

    def hparams(self, values: dict[str, Any], text: str) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str | None) -> None:
        pass


class TensorBoard(Backend):
    name = "tensorboard"

    def __init__(self, settings, o: Opening):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard discards the events of earlier files at steps >= purge_step
        purge = o.step + 1 if o.mode == "resume" else None
        self.writer = SummaryWriter(str(o.run.logs_dir / "tensorboard"), purge_step=purge,
                                    flush_secs=settings.flush_secs)

    def hparams(self, values, text):
        from torch.utils.tensorboard.summary import hparams

        # written into this run's own event file (SummaryWriter.add_hparams would start a new run folder)
        metrics = {f"final/{name}": 0.0 for name in HPARAM_METRICS}
        for summary in hparams(values, metrics):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", text, 0)

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def text(self, tag, text, step):
        self.writer.add_text(tag, text, step)

    def flush(self):
        self.writer.flush()

    def close(self, status):
        self.writer.close()


class Csv(Backend):
    """logs/csv/metrics.csv: a row per logged point, a column per name (a new name rewrites the
    header), and hparams.yaml. Python's csv and yaml writers; pandas reads it as it is."""

    name = "csv"

    def __init__(self, settings, o: Opening):
        self.dir = o.run.logs_dir / "csv"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.csv"
        self.columns: list[str] = ["step"]
        rows = self._read()
        if o.mode == "fresh":
            rows = []
        elif o.mode == "resume":
            rows = [r for r in rows if int(r["step"]) <= o.step]
        if o.mode != "append" or not self.path.exists():
            self._rewrite(rows)

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            self.columns = list(reader.fieldnames or ["step"])
            return [r for r in reader if (r.get("step") or "").isdigit()]  # a row cut by a kill is dropped

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def hparams(self, values, text):
        (self.dir / "hparams.yaml").write_text(text)

    def scalars(self, values, step):
        row = {"step": step, **{k: repr(v) for k, v in values.items()}}
        new = [k for k in values if k not in self.columns]
        if new:
            rows = self._read()
            self.columns += new
            self._rewrite(rows + [row])
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)


class Wandb(Backend):
    name = "wandb"

    def __init__(self, settings, o: Opening):
        import wandb

        self.state = o.state.setdefault("wandb", {})
        if o.mode == "fresh" or "id" not in self.state:
            self.state.clear()
            self.state["id"] = uuid.uuid4().hex[:12]
        # resume: what the lost process sent after the checkpoint is recomputed identically, not resent
        self.sent_before = self.state.get("last_step", -1) if o.mode == "resume" else -1
        self.last_step = self.state.get("last_step", -1)
        self.save = o.save
        self.run = wandb.init(
            id=self.state["id"], resume="allow", dir=str(o.run.logs_dir), mode=settings.mode,
            project=settings.project, entity=settings.entity, group=settings.group or o.cfg.experiment_name,
            name=o.run.path.name, tags=list(settings.tags), reinit="create_new",
            # train.log already holds the console: no stdout capture
            settings=wandb.Settings(console="off", quiet=True),
        )

    def hparams(self, values, text):
        self.run.config.update(values, allow_val_change=True)

    def scalars(self, values, step):
        if step <= self.sent_before:
            return
        # a W&B history only moves forward: a late point (samples of an earlier checkpoint) joins the last step
        step = max(step, self.last_step)
        self.run.log(values, step=step)
        if step != self.last_step:
            self.last_step = self.state["last_step"] = step
            self.save()

    def text(self, tag, text, step):
        import wandb

        if tag == "status":  # one value per run, not a history
            self.run.summary["status"] = text
            return
        if step <= self.sent_before:
            return
        self.run.log({tag: wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=max(step, self.last_step))

    def close(self, status):
        if status is not None:
            self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in (None, "completed") else 1)


class Mlflow(Backend):
    name = "mlflow"

    def __init__(self, settings, o: Opening):
        # no usage reports leave the machine unless the user asks (MLFLOW_DISABLE_TELEMETRY=false)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        root = Path(o.cfg.runs_root).resolve()
        uri = settings.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        self.state = o.state.setdefault("mlflow", {})
        self.sent: dict[str, int] = {}  # metric -> last step the store holds (resume: not sent again)
        if o.mode != "fresh" and self.state.get("run_id") and self.state.get("tracking_uri") == uri:
            self.run_id = self.state["run_id"]
            if o.mode == "resume":
                self.sent = self._steps_in_store()
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self._experiment(settings.experiment or o.cfg.experiment_name, uri, root)
            created = self.client.create_run(experiment, run_name=o.run.path.name,
                                             tags={"dropsample.run_dir": str(o.run.path.resolve())})
            self.run_id = created.info.run_id
            self.state.clear()
            self.state.update(run_id=self.run_id, tracking_uri=uri)

    def _experiment(self, name: str, uri: str, root: Path) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # artifacts (sample text) beside the local store; a server decides for itself
        where = (root / "mlartifacts" / name).as_uri() if uri.startswith("sqlite:") else None
        try:
            return self.client.create_experiment(name, artifact_location=where)
        except Exception:  # a parallel sweep job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _steps_in_store(self) -> dict[str, int]:
        names = self.client.get_run(self.run_id).data.metrics.keys()
        return {name: max(m.step for m in self.client.get_metric_history(self.run_id, name)) for name in names}

    def hparams(self, values, text):
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in values.items()]
        for i in range(0, len(params), 100):  # the store takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, text, "config.yaml")

    def scalars(self, values, step):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items() if step > self.sent.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def text(self, tag, text, step):
        self.client.log_text(self.run_id, text, f"{tag}.txt")

    def close(self, status):
        if status is not None:
            mlflow_status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self.client.set_terminated(self.run_id, status=mlflow_status)


BACKENDS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": Mlflow, "csv": Csv}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------
# The fan-out


class Loggers:
    """Every enabled backend of one run. With none enabled every call returns at once."""

    def __init__(self, cfg: Config | None = None, run: RunFolder | None = None, backends=(), state=None):
        self.cfg, self.run = cfg, run
        self.backends: list[Backend] = list(backends)
        self.state = state if state is not None else {}
        self.status: str | None = None
        self.log_interval = cfg.train.log_interval if cfg is not None else 1
        self.max_iters = cfg.train.max_iters if cfg is not None else 0

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _each(self, call) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as exc:  # a logger never stops the run it describes
                log.warning("logger %s failed (%s: %s); it is off for the rest of this run",
                            backend.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.backends.remove(backend)

    def save_state(self) -> None:
        if self.run is not None:
            write_json_atomic(self.run.logs_dir / STATE_FILE, self.state)

    # -- what training calls ------------------------------------------------
    def hparams(self, cfg: Config) -> None:
        if not self:
            return
        import yaml

        values, text = hparams_of(cfg), yaml.safe_dump(to_dict(cfg), sort_keys=False)
        self._each(lambda b: b.hparams(values, text))

    def due(self, step: int) -> bool:
        """Whether train_step logs at `step` (steps done): every log_interval steps and the last one."""
        return bool(self.backends) and (step % self.log_interval == 0 or step == self.max_iters)

    def train_step(self, step: int, loss: float, lr: float, tokens_per_sec: float | None, factor: float,
                   rates: dict[str, float]) -> None:
        values = _numbers({"loss": loss, "lr": lr, "tokens_per_sec": tokens_per_sec}, "train/")
        values.update(_numbers({"factor": factor, **rates}, "dropout/"))
        self._each(lambda b: b.scalars(values, step))

    def evaluation(self, row: dict) -> None:
        if not self:
            return
        values = _numbers({k: v for k, v in row.items() if k != "step"}, "eval/")
        self._each(lambda b: b.scalars(values, row["step"]))
        self._each(lambda b: b.flush())

    def final(self, summary) -> None:
        """The end-of-training figures of summary.json (also for diverged and failed runs, not for
        an interrupted one: its resumed run logs them) and the status."""
        if not self:
            return
        self.status = summary.status
        step = summary.steps or 0
        if summary.status != "interrupted":
            values = _numbers(summary.to_json(), "final/")
            self._each(lambda b: b.scalars(values, step))
        line = f"{summary.status}" + (f": {summary.error}" if summary.error else "")
        self._each(lambda b: b.text("status", line, step))
        self._each(lambda b: b.flush())

    def samples(self, name: str, sampler: str, completions: Path, metrics: dict, step: int) -> None:
        if not self:
            return
        values = _numbers(metrics, f"samples/{name}/{sampler}/")
        self._each(lambda b: b.scalars(values, step))
        shown = _first_rows(completions, self.cfg.logger.samples)
        if shown:
            text = "\n\n".join(f"**prompt** {r['prompt']!r}\n\n**completion** {r['completion']!r}" for r in shown)
            self._each(lambda b: b.text(f"samples/{name}/{sampler}", text, step))
        self._each(lambda b: b.flush())

    def close(self) -> None:
        """End the logger runs, unless `keep_open` holds them for sampling in the same process."""
        if self.run is not None and _key(self.run) in _HELD:
            self._each(lambda b: b.flush())
            return
        self._close()

    def _close(self) -> None:
        if self.run is not None:
            _OPEN.pop(_key(self.run), None)
        status = self.status
        self._each(lambda b: b.close(status))
        self.backends = []
        self.save_state()


OFF = Loggers()

_OPEN: dict[Path, Loggers] = {}  # run folder -> its open loggers (training, then sampling)
_HELD: set[Path] = set()  # run folders whose loggers stay open when training closes them


def _key(run: RunFolder) -> Path:
    return run.path.resolve()


def start(cfg: Config, run: RunFolder, *, resume_from: int | None = None, mode: str | None = None) -> Loggers:
    """Open every enabled logger for `run`: fresh, or resuming from checkpoint step `resume_from`.
    A missing package or a logger that cannot start is a UserError, raised before any training."""
    if not cfg.logger.enabled():
        return OFF
    if _key(run) in _OPEN:
        return _OPEN[_key(run)]
    check_installed(cfg.logger)
    mode = mode or ("fresh" if resume_from is None else "resume")
    path = run.logs_dir / STATE_FILE
    state = read_json(path, f"delete {run.logs_dir} to start the loggers afresh") if path.is_file() else {}
    lg = Loggers(cfg, run, state=state)
    opening = Opening(cfg, run, mode, resume_from, state, lg.save_state)
    run.logs_dir.mkdir(parents=True, exist_ok=True)
    for name in cfg.logger.enabled():
        try:
            lg.backends.append(BACKENDS[name](getattr(cfg.logger, name), opening))
        except Exception as exc:
            lg._close()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            online = name == "wandb" and cfg.logger.wandb.mode == "online"
            raise UserError(f"logger {name} could not start: {first}"
                            + ("; run `wandb login`, or use logger.wandb.mode=offline" if online else "")) from None
    lg.save_state()
    if mode == "fresh":
        lg.hparams(cfg)
    _OPEN[_key(run)] = lg
    return lg


@contextmanager
def keep_open(run_dir: Path):
    """Within this block the loggers a training opens for run_dir stay open, so the samples
    written after it go to the same logger runs (task.job: train, then sample)."""
    key = Path(run_dir).resolve()
    _HELD.add(key)
    try:
        yield
    except BaseException:  # sampling failed after a completed training: the job failed
        if key in _OPEN and _OPEN[key].status == "completed":
            _OPEN[key].status = "failed"
        raise
    finally:
        _HELD.discard(key)
        lg = _OPEN.get(key)
        if lg is not None:
            lg._close()


def log_samples(cfg: Config, run: RunFolder, name: str, sampler: str, completions: Path, metrics: dict,
                step: int) -> None:
    """One sampler's results to the run's loggers (sample.py calls this once the sampler's
    <sampler>.jsonl is written): its metrics, and its first `logger.samples` completions as
    text, at the sampled checkpoint's step. Loggers still open from training take them,
    else the same logger runs are reopened for this call."""
    if not cfg.logger.enabled():
        return
    lg = _OPEN.get(_key(run))
    if lg is not None:
        lg.samples(name, sampler, completions, metrics, step)
        return
    try:
        lg = start(cfg, run, mode="append")
    except UserError as err:  # e.g. sampling on a machine without the logger's package: the samples still count
        log.warning("samples not sent to the loggers: %s", err)
        return
    try:
        lg.samples(name, sampler, completions, metrics, step)
    finally:
        lg._close()


def _first_rows(path: Path, n: int) -> list[dict]:
    """The first n rows (prompt, completion) of a samples/<name>/<sampler>.jsonl."""
    rows = []
    with open(path) as f:
        for line in f:
            if len(rows) >= n:
                break
            row = json.loads(line)
            rows.append({"prompt": row.get("prompt", ""), "completion": row.get("completion", "")})
    return rows
