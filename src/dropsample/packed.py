"""Packed sweeps: K configurations of one model shape trained in one process as one batched
computation, each into its own ordinary run folder.

    run_jobs([(config, run_dir), ...])   sweep jobs under task.py's policy: the ones that fit
                                         together train packed, the others one after another
    train_packed(members)                the packed training loop itself

How a pack computes (one optimizer step, K configurations):
    parameters      every configuration's GPT is built by training.build (its own seed, so its
                    own initial weights), then its parameters are stacked: (K, *shape) leaves
    forward         torch.func.vmap over torch.func.functional_call of model.py's GPT (one
                    "template" module on the meta device): the model math is model.py's own
    batches         each configuration's own Batches (seeded by its seed): x, y are (K, B, T)
    dropout         drawn per configuration, from its own torch.Generator, with the same calls
                    and in the same order as that configuration draws them alone (dropout.py),
                    then handed to the vmapped forward as multipliers (dropout.mask_source)
    optimizer       AdamW over the stacked tensors with a per-configuration learning rate,
                    weight decay and gradient clip: the AdamW formula in torch's single-tensor
                    arithmetic (a lone run's fused kernel rounds differently in the last bits)
    evaluation      one vmapped pass per batch for all K; each configuration's metrics row,
                    checkpoints, schedule and summary then go through training.py as usual

What may differ inside a pack: seed, everything under `dropout` (sites, rates, variants,
schedule), train.lr/min_lr/warmup_iters/lr_decay_iters/weight_decay/grad_clip,
train.final_eval_tokens, and what happens after training (gen, samplers, loggers, names).
Everything else (model shape, data, tokenizer, batch size, max_iters, evaluation settings,
betas, dtype, device) must be equal, and the runs must start at the same step; configurations
that do not fit (or train.compile=true, or float16) run as separate jobs.

A configuration's checkpoints hold its own weights, AdamW moments and, as `rng.torch`, its
dropout generator's state: exactly what it would hold had it trained alone, so
`dropsample train --resume` continues any packed run on its own and a packed rerun resumes
them together.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dropsample import loggers, task, training
from dropsample.config import validate
from dropsample.dropout import (
    SITES,
    DropoutRates,
    _cpu_keep_mask,
    coins,
    drop_path_rates,
    mask_source,
)
from dropsample.evaluation import standard_error
from dropsample.runs import RunFolder, Summary
from dropsample.model import GPT, GPTConfig
from dropsample.schema import Config, identity, to_dict

log = logging.getLogger("dropsample")

# keys that may differ between configurations of one pack (dotted; a prefix covers its subtree)
PER_CONFIG = ("seed", "dropout", "train.lr", "train.min_lr", "train.warmup_iters", "train.lr_decay_iters",
              "train.weight_decay", "train.grad_clip", "train.final_eval_tokens", "gen", "samplers",
              "sample_after_train")


def pack_key(cfg: Config) -> str | None:
    """Configurations with equal keys can train as one pack; None: this one never packs."""
    if cfg.train.compile or cfg.train.dtype == "float16":
        return None
    data = identity(cfg)
    for key in PER_CONFIG:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    data["device"] = cfg.train.device  # not a result key, but one pack is on one device
    return json.dumps(data, sort_keys=True, default=str)


# ---------------------------------------------------------------------------
# Per-run log files: each configuration's lines go to its own train.log


_current: frozenset[Path] | None = None  # runs whose train.log takes the lines now (speaking_for)


class _RunFilter(logging.Filter):
    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def filter(self, record) -> bool:
        return _current is None or self.path in _current


@contextmanager
def speaking_for(*runs: RunFolder):
    """Log lines inside this block go to these runs' train.log files only."""
    global _current
    previous, _current = _current, frozenset(run.path for run in runs)
    try:
        yield
    finally:
        _current = previous


