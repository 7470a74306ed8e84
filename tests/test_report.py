"""`dropsample report` on run folders written with known numbers: intervals, paired tests,
findings that claim only what the statistics support, tables that fit 100 columns, a long-format
results.csv equal to metrics.json, plots with the expected series, one-file HTML, terminal width."""

from __future__ import annotations

import base64
import csv
import math
import re

import pytest
import yaml

from conftest import compose, run_cli
from dropsample.runs import RunFolder, write_json_atomic

SAMPLERS = ["greedy", "pure", "temp_0.7", "top_k_40", "top_p_0.9", "min_p_0.1", "typical_0.95"]
SITES = ("embd", "attn", "resid_attn", "resid_mlp")


@pytest.fixture(scope="module")
def base_config():
    from dropsample.schema import to_dict

    return to_dict(compose(["model=tiny"]))


def entry(value, half=None):
    """A metrics.json entry in the registry's form."""
    return {"value": value, "low": None if half is None else value - half, "high": None if half is None else value + half}


def write_run(folder, config, *, seed, rate, tokenizer="char", summary=None, rows=None, samples=None, settings=None,
              judge=None):
    """A completed run folder with the given numbers, written through RunFolder."""
    import copy

    cfg = copy.deepcopy(config)
    cfg["seed"], cfg["dropout"]["rate"], cfg["data"]["tokenizer"] = seed, rate, tokenizer
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = RunFolder(folder)
    fields = {"status": "completed", "best_step": 20, "dropout": {s: rate for s in SITES},
              "dropout_schedule": "constant", **(summary or {})}
    run.update_summary(**fields)
    for row in rows or [{"step": 0, "train_loss": 4.0, "val_loss": 4.1}, {"step": 20, "train_loss": 2.0,
                                                                         "val_loss": 2.2}]:
        run.append_metrics(row)
    if samples is not None:
        run.samples("s").mkdir(parents=True)
        data = {"samplers": {k: v for k, v in samples.items() if k != "reference"},
                "reference": samples.get("reference"), "settings": settings or {}, "judge": judge}
        write_json_atomic(run.sample_metrics_path("s"), data)
        run.update_summary(latest_samples="s")
    return folder


def final(val_ppl, se=0.01, gap=0.05, gap_se=0.01, bpb=1.5, bpb_se=0.005):
    """summary.json's final-evaluation fields for a val loss of log(val_ppl) +- se."""
    loss = math.log(val_ppl)
    return {"val_loss": loss, "val_loss_se": se, "val_ppl": val_ppl, "val_ppl_low": math.exp(loss - 1.96 * se),
            "val_ppl_high": math.exp(loss + 1.96 * se), "val_bpb": bpb, "val_bpb_se": bpb_se,
            "train_loss": loss - gap, "train_loss_se": se, "gap": gap, "gap_se": gap_se}


def decoding(shift=0.0, flat_reference=False):
    """7 samplers + the reference: distinct_4 and self_bleu_4 with intervals, gen_ppl without."""
    out = {}
    for i, name in enumerate(SAMPLERS):
        out[name] = {"distinct_4": entry(0.30 + 0.08 * i + shift, 0.02), "self_bleu_4": entry(0.5 - 0.03 * i, 0.04),
                     "gen_ppl": entry(3.0 + i, None), "rep_2": entry(0.1, 0.01), "repetition": entry(0.0, 0.0),
                     "mystery_metric": 7.0, "mauve": entry(None)}  # not measured: no judge
    out["reference"] = {"distinct_4": 0.8, "gen_ppl": 6.5} if flat_reference else \
        {"distinct_4": entry(0.8, 0.03), "gen_ppl": entry(6.5, None)}
    return out


