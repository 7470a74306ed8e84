"""Experiment loggers: what each backend holds, read back through its own library; a resumed
run continues the same logger runs without repeating a step; bad logger input fails in one
line before any training. W&B runs offline only (WANDB_MODE=offline, a temporary WANDB_DIR)."""

import csv
import glob
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY, compose, make_run_dir
from dropsample import loggers, task, training
from dropsample.errors import ConfigError
from dropsample.runs import RunFolder
from dropsample.schema import config_hash

pytest.importorskip("tensorboard", reason='needs pip install "dropsample[all]"')
pytest.importorskip("wandb")
pytest.importorskip("mlflow")

ALL = "logger=[tensorboard,csv,wandb,mlflow]"
BASE = [o for o in TINY if not o.startswith(("train.max_iters", "train.eval_interval"))] + [
    "train.max_iters=20", "train.eval_interval=10", "train.log_interval=5", "samplers=[greedy]",
]
LOGGED = (5, 10, 15, 20)  # train steps logged at log_interval 5
EVALS = [0, 10, 20]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """W&B strictly offline, and one MLflow SQLite store for the module (its schema is made once)."""
    root = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(root / "wandb"))
        mp.setenv("WANDB_SILENT", "true")
        yield root


def config(env, *extra):
    return compose(BASE + [ALL, f"runs_root={env}", *extra])


# -- reading each backend back --------------------------------------------------


def tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"))
    acc.Reload()
    return acc


def tb_series(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def csv_rows(run_dir):
    with open(run_dir / "logs" / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def csv_series(rows, column):
    return [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]


def mlflow_client(run_dir):
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "logs" / "loggers.json").read_text())["mlflow"]
    return MlflowClient(state["tracking_uri"]), state["run_id"]