@contextmanager
def run_logs(runs: list[RunFolder]):
    """A train.log handler per run folder (outside Hydra's one-job logging)."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    handlers = []
    for run in runs:
        run.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run.log_path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handler.addFilter(_RunFilter(run.path))
        root.addHandler(handler)
        handlers.append(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous)


# ---------------------------------------------------------------------------
# Members of a pack


@dataclass
class Member:
    """One configuration of a pack: its Trainer (training.build) and its dropout generator."""

    cfg: Config
    run: RunFolder
    resume: bool = False
    tr: training.Trainer | None = None
    generator: torch.Generator | None = None
    stack: ExitStack = field(default_factory=ExitStack)  # loggers held open until sampling ends
    status: str = "running"
    error: str | None = None
    summary: Summary | None = None


def _start(m: Member, device: str | None) -> None:
    """training.train's prelude for one configuration; its dropout generator takes over the
    global RNG state that its run alone would continue from."""
    m.stack.enter_context(loggers.keep_open(m.run.path))
    tr = training.build(m.cfg, m.run.path, device)
    if m.resume:
        training.restore(tr)  # sets the global RNG to the checkpoint's
    m.generator = torch.Generator(device=tr.device)
    if tr.device.type == "cpu":
        m.generator.set_state(torch.get_rng_state())
    else:  # CUDA draws cannot match a lone run's fused kernels; independent and reproducible
        m.generator.manual_seed(m.cfg.seed + tr.state.step)
    tr.loggers = loggers.start(m.cfg, tr.run, resume_from=tr.state.step if m.resume else None)
    tr.data.tokenizer.save(str(tr.run.tokenizer_path))
    tr.wall_start = time.time() - tr.state.wall_seconds
    training._start_summary(tr)
    m.tr = tr


# ---------------------------------------------------------------------------
# Dropout masks


# Tags: distinct rates that make each dropout call of one recording forward say its site
_TAGS = {site: 0.11 + 0.01 * i for i, site in enumerate(SITES + ("word", "drop_head", "drop_path"))}


class _Recorder:
    """The mask source of the recording pass: says what each dropout call asks for."""

    def __init__(self):
        self.calls: list[tuple[str, int, tuple]] = []  # (site, layer, shape) in forward order
        self._seen: dict[str, int] = {}
        self._by_tag = {round(v, 6): k for k, v in _TAGS.items()}

    def take(self, p: float, shape) -> torch.Tensor:
        site = self._by_tag[round(float(p), 6)]
        n = self._seen.get(site, 0)
        self._seen[site] = n + 1
        layer = n // 2 if site == "drop_path" else n  # drop_path: attention then MLP branch per block
        self.calls.append((site, layer, tuple(shape)))
        return torch.ones(shape, device="meta")


class _Replay:
    """The mask source of a packed forward: the step's multipliers, in forward order."""

    def __init__(self, masks: tuple, calls: list):
        self.masks, self.calls, self.i = masks, calls, 0

    def take(self, p: float, shape) -> torch.Tensor:
        if self.i >= len(self.masks) or tuple(self.masks[self.i].shape) != tuple(shape):
            raise RuntimeError(f"packed dropout: call {self.i} asks for {tuple(shape)}, the recording "
                               f"has {self.calls[self.i] if self.i < len(self.calls) else 'no more calls'}")
        mask = self.masks[self.i]
        self.i += 1
        return mask


def _site_rate(rates: DropoutRates, site: str, layer: int, n_layer: int) -> float:
    if site == "drop_path":
        return drop_path_rates(rates.drop_path, n_layer, rates.drop_path_by_depth)[layer]
    return getattr(rates, site)


def _draw_into(out: torch.Tensor, site: str, p: float, locked: bool, generator) -> None:
    """One configuration's multiplier for one dropout call, written into `out` (its slice of the
    stacked multiplier): the draw its lone run makes there, scaled as that run scales it."""
    shape, device = tuple(out.shape), out.device
    if p == 0.0:  # a lone run with this site off draws nothing here
        out.fill_(1.0)
    elif site in ("word", "drop_head", "drop_path"):
        dtype = None if site == "word" else torch.float32
        torch.div(coins(shape, p, device=device, dtype=dtype, generator=generator), 1.0 - p, out=out)
    elif locked:  # SiteDropout's variational mask: one (B, 1, C) draw, shared over positions
        B, _, C = shape
        out.copy_(coins((B, 1, C), p, device=device, dtype=torch.float32, generator=generator) / (1.0 - p))
    elif device.type == "cpu":  # inverted_dropout's CPU kernel: keep * 1/(1-p), as its two multiplies give
        torch.mul(_cpu_keep_mask(torch.Size(shape), p, generator), 1.0 / (1.0 - p), out=out)
    else:  # F.dropout's CUDA kernel takes no generator: the same law, from this configuration's own
        torch.mul(coins(shape, p, device=device, dtype=torch.float32, generator=generator).bool(),
                  1.0 / (1.0 - p), out=out)


