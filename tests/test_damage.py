"""Every command against every kind of damaged run file: one line naming the file and the way
out, the right exit code (3 damaged, 2 missing or bad input), no traceback, nothing lost."""

import json
import shutil

import pytest

from conftest import TINY, cli, run_cli

SHORT = [o for o in TINY if not o.startswith("train.max_iters")] + ["train.max_iters=20", "train.eval_interval=10"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("damage")
    cli("train", *SHORT, "name=ok", "experiment_name=d", cwd=cwd, check=True)
    (run,) = (cwd / "runs" / "d").iterdir()
    return run


@pytest.fixture
def run(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


def garbage(path):
    path.write_bytes(b"\x00\xffnot what it should be" * 3)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def assert_one_line(result, code, *needles):
    err = result.stderr.strip()
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


# (damage, file under the run folder, expected words)
CHECKPOINT_DAMAGE = [
    (garbage, "checkpoints/best/model.safetensors", "not a readable safetensors file"),
    (truncate, "checkpoints/best/model.safetensors", "not a readable safetensors file"),
    (lambda p: edit_json(p, n_embd=64), "checkpoints/best/config.json", "weights do not fit config.json"),
    (lambda p: edit_json(p, n_layer="two"), "checkpoints/best/config.json", "not a positive integer"),
    (truncate, "checkpoints/best/state.json", "invalid JSON"),
    (lambda p: edit_json(p, step="ten"), "checkpoints/best/state.json", "not a step count"),
    (garbage, "checkpoints/best/tokenizer.json", "tokenizer"),
]


@pytest.mark.parametrize("damage,name,words", CHECKPOINT_DAMAGE, ids=lambda x: getattr(x, "__name__", str(x)))
@pytest.mark.parametrize("command", ["sample", "eval", "export"])
def test_damaged_best_checkpoint(run, tmp_path, damage, name, words, command):
    damage(run / name)
    args = {"sample": ["sample", str(run), "gen.num_samples=2"], "eval": ["eval", str(run), "--batches", "1"],
            "export": ["export", str(run), str(tmp_path / "out")]}[command]
    result = run_cli(*args, cwd=tmp_path)
    fix = "gen.checkpoint=last" if command == "sample" else "--checkpoint last"
    assert_one_line(result, 3, str(run / name.split("/")[0]), "damaged", words, fix)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "export wrote nothing"
    # the other checkpoint still works: nothing was lost
    if command == "eval":
        assert run_cli("eval", str(run), "--checkpoint", "last", "--batches", "1", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("name,damage", [("model.safetensors", truncate), ("state.safetensors", garbage),
                                         ("state.json", truncate)])
def test_resume_from_a_damaged_last_checkpoint(run, tmp_path, name, damage):
    edit_json(run / "summary.json", status="interrupted")
    damage(run / "checkpoints" / "last" / name)
    result = run_cli("train", "--resume", str(run), cwd=tmp_path)
    assert_one_line(result, 3, "checkpoints/last", "damaged", "cannot resume")


def test_missing_checkpoint_is_bad_input_not_damage(run, tmp_path):
    shutil.rmtree(run / "checkpoints" / "best")
    result = run_cli("eval", str(run), cwd=tmp_path)
    assert_one_line(result, 2, "has no checkpoints/best", "last")


@pytest.mark.parametrize("content,words", [("model: [unclosed\n", "unparsable YAML"),
                                           ("- just\n- a list\n", "not a mapping"),
                                           (None, "not a valid config: seed")])
@pytest.mark.parametrize("command", ["sample", "eval", "export", "resume", "report"])
def test_damaged_config_yaml(run, tmp_path, content, words, command):
    path = run / ".hydra" / "config.yaml"
    if content is None:  # a wrong type in an otherwise fine file
        path.write_text(path.read_text().replace("seed: 1337", "seed: abc"))
    else:
        path.write_text(content)
    args = {"sample": ["sample", str(run)], "eval": ["eval", str(run)], "export": ["export", str(run), str(tmp_path / "o")],
            "resume": ["train", "--resume", str(run)], "report": ["report", str(run), "--out", str(tmp_path / "r")]}
    result = run_cli(*args[command], cwd=tmp_path)
    assert_one_line(result, 3, ".hydra/config.yaml", "damaged", words)


@pytest.mark.parametrize("damage", [truncate, garbage, lambda p: edit_json(p, best_val_ppl="low"),
                                    lambda p: edit_json(p, status="great")], ids=["truncated", "garbage", "type", "status"])
def test_damaged_summary(run, tmp_path, damage):
    damage(run / "summary.json")
    report = run_cli("report", str(run), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert_one_line(report, 3, "summary.json", "damaged", "--skip-damaged")
    for args in (["sample", str(run), "gen.num_samples=2"], ["eval", str(run)], ["train", "--resume", str(run)]):
        assert_one_line(run_cli(*args, cwd=tmp_path), 3, "summary.json", "damaged")
    assert not list((run / "samples").glob("2*")) or len(list((run / "samples").iterdir())) == 1, "sample did no work"


def test_status_and_report_show_a_damaged_job_and_go_on(pristine, tmp_path):
    sweep = tmp_path / "sweep"
    for n in range(2):
        shutil.copytree(pristine, sweep / f"job{n}")
    truncate(sweep / "job1" / "summary.json")
    status = run_cli("status", str(sweep), cwd=tmp_path)
    assert status.returncode == 0 and "damaged" in status.stdout and "Traceback" not in status.stderr
    report = run_cli("report", str(sweep), "--skip-damaged", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    md = (sweep / "report.md").read_text()
    assert "Left out, could not be read:" in md and "job1/summary.json is damaged" in md


@pytest.mark.parametrize("line,code", [("{not json", 3), ('{"step": "x"}', 3)])
def test_damaged_metrics_rows(run, tmp_path, line, code):
    rows = (run / "metrics.jsonl").read_text().splitlines()
    rows.insert(1, line)
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    assert_one_line(run_cli("report", str(run), "--out", str(tmp_path / "r"), cwd=tmp_path), code, "metrics.jsonl",
                    "line 2")


def test_a_cut_last_metrics_line_is_what_a_kill_leaves_not_damage(run, tmp_path):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "train_lo')
    assert run_cli("report", str(run), "--out", str(tmp_path / "r"), cwd=tmp_path).returncode == 0


def test_damaged_sample_metrics_and_eval_history(run, tmp_path):
    (samples,) = (run / "samples").iterdir()
    truncate(samples / "metrics.json")
    assert_one_line(run_cli("report", str(run), "--out", str(tmp_path / "r"), cwd=tmp_path), 3, "metrics.json",
                    "sample again")
    (run / "eval.json").write_text("[1, 2]")
    assert_one_line(run_cli("eval", str(run), "--batches", "1", cwd=tmp_path), 3, "eval.json", "holds a list")