def mlflow_series(run_dir, name):
    client, run_id = mlflow_client(run_dir)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def wandb_history(path):
    """History rows of one offline .wandb file: W&B's record log (a 7-byte header, then
    LevelDB-style records of protobuf `Record`s in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf, rows = Path(path).read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                rows.append((record.history.step.num, items))
    return rows


def of_run(folder, run_id):
    """W&B names an offline folder offline-run-<time>-<id>, adding -1, -2... when two processes
    of the same run start within one second."""
    return re.search(rf"-{run_id}(-\d+)?$", folder) is not None


def wandb_runs(run_dir):
    """(run id, offline run folders) of a run folder, oldest first."""
    run_id = json.loads((run_dir / "logs" / "loggers.json").read_text())["wandb"]["id"]
    return run_id, sorted(glob.glob(str(run_dir / "logs" / "wandb" / "offline-run-*")))


def wandb_series(run_dir, name):
    _, folders = wandb_runs(run_dir)
    out = []
    for folder in folders:
        (path,) = glob.glob(f"{folder}/run-*.wandb")
        out += [(step, float(items[name])) for step, items in wandb_history(path) if name in items]
    return out


# -- one run, every logger ----------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(env):
    """train + sample with all four loggers, as `dropsample train` runs a job."""
    cfg = config(env, "sample_after_train=true")
    run_dir = make_run_dir(env, cfg, "all")
    summary = task.job(cfg, run_dir)
    assert summary.status == "completed"
    run = RunFolder(run_dir)
    name = summary.latest_samples
    return cfg, run_dir, run.metrics(), summary, name, run.sample_metrics(name)


def test_tensorboard_events_hold_the_run(logged_run):
    cfg, run_dir, rows, summary, name, samples = logged_run
    acc = tensorboard(run_dir)
    # evaluations: the metrics.jsonl rows, as float32
    val = tb_series(acc, "eval/val_loss")
    assert [s for s, _ in val] == [r["step"] for r in rows] == EVALS
    assert [v for _, v in val] == pytest.approx([r["val_loss"] for r in rows], rel=1e-6)
    # every log_interval steps: lr by hand from the schedule, the dropout in effect
    lr = tb_series(acc, "train/lr")
    assert [s for s, _ in lr] == list(LOGGED)
    assert [v for _, v in lr] == pytest.approx([training.lr_at(s - 1, cfg.train) for s in LOGGED], rel=1e-6)
    assert [v for _, v in tb_series(acc, "dropout/attn")] == pytest.approx([0.1] * len(LOGGED))
    assert [v for _, v in tb_series(acc, "dropout/mlp_hidden")] == [0.0] * len(LOGGED)  # not a standard site
    assert len(tb_series(acc, "train/tokens_per_sec")) == len(LOGGED)
    assert tb_series(acc, "final/best_val_loss") == [(20, pytest.approx(summary.best_val_loss, rel=1e-6))]
    # the config as hyper-parameters, in this run's own event file
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["dropout.rate"].number_value == pytest.approx(0.1)
    assert json.loads(start.hparams["dropout.sites"].string_value) == cfg.dropout.sites
    # the sampler: its metrics at the sampled checkpoint's step, and its first completion as text
    step = summary.best_step
    assert tb_series(acc, f"samples/{name}/greedy/distinct_4_token") == [
        (step, pytest.approx(samples["samplers"]["greedy"]["distinct_4_token"]["value"], rel=1e-6))]
    first = json.loads((run_dir / "samples" / name / "greedy.jsonl").read_text().splitlines()[0])
    text = acc.Tensors(f"samples/{name}/greedy/text_summary")[0].tensor_proto.string_val[0].decode()
    assert repr(first["completion"]) in text


def test_csv_holds_the_run_exactly(logged_run):
    cfg, run_dir, rows, summary, name, samples = logged_run
    table = csv_rows(run_dir)
    assert csv_series(table, "eval/val_loss") == [(r["step"], r["val_loss"]) for r in rows]  # exact: repr
    assert [s for s, _ in csv_series(table, "train/loss")] == list(LOGGED)
    assert csv_series(table, "final/gap") == [(20, summary.gap)]
    assert csv_series(table, f"samples/{name}/greedy/gen_ppl") == [
        (summary.best_step, samples["samplers"]["greedy"]["gen_ppl"]["value"])]
    hparams = yaml.safe_load((run_dir / "logs" / "csv" / "hparams.yaml").read_text())
    assert hparams["dropout"]["rate"] == 0.1 and hparams["model"]["n_layer"] == cfg.model.n_layer


def test_mlflow_run_in_sqlite_holds_metrics_params_and_samples(logged_run, env):
    cfg, run_dir, rows, summary, name, samples = logged_run
    client, run_id = mlflow_client(run_dir)
    assert client.tracking_uri == f"sqlite:///{env / 'mlflow.db'}" and (env / "mlflow.db").is_file()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert run.data.params["dropout.rate"] == "0.1" and run.data.params["train.max_iters"] == "20"
    assert client.get_experiment(run.info.experiment_id).name == cfg.experiment_name
    assert mlflow_series(run_dir, "eval/val_loss") == [(r["step"], r["val_loss"]) for r in rows]  # float64
    assert mlflow_series(run_dir, "final/best_val_loss") == [(20, summary.best_val_loss)]
    assert [f.path for f in client.list_artifacts(run_id, f"samples/{name}")] == [f"samples/{name}/greedy.txt"]


def test_wandb_offline_run_folder_holds_the_history(logged_run):
    cfg, run_dir, rows, summary, name, samples = logged_run
    run_id, folders = wandb_runs(run_dir)
    # training and sampling went to one W&B run: one offline folder named with the stored id
    assert len(folders) == 1 and folders[0].endswith(f"-{run_id}")
    assert wandb_series(run_dir, "eval/val_loss") == [(r["step"], r["val_loss"]) for r in rows]
    assert [s for s, _ in wandb_series(run_dir, "train/loss")] == list(LOGGED)
    # a W&B history only moves forward: the sample metrics join the last step
    assert wandb_series(run_dir, f"samples/{name}/greedy/distinct_4_token") == [
        (20, samples["samplers"]["greedy"]["distinct_4_token"]["value"])]


# -- resume ---------------------------------------------------------------------------


def interrupt_after(monkeypatch, batches: int) -> None:
    real_next, calls = training.Batches.next, [0]

    def interrupting(self):
        calls[0] += 1
        if calls[0] == batches:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(training.Batches, "next", interrupting)


def test_resumed_run_continues_every_logger_without_repeating_a_step(env, monkeypatch):
    cfg = config(env, "sample_after_train=false", "experiment_name=resume")
    full_dir = make_run_dir(env, cfg, "full")
    assert training.train(cfg, full_dir).status == "completed"

    cut_dir = make_run_dir(env, cfg, "cut")
    with monkeypatch.context() as m:
        # 4 batches per evaluation, 1 per step: batch 26 is step 18, after step 15 was logged
        # and the checkpoint of step 10, so the lost process logged a step the resumed one repeats
        interrupt_after(m, 26)
        assert training.train(cfg, cut_dir).status == "interrupted"
    first = json.loads((cut_dir / "logs" / "loggers.json").read_text())
    assert first["wandb"]["last_step"] == 15
    assert [s for s, _ in csv_series(csv_rows(cut_dir), "train/loss")] == [5, 10, 15]
    assert training.train(cfg, cut_dir, resume=True).status == "completed"
    after = json.loads((cut_dir / "logs" / "loggers.json").read_text())
    assert after["wandb"]["id"] == first["wandb"]["id"] and after["mlflow"]["run_id"] == first["mlflow"]["run_id"]

    for name in ("train/loss", "eval/val_loss", "train/lr", "dropout/attn"):
        cut = {"tensorboard": tb_series(tensorboard(cut_dir), name), "csv": csv_series(csv_rows(cut_dir), name),
               "mlflow": mlflow_series(cut_dir, name), "wandb": wandb_series(cut_dir, name)}
        full = {"tensorboard": tb_series(tensorboard(full_dir), name), "csv": csv_series(csv_rows(full_dir), name),
                "mlflow": mlflow_series(full_dir, name), "wandb": wandb_series(full_dir, name)}
        for backend in cut:
            steps = [s for s, _ in cut[backend]]
            assert len(steps) == len(set(steps)), f"{backend} repeats a step of {name}: {steps}"
            # resume is bit-exact, so the resumed run's points are the uninterrupted run's
            assert cut[backend] == full[backend], (backend, name)
    # W&B: the resumed process wrote a second offline folder for the same run id
    run_id, folders = wandb_runs(cut_dir)
    assert len(folders) == 2 and all(of_run(f, run_id) for f in folders)
    client, run_id = mlflow_client(cut_dir)
    assert client.get_run(run_id).info.status == "FINISHED"

    # a later `dropsample sample` adds its samples to the same logger runs
    from dropsample.sample import sample_run

    sample_run(cut_dir, samplers=["greedy"], gen=cfg.gen, name="later")
    step = RunFolder(cut_dir).summary().best_step
    assert [s for s, _ in tb_series(tensorboard(cut_dir), "samples/later/greedy/distinct_4_token")] == [step]
    assert [s for s, _ in csv_series(csv_rows(cut_dir), "samples/later/greedy/distinct_4_token")] == [step]
    assert [s for s, _ in mlflow_series(cut_dir, "samples/later/greedy/distinct_4_token")] == [step]
    assert [f.path for f in client.list_artifacts(run_id, "samples/later")] == ["samples/later/greedy.txt"]
    run_id, folders = wandb_runs(cut_dir)
    assert len(folders) == 3 and all(of_run(f, run_id) for f in folders)
    assert [s for s, _ in wandb_series(cut_dir, "samples/later/greedy/distinct_4_token")] == [20]  # the last step


# -- failures and bad input -----------------------------------------------------------


def test_a_logger_failing_mid_run_is_switched_off_and_training_completes(env, monkeypatch, caplog):
    cfg = compose(BASE + ["logger=[tensorboard,csv]", f"runs_root={env}", "sample_after_train=false",
                          "train.max_iters=10"])
    run_dir = make_run_dir(env, cfg, "flaky")
    monkeypatch.setattr(loggers.Csv, "scalars", lambda self, values, step: (_ for _ in ()).throw(OSError("disk full")))
    assert training.train(cfg, run_dir).status == "completed"
    assert "logger csv failed (OSError: disk full); it is off for the rest of this run" in caplog.text
    assert [s for s, _ in tb_series(tensorboard(run_dir), "eval/val_loss")] == [0, 10]


def test_logger_keys_are_not_result_identity():
    plain = compose(["model=tiny"])
    logged = compose(["model=tiny", "logger=[tensorboard,csv]", "logger.samples=2", "objective=gap"])
    assert logged.logger.enabled() == ["tensorboard", "csv"]
    assert config_hash(plain) == config_hash(logged)  # a sweep rerun with a logger added skips finished work


def test_mlflow_file_store_is_refused():
    with pytest.raises(ConfigError, match="logger.mlflow.tracking_uri: got './mlruns'; MLflow's file store is "
                                          "deprecated: use sqlite:///PATH.db"):
        compose(["model=tiny", "logger=mlflow", "logger.mlflow.tracking_uri=./mlruns"])


@pytest.mark.parametrize("name,extra", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_logger_package_fails_in_one_line_before_training(tmp_path, name, extra):
    # sys.modules[x] = None is how Python spells "not installed" to importlib.util.find_spec
    hide = "sqlalchemy" if name == "mlflow" else name
    code = (f"import sys; sys.modules[{hide!r}] = None; "
            f"sys.argv = ['dropsample', 'train', *{TINY!r}, 'logger=[csv,{name}]']; "
            "from dropsample.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: logger: {name} needs the {hide} package; "
                                     f'pip install "dropsample[{extra}]" (or drop {name} from logger=)')
    assert not (tmp_path / "runs").exists()