# ---------------------------------------------------------------------------
# The pack


class Pack:
    """Stacked parameters and AdamW state of K configurations, and the vmapped forward."""

    def __init__(self, members: list[Member]):
        from torch.func import functional_call, vmap

        self.members = members
        first = members[0].tr
        self.device, self.cfg = first.device, first.cfg
        self.n_layer = self.cfg.model.n_layer
        # the shape without any dropout (masks come from the members); no weights of its own on
        # the meta device: functional_call supplies the stacked ones
        shape = GPTConfig.from_dict({**first.model.config.to_dict(), "dropout": {}})
        with torch.device("meta"):
            self.template = GPT(shape)
        self.names = [name for name, _ in first.model.named_parameters()]
        self.params = {n: torch.stack([dict(m.tr.model.named_parameters())[n].detach() for m in members])
                       .requires_grad_(True) for n in self.names}
        self.exp_avg, self.exp_avg_sq = {}, {}
        self.opt_steps = 0
        self._load_optimizer_state()
        self._recordings: dict[tuple, list] = {}

        def loss_of(params, x, y, masks):
            with mask_source(_Replay(masks, self._calls)):
                return functional_call(self.template, params, (x, y))[1]

        self._train_loss = vmap(loss_of, in_dims=(0, 0, 0, 0))
        self._eval_loss = vmap(lambda params, x, y: loss_of(params, x, y, ()), in_dims=(0, None, None))
        self._calls: list = []

    # -- optimizer state in and out of the members' torch AdamW -------------------
    def _load_optimizer_state(self) -> None:
        steps = set()
        for n in self.names:
            moments = []
            for m in self.members:
                p = dict(m.tr.model.named_parameters())[n]
                st = m.tr.optimizer.state.get(p, {})
                steps.add(int(st["step"]) if "step" in st else 0)
                moments.append((st.get("exp_avg"), st.get("exp_avg_sq")))
            shape = self.params[n].shape
            for target, j in ((self.exp_avg, 0), (self.exp_avg_sq, 1)):
                target[n] = (torch.stack([mo[j].to(self.device) for mo in moments]) if moments[0][j] is not None
                             else torch.zeros(shape, device=self.device))
        if len(steps) > 1:
            raise RuntimeError(f"packed configurations are at different optimizer steps {sorted(steps)}")
        self.opt_steps = steps.pop()

    def sync(self, k: int, lr: float) -> None:
        """Member k's model and torch AdamW hold its slice (what its checkpoints save)."""
        m = self.members[k]
        named = dict(m.tr.model.named_parameters())
        with torch.no_grad():
            for n in self.names:
                named[n].copy_(self.params[n][k])
                if self.opt_steps:
                    m.tr.optimizer.state[named[n]] = {
                        "step": torch.tensor(float(self.opt_steps)),
                        "exp_avg": self.exp_avg[n][k].clone(), "exp_avg_sq": self.exp_avg_sq[n][k].clone()}
        for group in m.tr.optimizer.param_groups:
            group["lr"] = lr

    def drop(self, gone: list[int]) -> None:
        """Remove members (diverged or failed) from the stacked computation."""
        keep = [i for i in range(len(self.members)) if i not in gone]
        index = torch.tensor(keep, device=self.device)
        self.members = [self.members[i] for i in keep]
        for n in self.names:
            self.params[n] = self.params[n].detach().index_select(0, index).requires_grad_(True)
            self.exp_avg[n] = self.exp_avg[n].index_select(0, index)
            self.exp_avg_sq[n] = self.exp_avg_sq[n].index_select(0, index)

    # -- dropout ------------------------------------------------------------------
    def _recording(self, active: frozenset, B: int, T: int) -> list:
        """The dropout calls of one training forward with these sites active, in order."""
        key = (active, B, T)
        if key not in self._recordings:
            tags = {s: (_TAGS[s] if s in active else 0.0) for s in _TAGS}
            self.template.set_dropout(DropoutRates(**tags, drop_path_by_depth=False))
            self.template.train()
            recorder = _Recorder()
            idx = torch.zeros(B, T, dtype=torch.long, device="meta")
            with torch.no_grad(), mask_source(recorder):
                self.template(idx, idx)
            self._recordings[key] = recorder.calls
        return self._recordings[key]

    def masks(self, rates: list[DropoutRates], B: int, T: int) -> tuple:
        """This forward's multipliers: per dropout call a (K, *shape) tensor."""
        names = SITES + ("word", "drop_head", "drop_path")
        active = frozenset(s for s in names if any(getattr(r, s) > 0 for r in rates))
        calls = self._recording(active, B, T)
        self._calls = calls
        # the template's own rates: positive wherever any member drops, so model.py reaches
        # the dropout call (its value is never used: the multipliers carry each member's)
        self.template.set_dropout(DropoutRates(**{s: (0.5 if s in active else 0.0) for s in names}))
        K = len(self.members)
        out = tuple(torch.empty((K,) + shape, device=self.device) for _, _, shape in calls)  # (K, *shape) each
        for k, (m, r) in enumerate(zip(self.members, rates)):  # each generator in its lone run's order
            for (site, layer, _), stacked in zip(calls, out):
                _draw_into(stacked[k], site, _site_rate(r, site, layer, self.n_layer), site in r.locked, m.generator)
        return out

    # -- one training step ---------------------------------------------------------
    def forward_backward(self, x, y, rates, amp, grad_accum: int) -> torch.Tensor:
        """(K,) losses of one micro-batch; gradients accumulate in the stacked parameters."""
        self.template.train()
        masks = self.masks(rates, x.shape[1], x.shape[2])
        with amp:
            losses = self._train_loss(self.params, x, y, masks)
        (losses.sum() / grad_accum).backward()
        return losses.detach()

    def optimizer_step(self, lrs: list[float]) -> None:
        """Gradient clip per member, then AdamW as torch's single-tensor AdamW computes it (one
        stacked update for K learning rates; optim.AdamW's fused kernel takes one rate per call)."""
        K, dev = len(self.members), self.device
        ts = [m.cfg.train for m in self.members]
        grads = {n: self.params[n].grad for n in self.names}
        clip = torch.tensor([t.grad_clip for t in ts], device=dev)
        if bool((clip > 0).any()):
            norms = torch.stack([grads[n].flatten(1).norm(dim=1) for n in self.names])  # (P, K)
            total = norms.norm(dim=0)  # (K,)
            coef = torch.where(clip > 0, (clip / (total + 1e-6)).clamp(max=1.0), torch.ones_like(total))
            for n in self.names:
                grads[n].mul_(coef.view(K, *([1] * (grads[n].dim() - 1))))
        self.opt_steps += 1
        t0 = ts[0]
        beta1, beta2, eps = t0.beta1, t0.beta2, 1e-8
        bc1, bc2_sqrt = 1 - beta1 ** self.opt_steps, (1 - beta2 ** self.opt_steps) ** 0.5
        decay_keep = torch.tensor([1 - lr * t.weight_decay for lr, t in zip(lrs, ts)], device=dev)
        neg_step = torch.tensor([-(lr / bc1) for lr in lrs], device=dev)
        with torch.no_grad():
            for n in self.names:
                p, g = self.params[n], grads[n]
                view = (K,) + (1,) * (p.dim() - 1)
                if p.dim() - 1 >= 2:  # matrices and embeddings decay (training.make_optimizer)
                    p.mul_(decay_keep.view(view))
                self.exp_avg[n].lerp_(g, 1 - beta1)
                self.exp_avg_sq[n].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (self.exp_avg_sq[n].sqrt() / bc2_sqrt).add_(eps)
                p.addcdiv_(self.exp_avg[n] * neg_step.view(view), denom)
                p.grad = None

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def estimate_loss(self, amp) -> list[dict[str, dict]]:
        """training.estimate_loss for every member at once (same fixed batches for all)."""
        first = self.members[0].tr
        cfg = first.cfg
        self.template.eval()
        out = [{} for _ in self.members]
        for offset, (role, ids) in enumerate(sorted(first.tokens.items())):
            batches = training.Batches(ids, cfg.model.block_size, cfg.train.batch_size, self.device,
                                       cfg.train.eval_seed + offset)
            losses, nbytes = [], 0
            for _ in range(cfg.train.eval_iters):
                x, y = batches.next()
                with amp:
                    losses.append(self._eval_loss(self.params, x, y).float().cpu().tolist())
                nbytes += int(first.byte_lengths[y.cpu().numpy()].sum())
            tokens = cfg.train.eval_iters * y.numel()
            per_member = np.asarray(losses).T  # (K, eval_iters)
            for k, row in enumerate(per_member):
                mean = float(np.mean(row.tolist()))
                out[k][role] = {"loss": mean, "se": standard_error(np.asarray(row.tolist())),
                                "bpb": mean * tokens / (math.log(2) * nbytes) if nbytes else None}
        return out


