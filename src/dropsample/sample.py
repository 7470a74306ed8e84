"""`dropsample sample`: every sampler on one checkpoint, the same prompts, metrics side by side.

    RUN_DIR/samples/<name>/
        <sampler>.jsonl     one line per sample: prompt, completion text and ids, seed, settings
        reference.jsonl     the true continuation of each prompt in the validation text
        metrics.json        per sampler and for the reference: every registered metric
                            (metrics/registry.py) as {"value", "low", "high"}; the judge's
                            identity, MAUVE's settings, the bootstrap's settings

Prompts are the starts of disjoint windows of the validation split and the reference row is
each window's true continuation, so the human row is measured like the samplers' (no shared
text between references). Every metric gets a seeded bootstrap 95% interval over samples;
gen-ppl and MAUVE come from the fixed judge (judge.py) when `judge=` names one.
"""

from __future__ import annotations

import json
import logging
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dropsample import data as data_mod
from dropsample import headline, loggers
from dropsample import judge as judge_mod
from dropsample import tokenizer as toks
from dropsample.config import check_prompt_span, resolve_samplers, validate
from dropsample.decoding.search import Request, generate
from dropsample.device import pick_device
from dropsample.dropout import set_mc_dropout
from dropsample.errors import UserError
from dropsample.metrics import mauve as mauve_mod
from dropsample.metrics import registry, suite
from dropsample.metrics.bootstrap import LEVEL, Resampler
from dropsample.runs import RunFolder, write_json_atomic
from dropsample.schema import Config, GenConfig, Sampler, SamplerSettings, to_dict

log = logging.getLogger("dropsample")
WIDTH = 80
UNITS = {
    "word": "whitespace-split words of the decoded text",
    "token": "the sampled model's tokens",
    "judge": "scored by the judge, per judge token (self: by the sampled model)",
    "text": "the completions' joined text",
}


def reference_windows(n_tokens: int, gen: GenConfig) -> np.ndarray:
    """(num_samples,) starts of disjoint windows of prompt_tokens + max_new_tokens tokens,
    drawn with gen.seed (check_prompt_span has refused an N the split cannot hold)."""
    span = gen.prompt_tokens + gen.max_new_tokens
    slots = n_tokens // span
    rng = np.random.default_rng(gen.seed)
    offset = int(rng.integers(0, n_tokens - slots * span + 1))  # the grid need not start at token 0
    return offset + rng.choice(slots, size=gen.num_samples, replace=False) * span


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
    eos = toks.end_of_text_id(tok)
    prompts, refs = [], []
    for s in reference_windows(len(val), gen):
        prompts.append(val[s : s + gen.prompt_tokens].tolist())
        ref = val[s + gen.prompt_tokens : s + gen.prompt_tokens + gen.max_new_tokens].tolist()
        if eos is not None and eos in ref:  # a document ends: the reference stops there, as generation does
            ref = ref[: ref.index(eos)]
        refs.append(ref)
    return prompts, refs, (f"{gen.num_samples} disjoint val windows: {gen.prompt_tokens}-token prompts, "
                           f"reference = the next {gen.max_new_tokens} tokens")


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


class _Scorer:
    """Scores one set of completions: the sampling model's own NLL and entropy, the judge's
    NLL and features (when there is a judge), and every metric with its interval."""

    def __init__(self, model, judge, prompts, decode, gen: GenConfig):
        self.model, self.judge, self.prompts, self.decode, self.gen = model, judge, prompts, decode, gen
        self.prompt_texts = [decode(p) for p in prompts]
        self.resampler = Resampler(len(prompts), gen.bootstrap, gen.seed)
        self.ref_features = None

    def text_set(self, completions, tokens_per_sec=None) -> suite.TextSet:
        texts = [self.decode(c) for c in completions]
        own = judge_mod.self_scores(self.model, self.prompts, completions)
        judged = feats = None
        if self.judge is not None:
            judged, feats = self.judge.score_texts(self.prompt_texts, texts)
        return suite.TextSet(texts, completions, own=own, judged=judged, features=feats,
                             tokens_per_sec=tokens_per_sec)

    def measure(self, s: suite.TextSet) -> dict:
        return suite.measure(s, self.resampler, ref_features=self.ref_features, mauve_buckets=self.gen.mauve_buckets,
                             mauve_seed=self.gen.mauve_seed)


