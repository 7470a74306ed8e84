"""`sample` end to end on a tiny (untrained) run with a separate judge run; disjoint reference
windows; the sampler table in 80 columns."""

import json

import numpy as np
import pytest

from conftest import compose
from dropsample import sample as sample_mod
from dropsample.config import check_prompt_span
from dropsample.errors import ConfigError
from dropsample.metrics import registry
from dropsample.runs import RunFolder
from test_judge import fake_run


def test_reference_windows_are_disjoint_and_too_many_name_the_most():
    gen = compose(["gen.num_samples=50", "gen.prompt_tokens=7", "gen.max_new_tokens=13"]).gen
    starts = sample_mod.reference_windows(1010, gen)
    assert len(set(starts.tolist())) == 50 and starts.min() >= 0 and starts.max() + 20 <= 1010
    ordered = np.sort(starts)
    assert (np.diff(ordered) >= 20).all()  # no two windows of 20 tokens share a token
    assert (sample_mod.reference_windows(1010, gen) == starts).all()  # seeded
    check_prompt_span(gen, 1000)  # 1000 // 20 = 50 windows: just fits
    with pytest.raises(ConfigError) as err:
        check_prompt_span(gen, 999)
    assert "at most 49" in str(err.value) and "gen.num_samples<=49" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    pytest.importorskip("mauve")
    tmp = tmp_path_factory.mktemp("sample")
    judge_dir, _, _ = fake_run(tmp, "judge", seed=1, block_size=32)
    run_dir, _, _ = fake_run(tmp, "run", seed=2, block_size=16)
    out = sample_mod.sample_command(run_dir, ["samplers=[greedy,top_p_0.9]", "gen.num_samples=24",
                                              "gen.prompt_tokens=8", "gen.max_new_tokens=12", "gen.bootstrap=200",
                                              f"judge={judge_dir}"], name="t", prompt=None)
    return run_dir, judge_dir, out


def test_sample_writes_metrics_in_the_registry_shape(sampled, capsys):
    run_dir, judge_dir, out = sampled
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["samplers"]) == {"greedy", "top_p_0.9"}
    for rows in (*report["samplers"].values(), report["reference"]):
        assert set(rows) == set(registry.BY_NAME)
        assert all(set(e) == {"value", "low", "high"} for e in rows.values())
    top_p = report["samplers"]["top_p_0.9"]
    for name in ("gen_ppl", "distinct_1", "distinct_1_token", "self_bleu_4", "rep_2_token", "compression_ratio"):
        e = top_p[name]
        assert e["low"] <= e["value"] <= e["high"], name
    assert top_p["mauve"]["value"] is not None and top_p["mauve"]["low"] is None
    assert report["reference"]["mauve"]["value"] is None  # the reference is MAUVE's P
    assert report["judge"]["kind"] == "run" and report["judge"]["path"] == str(judge_dir.resolve())
    assert report["mauve"]["num_buckets"] == 2 and "5000" in report["mauve"]["warning"]
    summary = RunFolder(run_dir).summary()
    assert summary.samples["t"]["headline"]["greedy"]["gen_ppl"] == report["samplers"]["greedy"]["gen_ppl"]["value"]
    assert summary.samples["t"]["judge"]["kind"] == "run" and summary.latest_samples == "t"
    refs = [json.loads(x) for x in (out / "reference.jsonl").read_text().splitlines()]
    assert len(refs) == 24 and len({r["prompt"] + r["completion"] for r in refs}) == 24


def test_self_scored_without_judge(sampled):
    run_dir, _, _ = sampled
    out = sample_mod.sample_command(run_dir, ["samplers=[greedy]", "gen.num_samples=6", "gen.prompt_tokens=8",
                                              "gen.max_new_tokens=6", "gen.bootstrap=0"], name="self", prompt=None)
    report = json.loads((out / "metrics.json").read_text())
    assert report["judge"]["kind"] == "self" and report["mauve"] is None
    greedy = report["samplers"]["greedy"]
    assert greedy["gen_ppl"]["value"] > 1 and greedy["mauve"]["value"] is None and greedy["gen_ppl"]["low"] is None


def test_the_table_fits_80_columns_and_keeps_every_digit():
    def e(v, half):
        return {"value": v, "low": v - half, "high": v + half}

    rows = {name: e(0.123456, 0.0121) for name in registry.BY_NAME}
    rows["gen_ppl"] = e(12345.678, 123.4)
    rows["tokens_per_sec"] = {"value": 123456.0, "low": None, "high": None}
    report = {"samplers": {"a_very_long_sampler_name": rows, "greedy": rows}, "reference": rows,
              "tokenizer": "char", "prompts": "some prompts",
              "judge": {"kind": "run", "path": "/runs/judge", "step": 9, "config_hash": "h"},
              "bootstrap": {"replicates": 1000}}
    lines = sample_mod.table_lines(report, "title")
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert "12,346 ± 123" in text and "0.123 ± 0.012" in text and "123,456" in text
    assert "…" not in text and "[word]" in text and "[judge]" in text
    for m in registry.METRICS:
        if not m.name.endswith("_token"):
            assert m.label in text
