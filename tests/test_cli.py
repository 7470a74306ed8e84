"""End to end through the installed command, on the tiny preset and ../shared/data."""

import json
import math

import pytest
import torch
import yaml

from conftest import TINY, cli, run_cli
from dropsample import checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("e2e")
    cli("train", *TINY, "name=e2e", "experiment_name=smoke", cwd=cwd, check=True)
    (found,) = list((cwd / "runs" / "smoke").glob("*_e2e"))
    return found


def test_run_folder_has_every_file(run_dir):
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["model"]["n_layer"] == 2
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 20, 40]
    for r in rows:
        assert r["gap"] == pytest.approx(r["val_loss"] - r["train_loss"])
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
        assert r["dropout"]["embd"] == 0.1 and r["dropout"]["mlp_hidden"] == 0.0
        assert {"tokens", "lr", "tokens_per_sec", "elapsed_sec", "dropout_factor"} <= set(r)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"], "training lowers the loss"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["final_val_loss"] == rows[-1]["val_loss"]
    assert summary["best_val_loss"] == min(r["val_loss"] for r in rows)
    assert summary["ppl_ratio"] == pytest.approx(math.exp(summary["gap"]))
    assert summary["params"] > 0 and summary["tokens_per_sec"] > 0 and summary["wall_seconds"] > 0
    assert summary["data"]["sources"]["train"].startswith("input.txt[0:")
    for which in ("best", "last"):
        folder = run_dir / "checkpoints" / which
        assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json",
                                                      "state.safetensors", "state.json"}
    assert checkpoint.load(run_dir / "checkpoints" / "last").state["step"] == 40
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    assert tok.get_vocab_size() == 66
    assert "eval step 40" in (run_dir / "train.log").read_text()
    # train ended by sampling with each configured sampler
    (samples,) = list((run_dir / "samples").iterdir())
    report = json.loads((samples / "metrics.json").read_text())
    assert set(report["samplers"]) == {"greedy", "top_p_0.9"} and report["reference"] is not None
    lines = [json.loads(x) for x in (samples / "top_p_0.9.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and [x["seed"] for x in lines] == [0, 1, 2, 3]
    assert all(len(x["completion_ids"]) == 24 and tok.decode(x["completion_ids"]) == x["completion"] for x in lines)
    assert summary["samples"][samples.name]["headline"]["greedy"]["distinct_4_token"] is not None


def test_sample_into_a_named_folder_without_overwriting(run_dir):
    result = cli("sample", str(run_dir), "samplers=[greedy,{base:top_k_40,temperature:0.7},beam_4]",
                 "gen.num_samples=3", "gen.max_new_tokens=40", "--name", "mine", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    out = run_dir / "samples" / "mine"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["beam_4.jsonl", "greedy.jsonl", "metrics.json", "reference.jsonl", "top_k_40+temperature=0.7.jsonl"]
    assert "reference text" in result.stderr and "self-BLEU" in result.stderr  # the comparison table
    again = cli("sample", str(run_dir), "--name", "mine", cwd=run_dir)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    bad = cli("sample", str(run_dir), "train.lr=1", cwd=run_dir)
    assert bad.returncode == 2 and "only gen.* and samplers" in bad.stderr
    prompt = cli("sample", str(run_dir), "--prompt", "ROMEO:", "samplers=[greedy]", "gen.num_samples=2", "--name", "p",
                 cwd=run_dir)
    assert prompt.returncode == 0, prompt.stderr
    rows = [json.loads(x) for x in (run_dir / "samples" / "p" / "greedy.jsonl").read_text().splitlines()]
    assert rows[0]["prompt"] == "ROMEO:" and rows[0]["completion"] == rows[1]["completion"]


def test_unnamed_samplings_in_the_same_second_keep_both(run_dir, monkeypatch):
    from dropsample import sample

    monkeypatch.setattr(sample.time, "strftime", lambda fmt: "2026-01-01_00-00-00")
    for _ in range(2):
        result = run_cli("sample", str(run_dir), "samplers=[greedy]", "gen.num_samples=2", cwd=run_dir)
        assert result.returncode == 0, result.stderr
    for name in ("2026-01-01_00-00-00", "2026-01-01_00-00-00_2"):
        assert (run_dir / "samples" / name / "greedy.jsonl").is_file(), name
        assert name in json.loads((run_dir / "summary.json").read_text())["samples"]


def test_eval_records_val_loss(run_dir):
    result = cli("eval", str(run_dir), "--checkpoint", "last", "--batches", "4", "--mc-samples", "3", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "summary.json").read_text())["eval"]
    val = record["splits"]["val"]
    assert val["ppl"] == pytest.approx(math.exp(val["loss"])) and val["bpc"] == pytest.approx(val["loss"] / math.log(2))
    assert val["mc_loss"] > 0 and record["step"] == 40
    # close to the training loop's estimate of the same checkpoint
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert abs(val["loss"] - rows[-1]["val_loss"]) < 0.15


def test_export_loads_in_transformers_with_equal_logits(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    result = cli("export", str(run_dir), str(tmp_path / "hf"), "--format", "hf", cwd=run_dir)
    assert result.returncode == 0, result.stderr
    peer = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ours = checkpoint.load(run_dir / "checkpoints" / "best").load_model().eval()
    x = torch.randint(0, 66, (2, 32))
    torch.testing.assert_close(peer(x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    assert tok.decode(tok("To be, or not")["input_ids"]) == "To be, or not"
    again = cli("export", str(run_dir), str(tmp_path / "hf"), cwd=run_dir)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_help_points_to_config_groups(tmp_path):
    result = cli("train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "model=tiny|baby|shakespeare|gpt2" in result.stdout and "dropout.rate" in result.stdout


def test_printing_a_sweeps_config_is_refused_in_one_line(tmp_path):
    result = run_cli("train", "-m", "dropout.rate=0,0.1", "--cfg", "job", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: --cfg prints one run's config or Hydra's settings and cannot go with -m; drop -m (and give each "
        "swept key one value) to see a job's config"]
    assert not list(tmp_path.iterdir())  # nothing written


def test_relative_paths_are_read_from_the_launch_directory_by_every_later_command(tmp_path):
    # trained from `here` with relative data.path and gen.prompt_file; sampled, evaluated and
    # resumed from `elsewhere`, where those names mean nothing
    from conftest import DATA_DIR
    from dropsample.runs import RunFolder
    from dropsample.schema import config_hash

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    (here / "corpus.txt").write_text((DATA_DIR / "tinyshakespeare" / "input.txt").read_text()[:200_000])
    (here / "prompts.txt").write_text("ROMEO:\nJULIET:\n")
    run = tmp_path / "run"
    cli("train", *TINY, "data.path=corpus.txt", "gen.prompt_file=prompts.txt", "gen.num_samples=2",
        f"hydra.run.dir={run}", cwd=here, check=True)
    folder = RunFolder(run)
    assert folder.config().data.path == str(here / "corpus.txt")
    assert folder.summary().config_hash == config_hash(folder.config())  # one identity, whoever reads it

    evaluated = run_cli("eval", str(run), cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((run / "eval.json").read_text())
    sampled = run_cli("sample", str(run), "--name", "again", cwd=elsewhere)
    assert sampled.returncode == 0, sampled.stderr
    prompts = [json.loads(x)["prompt"] for x in (run / "samples" / "again" / "greedy.jsonl").read_text().splitlines()]
    assert prompts == ["ROMEO:", "JULIET:"]

    before = folder.summary().config_hash
    folder.update_summary(status="interrupted")  # as a stopped run leaves it
    resumed = run_cli("train", "--resume", str(run), cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert folder.summary().status == "completed" and folder.summary().config_hash == before