def report(paths, out, *args):
    result = run_cli("report", *map(str, paths), "--out", str(out), *args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def groups(paths):
    from dropsample.report.collect import collect, group

    return group(collect(paths)[0])


# ---------------------------------------------------------------------------


def test_results_csv_is_long_format_and_equals_metrics_json(base_config, tmp_path):
    pd = pytest.importorskip("pandas")
    sweep = tmp_path / "sweep"
    one = write_run(sweep / "job0", base_config, seed=0, rate=0.0, summary=final(20.0),
                    samples=decoding(flat_reference=True))
    for seed, ppl in ((0, 21.0), (1, 23.0)):
        write_run(sweep / f"job{seed + 1}", base_config, seed=seed, rate=0.3, summary=final(ppl),
                  samples=decoding(shift=0.01 * seed))
    report([sweep], tmp_path / "r", "--format", "csv")
    df = pd.read_csv(tmp_path / "r" / "results.csv")
    # one row per configuration x sampler x metric: 8 rows x 6 metrics (reference 2), + training rows
    dec = df[df.stage == "decoding"]
    assert len(dec[dec["dropout.rate"] == 0.0]) == 7 * 6 + 2
    table = dec.pivot_table(index=["dropout.rate", "sampler"], columns="metric", values="value")
    assert table.loc[(0.0, "top_k_40"), "distinct_4"] == 0.30 + 0.08 * 3
    # a single run: exactly metrics.json's numbers, its bootstrap interval kept; a flat number has none
    written = RunFolder(one).sample_metrics("s")
    for sampler, values in written["samplers"].items():
        for metric, e in values.items():
            if isinstance(e, dict) and e["value"] is None:
                continue
            row = dec[(dec["dropout.rate"] == 0.0) & (dec.sampler == sampler) & (dec.metric == metric)].iloc[0]
            value = e["value"] if isinstance(e, dict) else e
            assert row.value == value
            if isinstance(e, dict) and e["low"] is not None:
                assert (row.low, row.high, row.interval) == (e["low"], e["high"], "bootstrap")
    ref = dec[(dec["dropout.rate"] == 0.0) & (dec.sampler == "reference") & (dec.metric == "distinct_4")].iloc[0]
    assert ref.value == 0.8 and math.isnan(ref.low)
    assert dec[dec.metric == "mystery_metric"].family.unique().tolist() == ["other"]
    assert "mauve" not in set(dec.metric), "a metric not measured has no row"
    # two seeds: mean and Student-t interval over seeds (t_0.975,1 = 12.706)
    got = dec[(dec["dropout.rate"] == 0.3) & (dec.sampler == "greedy") & (dec.metric == "distinct_4")].iloc[0]
    values = [0.30, 0.31]
    half = 12.706 * (0.01 / math.sqrt(2)) / math.sqrt(2)
    assert got.value == pytest.approx(sum(values) / 2, abs=1e-12)
    assert (got.low, got.high) == pytest.approx((0.305 - half, 0.305 + half), abs=1e-12)
    assert got.interval == "t over 2 seeds" and got.seeds == 2
    train = df[df.stage == "training"].set_index(["dropout.rate", "metric"])
    assert train.loc[(0.0, "val_ppl"), "value"] == 20.0
    assert train.loc[(0.0, "val_ppl"), "low"] == pytest.approx(math.exp(math.log(20) - 1.96 * 0.01))
    assert train.loc[(0.0, "gap"), "high"] == pytest.approx(0.05 + 1.959964 * 0.01)
    assert train.loc[(0.3, "val_ppl"), "value"] == 22.0
    assert train.loc[(0.3, "val_ppl"), "high"] == pytest.approx(22.0 + 12.706 * math.sqrt(2) / math.sqrt(2))


def test_report_md_tables_fit_100_columns_with_7_samplers(base_config, tmp_path):
    sweep = tmp_path / "sweep"
    for j, rate in enumerate((0.0, 0.1, 0.3)):
        for seed in (0, 1):
            write_run(sweep / f"job{2 * j + seed}", base_config, seed=seed, rate=rate,
                      summary=final(20.0 + rate + seed), samples=decoding(shift=0.001 * seed))
    report([sweep], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert table_lines and max(map(len, table_lines)) <= 100, max(table_lines, key=len)
    for section in ("## Training", "## Decoding", "### Quality", "### Diversity", "### Degeneration", "### Other",
                    "## Findings", "## Plots"):
        assert section in md, section
    decoding_part = md[md.index("## Decoding"):md.index("## Findings")]
    for name in SAMPLERS + ["reference"]:
        assert re.search(rf"\| +{re.escape(name)} +\|", decoding_part), name
    # each cell is mean ± half-width: greedy's distinct-4 at rate 0 over seeds 0 and 1
    half = 12.706 * (0.001 / math.sqrt(2)) / math.sqrt(2)
    assert f"0.3005 ± {half:.4f}" in decoding_part and "| 2 | 20.5 ± 6.4 |" in md.replace("  ", "")


def _config_pair(base_config, tmp_path, a, b, name):
    """Two single-run configurations with val ppl intervals a and b (ppl, se of the loss)."""
    sweep = tmp_path / name
    write_run(sweep / "job0", base_config, seed=0, rate=0.0, summary=final(a[0], se=a[1]))
    write_run(sweep / "job1", base_config, seed=0, rate=0.3, summary=final(b[0], se=b[1]))
    return sweep


def test_no_winner_is_named_when_intervals_overlap(base_config, tmp_path):
    from dropsample.report.findings import findings

    overlapping = groups([_config_pair(base_config, tmp_path, (20.0, 0.05), (20.5, 0.05), "overlap")])
    facts = findings(overlapping)
    texts = [f.text() for f in facts]
    assert not any("Best by val perplexity" in t or "significantly lower" in t for t in texts), texts
    (same,) = [f for f in facts if "val perplexity" in f.statement]
    assert same.kind == "no difference"
    assert same.statement.startswith("No significant difference in val perplexity between dropout.rate=0.0")
    assert "95% intervals" in same.evidence
    apart = groups([_config_pair(base_config, tmp_path, (20.0, 0.005), (22.0, 0.005), "apart")])
    (best,) = [f for f in findings(apart) if "val perplexity" in f.statement]
    assert best.kind == "difference" and best.statement.startswith("Best by val perplexity: dropout.rate=0.0")


def test_paired_test_across_seeds_finds_what_overlapping_intervals_hide(base_config, tmp_path):
    from dropsample.report.findings import compare, findings

    sweep = tmp_path / "paired"
    a, b = [10.0, 12.0, 14.0], [10.5, 12.6, 14.55]  # spread over seeds >> the per-seed difference
    for seed in range(3):
        write_run(sweep / f"a{seed}", base_config, seed=seed, rate=0.0, summary={"val_ppl": a[seed]})
        write_run(sweep / f"b{seed}", base_config, seed=seed, rate=0.3, summary={"val_ppl": b[seed]})
    ca, cb = groups([sweep])
    ea, eb = ca.training["val_ppl"], cb.training["val_ppl"]
    assert ea.low <= eb.high and eb.low <= ea.high, "the t-intervals over seeds overlap"
    c = compare(ea, eb, "a", "b")
    # by hand: differences -0.5, -0.6, -0.55: mean -0.55, sd 0.05, t_0.975,2 = 4.303
    half = 4.303 * 0.05 / math.sqrt(3)
    assert c.significant and f"[{-0.55 - half:.4f}, {-0.55 + half:.4f}], paired t over 3 seeds" in c.evidence
    (best,) = [f for f in findings([ca, cb]) if "val perplexity" in f.statement]
    assert best.kind == "difference" and "dropout.rate=0.0" in best.statement
    # without shared seeds the same numbers only give overlapping intervals: no claim
    for run in cb.runs:
        run.config["seed"] = run.config["seed"] + 10
    from dropsample.report.collect import summarize

    summarize(cb)
    (same,) = [f for f in findings([ca, cb]) if "val perplexity" in f.statement]
    assert same.kind == "no difference"


def test_different_tokenizers_are_compared_by_bits_per_byte(base_config, tmp_path):
    from dropsample.report.findings import findings

    sweep = tmp_path / "tok"
    write_run(sweep / "char", base_config, seed=0, rate=0.1, tokenizer="char",
              summary=final(4.0, bpb=1.80, bpb_se=0.001))
    write_run(sweep / "bpe", base_config, seed=0, rate=0.1, tokenizer="bpe",
              summary=final(60.0, bpb=1.70, bpb_se=0.001))
    facts = findings(groups([sweep]))
    texts = [f.statement for f in facts]
    assert any("different tokenizers (bpe, char)" in t and "bits per byte" in t for t in texts), texts
    assert not any("val perplexity" in t for t in texts), "per-token perplexities are never ranked across tokenizers"
    (best,) = [f for f in facts if "bits per byte" in f.statement and f.kind == "difference"]
    assert "data.tokenizer=bpe" in best.statement
    report([sweep], tmp_path / "r")
    assert "compare them by **bits per byte**" in (tmp_path / "r" / "report.md").read_text()


def test_plots_have_one_series_per_configuration_sampler_and_knob_value(base_config, tmp_path):
    from dropsample.report import plots

    sweep = tmp_path / "sweep"
    knobs = {"pure": {"strategy": "sample", "temperature": 1.0}, "temp_0.7": {"strategy": "sample", "temperature": 0.7},
             "temp_0.5": {"strategy": "sample", "temperature": 0.5}, "greedy": {"strategy": "greedy"}}
    samples = {name: {"distinct_4": entry(0.3 + 0.1 * i, 0.01), "gen_ppl": entry(2.0 + i, 0.2)}
               for i, name in enumerate(knobs)}
    samples["reference"] = {"distinct_4": entry(0.8, 0.02), "gen_ppl": entry(5.0, 0.5)}
    # train loss logged every 5 steps, val every 20: every point is drawn
    rows = [{"step": s, "train_loss": 4.0 - 0.05 * s, "train_loss_se": 0.02} for s in range(5, 40, 5) if s % 20]
    rows += [{"step": s, "train_loss": 4.0 - 0.05 * s, "val_loss": 4.1 - 0.05 * s, "train_loss_se": 0.02,
              "val_loss_se": 0.03} for s in (0, 20, 40)]
    rows.sort(key=lambda r: r["step"])
    for j, rate in enumerate((0.0, 0.2, 0.4)):
        for seed in (0, 1):
            write_run(sweep / f"job{2 * j + seed}", base_config, seed=seed, rate=rate, summary=final(20.0 + rate),
                      rows=rows, samples=samples, settings=knobs)
    configs = groups([sweep])
    curves = plots.loss_curves(configs)
    assert len(curves.series) == 2 * 3  # train and val per configuration
    train_line = curves.fig.axes[0].get_lines()[0]
    assert list(train_line.get_xdata()) == list(range(0, 45, 5))
    assert len(curves.fig.axes[0].collections) == 6, "a seed band per line"
    val = plots.against_key(configs, "val_ppl")
    assert val.name == "val_ppl_vs_rate.png" and len(val.series) == 1
    (bars,) = val.fig.axes[0].containers  # one errorbar series with 3 points and error bars
    assert len(bars.lines[0].get_xdata()) == 3 and bars.has_yerr
    dq = plots.diversity_vs_quality(configs)
    assert dq.series == ["pure", "temp_0.7", "temp_0.5", "greedy", "human reference"]
    (knob,) = plots.knob_curves(configs, "distinct_4")
    assert knob.name == "knob_temperature.png" and len(knob.series) == 3  # one line per configuration
    assert list(knob.fig.axes[0].containers[0].lines[0].get_xdata()) == [0.5, 0.7, 1.0]
    plots.close([curves, val, dq, knob])
    report([sweep], tmp_path / "r")
    names = sorted(p.name for p in (tmp_path / "r" / "plots").iterdir())
    assert names == ["diversity_vs_quality.png", "gap_vs_rate.png", "knob_temperature.png", "loss_curves.png",
                     "val_ppl_vs_rate.png"]
    assert all((tmp_path / "r" / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_html_is_one_file_with_the_plots_inline(base_config, tmp_path):
    sweep = tmp_path / "sweep"
    for j, rate in enumerate((0.0, 0.3)):
        write_run(sweep / f"job{j}", base_config, seed=0, rate=rate, summary=final(20.0 + rate), samples=decoding())
    out = tmp_path / "r"
    report([sweep], out, "--format", "html")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.csv"]
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in page and "src=\"plots/" not in page and "href=" not in page
    report([sweep], tmp_path / "c", "--format", "csv")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["results.csv"]


def test_terminal_follows_the_console_width(base_config, tmp_path):
    from rich.console import Console

    from dropsample.report.findings import findings
    from dropsample.report.render import terminal

    sweep = tmp_path / "sweep"
    for j, rate in enumerate((0.0, 0.3)):
        for seed in (0, 1):
            write_run(sweep / f"job{2 * j + seed}", base_config, seed=seed, rate=rate,
                      summary=final(20.0 + rate + seed), samples=decoding(shift=0.001 * seed))
    configs = groups([sweep])
    for width in (100, 80):
        console = Console(record=True, width=width, force_terminal=False)
        terminal(configs, findings(configs, "distinct_4"), "distinct_4", tmp_path / "report.md", console)
        text = console.export_text()
        assert max(map(len, text.splitlines())) <= width
        assert "…" not in text, "numbers are wrapped, never cut"
        flat = re.sub(r"\s+", " ", text)
        for name in SAMPLERS + ["reference"]:
            assert name in text
        assert "20.80 ± " in flat or "20.8 ± " in flat  # rate 0.3: mean of 20.3 and 21.3
        assert str(tmp_path / "report.md") in flat.replace(" ", "") or "report.md" in text


def test_metric_and_format_options_are_checked(base_config, tmp_path):
    run = write_run(tmp_path / "run", base_config, seed=0, rate=0.1, summary=final(20.0), samples=decoding())
    bad = run_cli("report", str(run), "--out", str(tmp_path / "r"), "--metric", "distinct_9")
    assert bad.returncode == 2 and "--metric distinct_9: not measured in these runs; choose one of" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = run_cli("report", str(run), "--out", str(tmp_path / "r"), "--format", "pdf")
    assert bad.returncode == 2 and "--format pdf: unknown; use one of md, csv, html" in bad.stderr
    ok = report([run], tmp_path / "r", "--metric", "self_bleu_4")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Headline metric: self-BLEU-4." in md
    assert "self-BLEU-4" in ok.stdout


def test_wide_tables_are_split_and_long_labels_become_ids():
    from dropsample.report.render import md_table

    header = ["configuration", "metric"] + [f"sampler_{i}" for i in range(8)]
    rows = [["sites=[attn,embd,head]", "dist-4"] + [f"0.{i}00 ± 0.012" for i in range(8)]]
    lines = md_table(header, rows, keep=2)
    tables = "\n".join(lines).split("\n\n")
    assert len(tables) >= 2 and max(map(len, lines)) <= 100
    assert all(t.splitlines()[2].startswith("| sites=[attn,embd,head] | dist-4 |") for t in tables)
    cells = re.findall(r"0\.\d00 ± 0\.012", "\n".join(lines))
    assert cells == [f"0.{i}00 ± 0.012" for i in range(8)], "every cell once, in order"
    from dropsample.report.collect import Configuration
    from dropsample.report.render import row_labels

    short = [Configuration(str(r), {"dropout.rate": r}) for r in (0.0, 0.3)]
    assert row_labels(short) == ["rate=0.0", "rate=0.3"]
    long = [Configuration(str(s), {"dropout.sites": s, "dropout.schedule.kind": "early"})
            for s in (["attn", "embd", "resid_mlp"], ["head"])]
    assert row_labels(long) == ["C1", "C2"]


@pytest.mark.parametrize("judges,expected", [
    ([{"kind": "self", "path": "a", "step": 20}, {"kind": "self", "path": "b", "step": 20}], "No judge model"),
    ([{"kind": "run", "path": "/j", "step": 5}] * 2, "scored by one judge for every row: run /j (step 5)"),
    ([{"kind": "run", "path": "/j", "step": 5}, {"kind": "transformers", "id": "gpt2"}], "Different judges"),
])
def test_the_judge_is_named_once_or_its_absence_said(base_config, tmp_path, judges, expected):
    from dropsample.report.findings import findings

    for j, judge in enumerate(judges):
        write_run(tmp_path / f"job{j}", base_config, seed=0, rate=0.1 * j, summary=final(20.0), samples=decoding(),
                  judge=judge)
    notes = [f.statement for f in findings(groups([tmp_path])) if f.kind == "note"]
    assert sum(expected in n for n in notes) == 1, notes


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_an_optuna_study_adds_its_section_to_the_html(base_config, tmp_path):
    optuna = pytest.importorskip("optuna")
    from dropsample.tune import SWEEPER

    sweep = tmp_path / "study"
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    for j, (rate, loss) in enumerate(((0.0, 3.0), (0.1, 2.5))):
        run = write_run(sweep / f"job{j}", base_config, seed=0, rate=rate, summary=final(math.exp(loss)))
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
            {"hydra": {"sweeper": {"_target_": SWEEPER, "storage": storage, "study_name": "s"}}}))
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"dropout.rate={rate}"]))
    study = optuna.create_study(study_name="s", storage=storage)
    for rate, loss in ((0.0, 3.0), (0.1, 2.5)):
        study.add_trial(optuna.trial.create_trial(
            params={"dropout.rate": rate}, distributions={"dropout.rate": optuna.distributions.CategoricalDistribution(
                [0.0, 0.1])}, value=loss))
    from dropsample.report.command import report_command

    report_command([sweep], format="html")
    page = (sweep / "report.html").read_text()
    assert "<h2>Optuna study <code>s</code></h2>" in page
    assert "<strong>Best: trial 1</strong>, val_loss = 2.5 with <code>dropout.rate=0.1</code>" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4  # 3 report plots + the history