# ---------------------------------------------------------------------------
# The loop


def _fail_members(pack: Pack, gone: dict[int, tuple[str, str]]) -> None:
    for k, (status, error) in gone.items():
        m = pack.members[k]
        m.status, m.error = status, error
        with speaking_for(m.run):
            log.error("%s: %s (checkpoints/last holds the last good state)", status, error)
    if gone:
        pack.drop(sorted(gone))


def _evaluate(pack: Pack, step: int, lrs: list[float]) -> None:
    """Every member's evaluation at `step` (training.evaluate with the packed estimates)."""
    estimates = pack.estimate_loss(pack.members[0].tr.amp())
    gone = {}
    for k, (m, est) in enumerate(zip(pack.members, estimates)):
        pack.sync(k, lrs[k])
        if m.tr.device.type == "cpu":
            torch.set_rng_state(m.generator.get_state())  # saved as the checkpoint's rng.torch
        with speaking_for(m.run):
            try:
                training.evaluate(m.tr, step, estimates=est)
            except training.Diverged as exc:
                gone[k] = ("diverged", str(exc))
    _fail_members(pack, gone)


def train_packed(members: list[Member]) -> None:
    """Train started members together to max_iters; each ends with its own status."""
    pack = Pack(members)
    first = members[0].tr
    t, start = first.cfg.train, first.state.step
    tokens_per_step = t.batch_size * t.grad_accum * first.cfg.model.block_size
    amp = first.amp()

    def lrs(step):
        return [training.lr_at(step, m.cfg.train) for m in pack.members]

    if not any(m.resume for m in members):
        _evaluate(pack, 0, [m.cfg.train.lr for m in pack.members])
    for step in range(start, t.max_iters):
        if not pack.members:
            return
        alive = list(pack.members)
        rates = [m.tr.base_rates.scaled(m.tr.schedule.factor(step)) for m in alive]
        step_lrs = lrs(step)  # the optimizer's lr in this step, and in the checkpoint after it
        tic = time.perf_counter()
        for _ in range(t.grad_accum):
            xs, ys = zip(*(m.tr.batches.next() for m in pack.members))
            losses = pack.forward_backward(torch.stack(xs), torch.stack(ys), rates, amp, t.grad_accum)
        pack.optimizer_step(step_lrs)
        values = losses.float().cpu().tolist()
        elapsed = time.perf_counter() - tic
        done = step + 1
        for m, value, lr in zip(pack.members, values, step_lrs):
            s = m.tr.state
            s.train_seconds += elapsed
            s.tokens_seen += tokens_per_step
            if m.tr.loggers.due(done) and math.isfinite(value):
                factor = m.tr.schedule.factor(step)
                m.tr.loggers.train_step(done, value, lr, s.tokens_seen / s.train_seconds, factor,
                                        m.tr.base_rates.scaled(factor).rates())
        if done % t.log_interval == 0 or done == t.max_iters:  # training.Progress's plain lines
            for m, value, lr in zip(pack.members, values, step_lrs):
                speed = m.tr.state.tokens_seen / m.tr.state.train_seconds
                m.run.append_train_point({"step": done, "loss": value, "lr": lr,  # as training.train writes it
                                          "tokens_per_sec": speed})
                with speaking_for(m.run):
                    log.info("step %d/%d  loss %.4f  lr %.2e  %s tok/s  (%s)", done, t.max_iters, value, lr,
                             f"{speed:,.0f}", m.run.path.name)
        _fail_members(pack, {k: ("diverged", f"loss became {v} at step {step}")
                             for k, v in enumerate(values) if not math.isfinite(v)})
        if pack.members and (done % t.eval_interval == 0 or done == t.max_iters):
            still = {id(m) for m in pack.members}
            _evaluate(pack, done, [lr for m, lr in zip(alive, step_lrs) if id(m) in still])
    for m in pack.members:
        m.status = "trained"