def sample_run(
    run_dir: Path,
    *,
    samplers,
    gen: GenConfig,
    device: str | None = None,
    name: str | None = None,
    prompt: str | None = None,
    judge: str | None = None,
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
    name = name or gen.name
    if not name:  # time-stamped; another sampling within the same second took it: _2, _3, ...
        stamp, n = time.strftime("%Y-%m-%d_%H-%M-%S"), 1
        name = stamp
        while run.samples(name).exists():
            n += 1
            name = f"{stamp}_{n}"
    out_dir = run.samples(name)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; pass another --name (earlier results are kept)")
    prompts, refs, prompt_source = build_prompts(cfg, gen, tok, prompt)
    the_judge = None
    if judge is not None:
        if Path(str(judge)).expanduser().resolve() == run.path.resolve():
            raise UserError(f"judge={judge} is the run being sampled; give a separate fixed model (or leave "
                            "judge unset for self-scored gen-ppl)")
        if refs is not None:
            mauve_mod.require()
        the_judge = judge_mod.load(judge, dev)
    identity = the_judge.identity if the_judge else judge_mod.self_identity(run, ckpt.state["step"])
    out_dir.mkdir(parents=True)
    decode = lambda ids: toks.decode(tok, ids)  # noqa: E731
    eos_id = toks.end_of_text_id(tok)
    scorer = _Scorer(model, the_judge, prompts, decode, gen)

    reference = None
    if refs is not None:
        ref_set = scorer.text_set(refs)
        reference = scorer.measure(ref_set)  # before it becomes MAUVE's P: no MAUVE of P against itself
        scorer.ref_features = ref_set.features
        with open(run.sample_file(name, "reference"), "w") as f:
            for i, (p, r) in enumerate(zip(prompts, refs)):
                f.write(json.dumps({"index": i, "prompt": decode(p), "completion": decode(r), "completion_ids": r}) + "\n")

    results: dict[str, dict] = {}
    for sampler in chosen:
        tic = time.perf_counter()
        completions = _generate_all(model, sampler, prompts, gen, eos_id, decode)
        seconds = time.perf_counter() - tic
        speed = sum(map(len, completions)) / seconds if seconds else None
        results[sampler.name] = scorer.measure(scorer.text_set(completions, speed))
        with open(run.sample_file(name, sampler.name), "w") as f:
            for i, (p, c) in enumerate(zip(prompts, completions)):
                row = {"index": i, "prompt": decode(p), "completion": decode(c), "completion_ids": c,
                       "seed": gen.seed + i, "sampler": sampler.name, "settings": sampler.settings.changed()}
                f.write(json.dumps(row) + "\n")
        loggers.log_samples(cfg, run, name, sampler.name, f.name, suite.values(results[sampler.name]),
                            ckpt.state["step"])
        r = results[sampler.name]
        log.info("sampled %s: distinct-4 (words) %s, gen-ppl (%s) %s", sampler.name,
                 _num(r["distinct_4"]["value"]), identity["kind"], _num(r["gen_ppl"]["value"]))

    mauve_info = None
    if scorer.ref_features is not None:
        warning = mauve_mod.warning(len(prompts))
        if warning:
            log.warning(warning)
        mauve_info = {"samples": len(prompts), "num_buckets": mauve_mod.buckets_for(len(prompts), len(prompts),
                      gen.mauve_buckets), "seed": gen.mauve_seed, "features": "judge's last hidden state at the "
                      "last token of prompt + continuation", "p": "reference", "warning": warning}
    report = {
        "checkpoint": {"which": gen.checkpoint, "step": ckpt.state["step"], "val_loss": ckpt.state.get("val_loss")},
        "tokenizer": toks.kind_of(tok),
        "prompts": prompt_source,
        "gen": to_dict(gen),
        "judge": identity,
        "mauve": mauve_info,
        "bootstrap": {"replicates": gen.bootstrap, "seed": gen.seed, "level": LEVEL, "over": "samples",
                      "corpus_replicates": suite.CORPUS_REPLICATES,
                      "compression_replicates": suite.COMPRESSION_REPLICATES},
        "units": UNITS,
        "samplers": results,
        "reference": reference,
        "settings": {s.name: to_dict(s.settings) for s in chosen},
    }
    write_json_atomic(run.sample_metrics_path(name), report)
    samples = run.summary().samples or {}
    samples[name] = {
        "path": str(out_dir.relative_to(run.path)),
        "judge": identity,
        "headline": {k: suite.values(v) for k, v in results.items()},
        "reference": suite.values(reference) if reference else None,
        # the 95% intervals of the same figures: {row: {metric: [low, high]}} (rows as in headline, + reference)
        "intervals": {k: suite.intervals(v) for k, v in [*results.items(), ("reference", reference or {})]},
    }
    run.update_summary(samples=samples, latest_samples=name)
    headline.print_run(run)
    print_table(report, f"samplers on {run.path.name} ({gen.checkpoint} checkpoint, step {ckpt.state['step']})")
    return out_dir


# ---------------------------------------------------------------------------
# The sampler table: value ± half-width of the 95% interval, in 80 columns


def _decimals(value: float) -> int:
    a = abs(value)
    return 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 10 else 3 if a >= 0.01 or a == 0 else 4


def _num(value, decimals: int | None = None) -> str:
    if value is None:
        return "-"
    d = _decimals(value) if decimals is None else decimals
    return f"{value:,.{d}f}" if d == 0 else f"{value:.{d}f}"


def cell(e: dict | None) -> str:
    """'value ± half-width' of a metrics.json entry ('-' when not measured)."""
    if not e or e.get("value") is None:
        return "-"
    v, lo, hi = e["value"], e.get("low"), e.get("high")
    d = _decimals(v)
    if lo is None or hi is None:
        return _num(v, d)
    return f"{_num(v, d)} ± {_num((hi - lo) / 2, d)}"


def _judge_line(identity: dict) -> str:
    kind = identity.get("kind")
    if kind == "run":
        return f"judge: run {identity.get('path')} (step {identity.get('step')}, config {identity.get('config_hash')})"
    if kind == "transformers":
        return f"judge: {identity.get('id')} (transformers, {identity.get('params') or 0:,} parameters)"
    return "judge: none - gen-ppl is self-scored by the sampled model; no MAUVE"


def table_lines(report: dict, title: str, width: int = WIDTH) -> list[str]:
    """The sampler table as lines of at most `width` characters (columns split into blocks)."""
    rows = list(report["samplers"].items())
    if report.get("reference"):
        rows.append(("reference text", report["reference"]))
    shown = [m for m in registry.METRICS if not m.name.endswith("_token")
             and any((v.get(m.name) or {}).get("value") is not None for _, v in rows)]
    first = max([len("sampler")] + [len(n) for n, _ in rows])
    self_judged = (report.get("judge") or {}).get("kind") == "self"
    columns = []
    for m in shown:
        cells = [cell(v.get(m.name)) for _, v in rows]
        unit = "[self]" if m.unit == "judge" and self_judged else f"[{m.unit}]"
        columns.append((m.label, unit, cells, max(len(m.label), len(unit), *map(len, cells))))
    blocks, current, used = [], [], first
    for col in columns:
        if current and used + 2 + col[3] > width:
            blocks.append(current)
            current, used = [], first
        current.append(col)
        used += 2 + col[3]
    if current:
        blocks.append(current)
    notes = [title, _judge_line(report.get("judge") or {}),
             f"prompts: {report['prompts']}",
             f"± = half-width of the seeded bootstrap {int(LEVEL * 100)}% interval over samples "
             f"({(report.get('bootstrap') or {}).get('replicates', 0)} replicates)",
             "units: " + "; ".join(f"{k} = {v}" for k, v in UNITS.items()) + f" (tokenizer: {report['tokenizer']})"]
    if (report.get("mauve") or {}).get("warning"):
        notes.append(report["mauve"]["warning"])
    out = [line for note in notes for line in textwrap.wrap(note, width, subsequent_indent="  ",
                                                              break_on_hyphens=False)]
    for block in blocks:
        out.append("")
        out.append("sampler".ljust(first) + "".join("  " + c[0].rjust(c[3]) for c in block))
        out.append(" " * first + "".join("  " + c[1].rjust(c[3]) for c in block))
        for i, (name, _) in enumerate(rows):
            out.append(name.ljust(first) + "".join("  " + c[2][i].rjust(c[3]) for c in block))
    return out


def print_table(report: dict, title: str) -> None:
    import sys

    print("\n".join(table_lines(report, title)), file=sys.stderr)


def sample_command(run_dir: Path, overrides: list[str], *, name: str | None, prompt: str | None) -> Path:
    """Apply `gen.*`, `samplers=` and `judge=` overrides to the run's own settings, then sample."""
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
        if not (key in ("samplers", "judge") or key.startswith("gen.")):
            raise UserError(f"{key}: sample takes only gen.* and samplers overrides and judge=; "
                            f"retrain to change {key}")
        OmegaConf.update(raw, key, o.value(), merge=False, force_add=True)
    cfg = validate(raw, run.launch_dir())
    with run.logging_to_file():
        return sample_run(run.path, samplers=cfg.samplers, gen=cfg.gen, name=name, prompt=prompt, judge=cfg.judge)
