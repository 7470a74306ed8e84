"""`dropsample sample`: every sampler on one checkpoint, the same prompts, metrics side by side.

    RUN_DIR/samples/<name>/
        <sampler>.jsonl     one line per sample: prompt, completion text and ids, seed, settings
        reference.jsonl     the true continuation of each prompt in the validation text
        metrics.json        every metric per sampler and for the reference
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dropsample import data as data_mod
from dropsample import headline, loggers
from dropsample import metrics
from dropsample import tokenizer as toks
from dropsample.config import check_prompt_span, resolve_samplers, validate
from dropsample.decoding.search import Request, generate, score
from dropsample.device import pick_device
from dropsample.dropout import set_mc_dropout
from dropsample.errors import UserError
from dropsample.runs import RunFolder, write_json_atomic
from dropsample.schema import Config, GenConfig, Sampler, SamplerSettings, to_dict

log = logging.getLogger("dropsample")
HEADLINE = ("distinct_4", "self_bleu_4", "seq_rep_4", "repetition", "gen_ppl", "mean_entropy", "mean_length")


def build_prompts(cfg: Config, gen: GenConfig, tok, prompt: str | None) -> tuple[list[list[int]], list[list[int]] | None, str]:
    """(prompts, reference continuations or None, description)."""
    if prompt is not None or gen.prompt is not None:
        ids = toks.encode_prompt(tok, prompt if prompt is not None else gen.prompt)
        if not ids:
            raise UserError("--prompt is empty; give some text or leave it out to use validation prefixes")
        return [ids] * gen.num_samples, None, "one prompt for every sample"
    if gen.prompt_file:
        path = Path(str(gen.prompt_file)).expanduser()
        if not path.is_file():
            raise UserError(f"gen.prompt_file: {path} does not exist; give a file with one prompt per line")
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise UserError(f"gen.prompt_file: {path} has no prompts; put one prompt per line")
        prompts = [toks.encode_prompt(tok, lines[i % len(lines)]) for i in range(gen.num_samples)]
        return prompts, None, f"prompts from {path.name}, cycled"
    val = data_mod.prepare(cfg.data, log=log.debug).splits["val"]
    check_prompt_span(gen, len(val))
    span = gen.prompt_tokens + gen.max_new_tokens
    rng = np.random.default_rng(gen.seed)
    starts = rng.choice(len(val) - span, size=gen.num_samples, replace=gen.num_samples > len(val) - span)
    prompts = [val[s : s + gen.prompt_tokens].tolist() for s in starts]
    refs = [val[s + gen.prompt_tokens : s + span].tolist() for s in starts]
    return prompts, refs, f"{gen.num_samples} prefixes of {gen.prompt_tokens} tokens at seeded val positions"


def _generate_all(model, sampler: Sampler, prompts, gen, eos_id, decode) -> list[list[int]]:
    """Batches of equal-length prompts; sample i always gets seed gen.seed + i."""
    device = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    mc = sampler.settings.mc_dropout
    set_mc_dropout(model, mc)
    if mc:
        torch.manual_seed(gen.seed)  # dropout masks come from the global generator
    try:
        for indices in by_length.values():
            for b in range(0, len(indices), gen.batch_size):
                chunk = indices[b : b + gen.batch_size]
                req = Request(
                    prompts=torch.tensor([prompts[i] for i in chunk], device=device),
                    max_new_tokens=gen.max_new_tokens,
                    seeds=[gen.seed + i for i in chunk],
                    eos_id=eos_id,
                    min_new_tokens=gen.min_new_tokens,
                    stop_strings=tuple(gen.stop or ()),
                    decode=decode,
                )
                for i, completion in zip(chunk, generate(model, sampler, req)):
                    out[i] = completion
    finally:
        set_mc_dropout(model, False)
    return out


def _evaluate(model, prompts, completions) -> dict:
    scores = [score(model, p, c) for p, c in zip(prompts, completions)]
    return {**metrics.diversity(completions), **metrics.quality(scores)}


def sample_run(
    run_dir: Path,
    *,
    samplers,
    gen: GenConfig,
    device: str | None = None,
    name: str | None = None,
    prompt: str | None = None,
) -> Path:
    run = RunFolder(run_dir)
    cfg = run.config()
    run.summary()  # damage shows now, not after the work
    chosen = resolve_samplers(samplers)
    if gen.mc_dropout:
        chosen.append(Sampler("mc_dropout_greedy", SamplerSettings(strategy="greedy", mc_dropout=True)))
    ckpt = run.load_checkpoint(gen.checkpoint)
    dev = pick_device(device or cfg.train.device)
    model = ckpt.load_model(dev).eval()
    tok = ckpt.tokenizer
    name = name or gen.name or time.strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = run.samples(name)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; pass another --name (earlier results are kept)")
    prompts, refs, prompt_source = build_prompts(cfg, gen, tok, prompt)
    out_dir.mkdir(parents=True)
    decode = lambda ids: toks.decode(tok, ids)  # noqa: E731
    eos_id = toks.end_of_text_id(tok)
    results: dict[str, dict] = {}
    for sampler in chosen:
        tic = time.perf_counter()
        completions = _generate_all(model, sampler, prompts, gen, eos_id, decode)
        seconds = time.perf_counter() - tic
        results[sampler.name] = _evaluate(model, prompts, completions)
        results[sampler.name]["tokens_per_sec"] = sum(map(len, completions)) / seconds if seconds else None
        with open(run.sample_file(name, sampler.name), "w") as f:
            for i, (p, c) in enumerate(zip(prompts, completions)):
                row = {"index": i, "prompt": decode(p), "completion": decode(c), "completion_ids": c,
                       "seed": gen.seed + i, "sampler": sampler.name, "settings": sampler.settings.changed()}
                f.write(json.dumps(row) + "\n")
        loggers.log_samples(cfg, run, name, sampler.name, f.name, results[sampler.name], ckpt.state["step"])
        log.info("sampled %s: distinct-4 %s, gen-ppl %s", sampler.name,
                 _fmt(results[sampler.name]["distinct_4"]), _fmt(results[sampler.name]["gen_ppl"]))
    reference = None
    if refs is not None:
        reference = _evaluate(model, prompts, refs)
        with open(run.sample_file(name, "reference"), "w") as f:
            for i, (p, r) in enumerate(zip(prompts, refs)):
                f.write(json.dumps({"index": i, "prompt": decode(p), "completion": decode(r), "completion_ids": r}) + "\n")
    report = {
        "checkpoint": {"which": gen.checkpoint, "step": ckpt.state["step"], "val_loss": ckpt.state.get("val_loss")},
        "tokenizer": toks.kind_of(tok),
        "prompts": prompt_source,
        "gen": to_dict(gen),
        "samplers": results,
        "reference": reference,
        "settings": {s.name: to_dict(s.settings) for s in chosen},
    }
    write_json_atomic(run.sample_metrics_path(name), report)
    samples = run.summary().samples or {}
    samples[name] = {
        "path": str(out_dir.relative_to(run.path)),
        "headline": {k: {m: v.get(m) for m in HEADLINE} for k, v in results.items()},
        "reference": {m: reference.get(m) for m in HEADLINE} if reference else None,
    }
    run.update_summary(samples=samples, latest_samples=name)
    headline.print_run(run)
    print_table(report, f"samplers on {run.path.name} ({gen.checkpoint} checkpoint, step {ckpt.state['step']})")
    return out_dir


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_COLUMNS = (  # (metric key, header)
    ("distinct_1", "dist-1"), ("distinct_2", "dist-2"), ("distinct_4", "dist-4"), ("self_bleu_4", "self-BLEU"),
    ("seq_rep_4", "seq-rep-4"), ("repetition", "rep"), ("zipf", "zipf"), ("gen_ppl", "gen-ppl"),
    ("mean_entropy", "entropy"), ("mean_length", "length"),
)


def print_table(report: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=f"tokenizer: {report['tokenizer']}; prompts: {report['prompts']}")
    table.add_column("sampler", no_wrap=True)
    for _, header in TABLE_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    rows = list(report["samplers"].items())
    if report.get("reference"):
        rows.append(("reference text", report["reference"]))
    for name, values in rows:
        table.add_row(name, *(_fmt(values.get(key)) for key, _ in TABLE_COLUMNS))
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)  # logs and CI: never squeeze the numbers
    console.print(table)


def sample_command(run_dir: Path, overrides: list[str], *, name: str | None, prompt: str | None) -> Path:
    """Apply `gen.*` and `samplers=` overrides to the run's own settings, then sample."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run = RunFolder(run_dir)
    raw = OmegaConf.create(run.raw_config())
    run.config()  # a damaged config shows here, before the overrides
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise UserError(f"cannot parse overrides: {str(exc).splitlines()[0]}") from None
    for o in parsed:
        key = o.key_or_group
        if not (key == "samplers" or key.startswith("gen.")):
            raise UserError(f"{key}: sample takes only gen.* and samplers overrides; retrain to change {key}")
        OmegaConf.update(raw, key, o.value(), merge=False, force_add=True)
    cfg = validate(raw)
    with run.logging_to_file():
        return sample_run(run.path, samplers=cfg.samplers, gen=cfg.gen, name=name, prompt=prompt)