def _finish(m: Member) -> None:
    """training.train's ending for one member: final evaluation, summary, loggers, sampling."""
    tr = m.tr
    status, error = m.status, m.error
    try:
        with speaking_for(m.run):
            if status == "trained":
                training.final_evaluation(tr)
                status = "completed"
    finally:
        try:
            summary = training.finish(tr, "failed" if status == "trained" else status, error)
            tr.loggers.final(summary)
        finally:
            tr.loggers.close()
    with speaking_for(m.run):
        m.summary = task.after_training(m.cfg, m.run, summary)


def _sigterm(signum, frame):
    raise training.Interrupted("terminated by signal")


def run_pack(members: list[Member]) -> None:
    """Train, then finish, a group of started members; every member ends with m.summary set."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm) if on_main else None
    try:
        try:
            train_packed(members)
        except (KeyboardInterrupt, training.Interrupted) as exc:
            for m in members:
                if m.status in ("running", "trained"):
                    m.status, m.error = "interrupted", str(exc) or "interrupted"
                    with speaking_for(m.run):
                        log.error("interrupted at step %d; rerun the sweep into its folder, or resume this run "
                                  "alone: dropsample train --resume %s", m.tr.state.step, m.run.path)
        except Exception:  # a bug in the shared computation: every member still in it failed
            for m in members:
                if m.status == "running":
                    m.status = "crashed"
            raise
    except Exception as exc:
        for m in members:
            if m.status == "crashed":
                with speaking_for(m.run):
                    try:
                        training.finish(m.tr, "failed", f"{type(exc).__name__}: {exc}")
                    finally:
                        m.tr.loggers.close()
                    m.summary = task.sweep_failure(m.run, exc)
                m.stack.close()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for m in members:
        if m.summary is not None:
            continue
        with speaking_for(m.run):
            try:
                with m.stack:
                    _finish(m)
            except Exception as exc:
                m.summary = task.sweep_failure(m.run, exc)


def run_jobs(jobs: list[tuple[object, Path]], device: str | None = None, max_pack: int | None = None) -> list[Summary]:
    """Sweep jobs (a config, composed or typed, and its run folder) under task.py's sweep policy:
    configurations that pack (equal pack_key and start step) train together, any other job
    alone, through task.run_task; `max_pack` caps a pack's size. Returns each job's summary,
    in order; one job's failure never stops the others. (bench/ calls this directly.)"""
    runs = [RunFolder(run_dir) for _, run_dir in jobs]
    raws = [to_dict(raw) if isinstance(raw, Config) else raw for raw, _ in jobs]
    results: list[Summary | None] = [None] * len(jobs)
    with run_logs(runs):
        groups: dict[tuple, list[tuple[int, Member]]] = {}
        for i, (raw, run) in enumerate(zip(raws, runs)):
            with speaking_for(run):
                try:
                    cfg = validate(raw)
                    if not run.is_run():  # outside Hydra: the saved config sample, eval and report read
                        from omegaconf import OmegaConf

                        run.config_path.parent.mkdir(parents=True, exist_ok=True)
                        OmegaConf.save(OmegaConf.create(to_dict(cfg)), run.config_path)
                    done, resume = task.plan_sweep_job(cfg, run)
                    if done is not None:
                        results[i] = done
                        continue
                    step = run.load_checkpoint("last").state["step"] if resume else 0
                    key = (pack_key(cfg) or f"alone {i}", step)
                    while max_pack and len(groups.get(key, ())) >= max_pack:
                        key += ("more",)  # a full pack: the next one of this kind
                    groups.setdefault(key, []).append((i, Member(cfg=cfg, run=run, resume=resume)))
                except Exception as exc:
                    results[i] = task.sweep_failure(run, exc)
        for group in groups.values():
            if len(group) == 1:  # nothing to pack it with: the ordinary job
                (i, m), = group
                with speaking_for(m.run):
                    results[i] = task.run_task(raws[i], m.run.path, sweep_job=True, resume=m.resume)
                continue
            started = []
            for i, m in group:
                with speaking_for(m.run):
                    try:
                        _start(m, device)
                        started.append(m)
                    except Exception as exc:
                        m.stack.close()
                        results[i] = task.sweep_failure(m.run, exc)
            if started:
                with speaking_for(*(m.run for m in started)):
                    log.info("training %d configurations packed: %s", len(started),
                             ", ".join(m.run.path.name for m in started))
                    run_pack(started)
            for i, m in group:
                if m.summary is not None:
                    results[i] = m.summary
    return results  # type: ignore[return-value]
