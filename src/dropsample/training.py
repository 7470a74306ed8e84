"""The training loop: config -> data -> model -> optimizer -> run folder.

    train(cfg, run_dir) = build -> (restore) -> loop -> finish

Evaluation happens at step 0, every `eval_interval` steps and at the end: train and val
loss in eval mode (no dropout) on `eval_iters` batches each, drawn with the fixed
`eval_seed`, so the gap (val - train) compares across steps and runs. Each evaluation also
saves `checkpoints/last` (and `best` when val improved). Everything a resumed run needs
is one TrainState (saved whole in state.json) plus tensors (weights, AdamW moments, RNG
states), so a resumed run continues exactly as if it had never stopped.

On several processes (distributed.py) the same phases run on every rank: the model is wrapped
in DistributedDataParallel for the optimizer steps, each rank takes its slice of the global
batch, losses and evaluations are reduced over ranks, every rank's RNG state goes into the
checkpoint, and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dropsample import checkpoint as ckpt
from dropsample import data as data_mod
from dropsample import distributed
from dropsample import loggers, pretrained
from dropsample.config import validate_with_data
from dropsample import tokenizer as toks
from dropsample.device import autocast, pick_device, pick_dtype
from dropsample.evaluation import evaluate_splits, gap, standard_error, token_nll
from dropsample.errors import DamagedFile, UserError
from dropsample.dropout import DropoutRates, DropoutSchedule, resolve_rates
from dropsample.model import GPT, GPTConfig
from dropsample.optim import AdamW
from dropsample.runs import RunFolder, Summary, finite
from dropsample.schema import Config, TrainConfig, config_hash

log = logging.getLogger("dropsample")


class Diverged(Exception):
    pass


class Interrupted(Exception):
    pass


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr at lr_decay_iters (nanoGPT's schedule)."""
    decay_iters = t.lr_decay_iters or t.max_iters
    if step < t.warmup_iters:
        return t.lr * (step + 1) / (t.warmup_iters + 1)
    if step >= decay_iters:
        return t.min_lr
    ratio = (step - t.warmup_iters) / max(decay_iters - t.warmup_iters, 1)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.lr - t.min_lr)


def make_optimizer(model: GPT, t: TrainConfig, device: torch.device):
    """AdamW; weight decay on matrices and embeddings (dim >= 2), none on biases and LayerNorms.

    CPU: optim.AdamW, torch's fused AdamW kernel called without torch.optim's 1.5-2.5 s
    import of torch._dynamo (see optim.py). CUDA: torch.optim.AdamW(fused=True), the same
    kernel. Other devices (MPS): torch.optim.AdamW as torch chooses for them (its fused MPS
    kernel is newer than the oldest torch this project allows)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if device.type == "cpu":
        return AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=True if device.type == "cuda" else None)


class Batches:
    """Random windows of block_size + 1 tokens; the generator's state is the data position.

    Under DDP every rank draws the same batch_size * world_size window indices and keeps slice
    `rank` of them, so the ranks' batches are disjoint draws whose union is exactly the batch one
    process with batch_size * world_size draws, and the generator's state is the same on every rank.
    """

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.data = data  # (N,) int64 token ids
        self.block_size, self.batch_size, self.device = block_size, batch_size, device
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        # (N - block_size, block_size + 1) strided view: a batch is one gather, no copies per row
        self.windows = self.data.unfold(0, block_size + 1, 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.batch_size * self.world_size
        ix = torch.randint(self.windows.shape[0], (n,), generator=self.generator)  # (B * W,)
        rows = self.windows[ix[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]]  # (B, T + 1)
        x, y = rows[:, :-1], rows[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


@torch.inference_mode()
def estimate_loss(model: GPT, splits: dict[str, torch.Tensor], cfg: Config, device, amp,
                  byte_lengths: np.ndarray) -> dict[str, dict]:
    """Per split: mean loss over eval_iters fixed batches (eval mode), its standard error over
    the batches, and bits per byte of the batches' targets.

    Under DDP a batch is the global one (each rank scores its slice, see Batches): a batch's
    loss is the mean of the ranks' equal-sized slice means, and bytes add up over ranks."""
    was_training = model.training
    model.eval()
    out = {}
    launch = distributed.info()
    for offset, (role, ids) in enumerate(sorted(splits.items())):
        batches = Batches(ids, cfg.model.block_size, cfg.train.batch_size, device, cfg.train.eval_seed + offset,
                          launch.rank, launch.world_size)
        losses, nbytes = [], 0
        for _ in range(cfg.train.eval_iters):
            x, y = batches.next()
            with amp:
                logits, _ = model(x)
            # the mean NLL F.cross_entropy would give, without its second (B, T, V) tensor
            losses.append(token_nll(logits, y).mean().item())
            nbytes += int(byte_lengths[y.cpu().numpy()].sum())
        if distributed.active():
            # (eval_iters + 1,) float64: per-batch losses and the byte count, summed over ranks
            summed = distributed.sum_(np.asarray(losses + [nbytes], dtype=np.float64))
            losses, nbytes = list(summed[:-1] / launch.world_size), int(summed[-1])
        mean = float(np.mean(losses))
        tokens = cfg.train.eval_iters * y.numel() * launch.world_size
        out[role] = {"loss": mean, "se": standard_error(np.asarray(losses)),
                     "bpb": mean * tokens / (math.log(2) * nbytes) if nbytes else None}
    model.train(was_training)
    return out


@dataclass
class Progress:
    """Rich progress bar on a terminal, plain log lines otherwise."""

    total: int
    start: int
    log_interval: int

    def __post_init__(self):
        self.bar = None
        if sys.stderr.isatty() and distributed.is_main():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.bar = RichProgress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")

    def update(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step + 1, info=info)
        elif (step + 1) % self.log_interval == 0 or step + 1 == self.total:
            log.info("step %d/%d  %s", step + 1, self.total, info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------
# State


@dataclass
class TrainState:
    """Everything about a run's progress that is not a tensor: saved whole in each
    checkpoint's state.json, restored whole on resume, and the source of the final summary."""

    config_hash: str
    step: int = 0
    best_val: float = math.inf
    best_step: int | None = None
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time inside optimizer steps
    wall_seconds: float = 0.0  # wall time of the run up to this state, earlier processes included
    schedule: dict = field(default_factory=dict)  # DropoutSchedule.state_dict()
    last_eval: dict = field(default_factory=dict)  # role -> loss at the latest evaluation
    world_size: int = 1  # processes that trained it (DDP): a resume needs as many

    def state_dict(self) -> dict:
        d = asdict(self)
        d["best_val"] = finite(self.best_val)
        d["val_loss"] = self.last_eval.get("val")  # read by `sample` to label its checkpoint
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> "TrainState":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in d.items() if k in known}
        if values.get("best_val") is None:
            values["best_val"] = math.inf
        return cls(**values)


def rng_states(batches: Batches, device: torch.device) -> dict[str, torch.Tensor]:
    """Every RNG a resumed run needs. Under DDP (a collective: every rank calls it) the data
    generator is the same on all ranks; each rank's dropout streams are saved as
    torch/cuda (rank 0) and rank<r>.torch/rank<r>.cuda."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    states = {"data": batches.generator.get_state()}
    for rank, theirs in enumerate(distributed.gather(own)):
        states.update({(f"rank{rank}." if rank else "") + name: value for name, value in theirs.items()})
    return states


def restore_rng(tensors: dict[str, torch.Tensor], batches: Batches, device: torch.device) -> None:
    prefix = f"rng.rank{distributed.info().rank}." if distributed.info().rank else "rng."
    torch.set_rng_state(tensors[prefix + "torch"])
    batches.generator.set_state(tensors["rng.data"])
    if device.type == "cuda" and prefix + "cuda" in tensors:
        torch.cuda.set_rng_state(tensors[prefix + "cuda"], device)


# ---------------------------------------------------------------------------
# The phases


@dataclass
class Trainer:
    """What build() makes and the other phases share."""

    cfg: Config
    run: RunFolder
    data: data_mod.TokenizedData
    tokens: dict[str, torch.Tensor]  # role -> (N,) int64
    device: torch.device
    dtype: torch.dtype
    model: GPT
    optimizer: torch.optim.Optimizer | AdamW
    scaler: torch.amp.GradScaler
    schedule: DropoutSchedule
    base_rates: DropoutRates
    batches: Batches
    state: TrainState
    byte_lengths: np.ndarray  # (V,) UTF-8 bytes per token id, for bits per byte
    init_from: dict | None = None  # the pretrained source and its revision (pretrained.py), or None
    wall_start: float = 0.0
    loggers: loggers.Loggers = loggers.OFF  # experiment loggers (loggers.py), opened by train()

    @property
    def char_level(self) -> bool:
        return self.cfg.data.tokenizer == "char"

    def amp(self):
        return autocast(self.device, self.dtype)


def build(cfg: Config, run_dir: Path, device: str | None = None) -> Trainer:
    """Data, model, optimizer, schedule and batches; raises UserError before anything is written."""
    torch.manual_seed(cfg.seed)
    launch = distributed.info()
    digest = config_hash(cfg)  # the config as written: a pretrained source's shape is filled in below
    with distributed.main_first():  # rank 0 fetches and tokenizes into the caches, the others read them
        source = pretrained.open_source(cfg.model)  # None without model.init_from
        cfg = pretrained.shaped(cfg, source)
        data = data_mod.prepare(cfg.data, log=log.info)
    validate_with_data(cfg, {role: len(ids) for role, ids in data.splits.items()})
    dev = pick_device(device or cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, dev)
    base_rates = resolve_rates(cfg.dropout)
    model_cfg = GPTConfig(vocab_size=data.vocab_size, block_size=cfg.model.block_size, n_layer=cfg.model.n_layer,
                          n_head=cfg.model.n_head, n_embd=cfg.model.n_embd, dropout=base_rates)
    model = GPT(model_cfg)
    pretrained.load_weights(model, source)
    model = model.to(dev)
    if launch.rank:
        # same initial weights on every rank (same seed), then rank r's own dropout masks
        torch.manual_seed(distributed.rank_seed(cfg.seed, launch.rank))
    tokens = {r: torch.from_numpy(data.splits[r].astype(np.int64)) for r in ("train", "val")}
    return Trainer(
        cfg=cfg, run=RunFolder(run_dir), data=data, tokens=tokens, device=dev, dtype=dtype, model=model,
        optimizer=make_optimizer(model, cfg.train, dev),
        # loss scaling only where fp16 needs it; bf16 has fp32's range
        scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and dev.type == "cuda"),
        schedule=DropoutSchedule(cfg.dropout.schedule, cfg.train.max_iters),
        base_rates=base_rates,
        batches=Batches(tokens["train"], cfg.model.block_size, cfg.train.batch_size, dev, cfg.seed,
                        launch.rank, launch.world_size),
        state=TrainState(config_hash=digest, world_size=launch.world_size),
        byte_lengths=toks.token_byte_lengths(data.tokenizer),
        init_from=source.describe() if source else None,
    )


def restore(tr: Trainer) -> None:
    """Continue from checkpoints/last: weights, optimizer, RNG, schedule and TrainState."""
    fix = (f"it cannot resume from there: delete {tr.run.path} and train again, "
           "or sample and evaluate from checkpoints/best")
    last = tr.run.load_checkpoint("last", fix=fix)
    world = distributed.info().world_size
    trained_on = last.state.get("world_size", 1)
    if trained_on != world:
        how = (f"torchrun --nproc_per_node={trained_on} -m dropsample train --resume {tr.run.path}" if trained_on > 1
               else f"dropsample train --resume {tr.run.path} (one process)")
        raise UserError(f"{tr.run.path} was trained on {trained_on} process(es), this launch has {world}; each "
                        f"rank's data slice and dropout stream depend on it, so resume with: {how}")
    if distributed.is_main():
        ckpt.clean_stale(tr.run.checkpoints_dir)
    try:
        tr.model.load_state_dict(last.load_model(tr.device).state_dict())
        tensors = last.tensors()
        tr.optimizer.load_state_dict(ckpt.optimizer_state(last, tensors))
        restore_rng(tensors, tr.batches, tr.device)
        tr.state = TrainState.from_state_dict(last.state)
        tr.schedule.load_state_dict(tr.state.schedule)
    except ckpt.CheckpointError as exc:
        raise DamagedFile(exc.path, exc.problem, fix) from None
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise DamagedFile(last.folder, f"state does not fit this run ({type(exc).__name__}: {exc})", fix) from None
    if distributed.is_main():
        tr.run.truncate_metrics(tr.state.step)
    log.info("resuming %s from step %d", tr.run.path, tr.state.step)


def _start_summary(tr: Trainer) -> None:
    cfg = tr.cfg
    tr.run.update_summary(
        status="running", error=None, experiment=cfg.experiment_name, name=cfg.name,
        config_hash=tr.state.config_hash,
        data=tr.data.describe(),
        dropout=tr.base_rates.to_dict(), dropout_schedule=cfg.dropout.schedule.kind,
        params=tr.model.num_params(), device=str(tr.device), dtype=str(tr.dtype).replace("torch.", ""),
        torch_version=torch.__version__, cpu_threads=torch.get_num_threads(), init_from=tr.init_from,
        world_size=tr.state.world_size,
        global_batch=cfg.train.batch_size * cfg.train.grad_accum * tr.state.world_size,
    )


def evaluate(tr: Trainer, step: int, estimates: dict[str, dict] | None = None) -> None:
    """Losses on both splits, a metrics row, checkpoints/last (and best when val improved).
    Packed training (packed.py) passes the `estimates` it computed for this run."""
    s, t = tr.state, tr.cfg.train
    if estimates is None:
        estimates = estimate_loss(tr.model, tr.tokens, tr.cfg, tr.device, tr.amp(), tr.byte_lengths)
    losses = {role: e["loss"] for role, e in estimates.items()}
    if not all(math.isfinite(v) for v in losses.values()):
        raise Diverged(f"non-finite eval loss at step {step}: {losses}")
    s.step, s.last_eval = step, losses
    tr.schedule.observe_val(losses["val"])  # reduced losses: every rank's schedule agrees
    # rates and factor of one moment: those in effect from this step on (after a plateau update)
    factor = tr.schedule.factor(step)
    s.schedule = tr.schedule.state_dict()
    s.wall_seconds = time.time() - tr.wall_start
    row = {
        "step": step, "tokens": s.tokens_seen,
        "train_loss": losses["train"], "val_loss": losses["val"],
        "train_loss_se": estimates["train"]["se"], "val_loss_se": estimates["val"]["se"],
        "train_ppl": math.exp(losses["train"]), "val_ppl": math.exp(losses["val"]),
        "train_bpb": estimates["train"]["bpb"], "val_bpb": estimates["val"]["bpb"],
        "gap": losses["val"] - losses["train"],
        "lr": lr_at(min(step, t.max_iters - 1), t),
        "dropout_factor": factor, "dropout": tr.base_rates.scaled(factor).rates(),
        "tokens_per_sec": s.tokens_seen / s.train_seconds if s.train_seconds else None,
        "elapsed_sec": s.wall_seconds,
    }
    if tr.char_level:
        row["train_bpc"], row["val_bpc"] = losses["train"] / math.log(2), losses["val"] / math.log(2)
    improved = losses["val"] < s.best_val
    if improved:
        s.best_val, s.best_step = losses["val"], step
    rng = rng_states(tr.batches, tr.device)  # a collective under DDP: every rank takes part
    if not distributed.is_main():
        return
    tr.run.append_metrics(row)
    tr.loggers.evaluation(row)
    ckpt.save(tr.run.checkpoint("last"), tr.model, tr.run.tokenizer_path, state=s.state_dict(),
              optimizer=tr.optimizer, rng=rng)
    if improved:
        ckpt.copy(tr.run.checkpoint("last"), tr.run.checkpoint("best"))
    log.info("eval step %d: train %.4f val %.4f gap %.4f", step, losses["train"], losses["val"], row["gap"])


def loop(tr: Trainer, fresh: bool) -> None:
    """Optimizer steps from tr.state.step to max_iters, evaluating on the way. Raises Diverged."""
    t, s, model = tr.cfg.train, tr.state, tr.model
    train_model = torch.compile(model) if t.compile else model
    # DDP: gradients averaged over ranks in backward (the last micro-batch's); tr.model stays the plain GPT
    train_model = distributed.wrap(train_model, tr.device)
    ddp = train_model is not model and distributed.active()
    tokens_per_step = t.batch_size * t.grad_accum * tr.cfg.model.block_size * s.world_size
    progress = Progress(t.max_iters, s.step, t.log_interval)
    try:
        model.set_dropout(tr.base_rates.scaled(tr.schedule.factor(s.step)))
        if fresh:
            evaluate(tr, 0)
        model.train()
        for step in range(s.step, t.max_iters):
            model.set_dropout(tr.base_rates.scaled(tr.schedule.factor(step)))
            lr = lr_at(step, t)
            for group in tr.optimizer.param_groups:
                group["lr"] = lr
            tic = time.perf_counter()
            for micro in range(t.grad_accum):
                if ddp:  # all-reduce once per optimizer step, not once per micro-batch
                    train_model.require_backward_grad_sync = micro == t.grad_accum - 1
                x, y = tr.batches.next()
                with tr.amp():
                    _, loss = train_model(x, y)
                tr.scaler.scale(loss / t.grad_accum).backward()
            if t.grad_clip > 0:
                tr.scaler.unscale_(tr.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
            tr.optimizer.zero_grad(set_to_none=True)
            # also syncs the device so the timing is honest; under DDP the mean over ranks, so
            # every rank sees the same number and agrees on divergence
            loss_value = distributed.mean_(loss.detach()).item()
            s.train_seconds += time.perf_counter() - tic
            s.tokens_seen += tokens_per_step
            if not math.isfinite(loss_value):
                raise Diverged(f"loss became {loss_value} at step {step}")
            progress.update(step, loss_value, lr, s.tokens_seen / s.train_seconds)
            done = step + 1
            if distributed.is_main() and (done % t.log_interval == 0 or done == t.max_iters):
                tr.run.append_train_point({"step": done, "loss": loss_value, "lr": lr,
                                           "tokens_per_sec": s.tokens_seen / s.train_seconds})
            if tr.loggers.due(done):  # experiment loggers: this step's loss, lr, speed and dropout in effect
                factor = tr.schedule.factor(step)
                tr.loggers.train_step(done, loss_value, lr, s.tokens_seen / s.train_seconds, factor,
                                      tr.base_rates.scaled(factor).rates())
            if done % t.eval_interval == 0 or done == t.max_iters:
                evaluate(tr, done)
                model.train()
    finally:
        progress.close()


def finish(tr: Trainer, status: str, error: str | None) -> Summary:
    """The summary's end-of-training fields, from the TrainState (and the metrics rows)."""
    s = tr.state
    if not distributed.is_main():  # rank 0 writes the summary; the others report the same status
        return Summary(status=status, error=error, steps=s.step, tokens_seen=s.tokens_seen)
    rows = tr.run.metrics()
    fields = {
        "status": status, "error": error,
        "steps": rows[-1]["step"] if rows else 0,
        "best_val_loss": finite(s.best_val),
        "best_val_ppl": math.exp(s.best_val) if math.isfinite(s.best_val) else None,
        "best_step": s.best_step,
        "tokens_seen": s.tokens_seen,
        "tokens_per_sec": s.tokens_seen / s.train_seconds if s.train_seconds else None,
        "wall_seconds": time.time() - tr.wall_start,
    }
    losses = s.last_eval
    if losses:
        fields.update(
            final_train_loss=losses["train"], final_val_loss=losses["val"],
            final_train_ppl=math.exp(losses["train"]), final_val_ppl=math.exp(losses["val"]),
        )
        if tr.char_level:
            fields["final_val_bpc"] = losses["val"] / math.log(2)
    return tr.run.update_summary(**fields)


def final_evaluation(tr: Trainer) -> None:
    """The best checkpoint on whole splits (capped at train.final_eval_tokens), with standard
    errors: the figures a comparison of runs stands on (see evaluation.py). Under DDP each
    rank scores its share of the windows and the sums are reduced."""
    distributed.barrier()  # rank 0 has finished writing checkpoints/best
    best = tr.run.load_checkpoint("best")
    model = best.load_model(tr.device)
    splits = {role: tr.data.splits[role] for role in ("train", "val", "test") if role in tr.data.splits}
    cap = tr.cfg.train.final_eval_tokens
    losses = evaluate_splits(model, splits, tr.data.tokenizer, max_tokens=cap, batch_size=tr.cfg.train.batch_size,
                             amp=tr.amp())
    if not distributed.is_main():
        return
    g, g_se = gap(losses)
    v, t = losses["val"], losses["train"]
    log.info("best checkpoint (step %s) on %s val tokens: loss %.4f ± %.4f, %s bits/byte; gap %.4f ± %s",
             best.state["step"], f"{v.tokens:,}", v.loss, v.loss_se or float("nan"),
             f"{v.bpb:.4f}" if v.bpb is not None else "-", g, f"{g_se:.4f}" if g_se is not None else "-")
    d = v.to_dict()
    tr.run.update_summary(
        evaluation={"checkpoint": "best", "step": best.state["step"], "max_tokens": cap,
                    "splits": {role: loss.to_dict() for role, loss in losses.items()}},
        val_loss=v.loss, val_loss_se=v.loss_se, val_ppl=v.ppl, val_ppl_low=d.get("ppl_low"),
        val_ppl_high=d.get("ppl_high"), val_bpb=v.bpb, val_bpb_se=v.bpb_se,
        train_loss=t.loss, train_loss_se=t.loss_se, gap=g, gap_se=g_se, ppl_ratio=math.exp(g),
    )


def _sigterm_to_interrupt(signum, frame):
    raise Interrupted("terminated by signal")


def train(cfg: Config, run_dir: Path, *, resume: bool = False, device: str | None = None) -> Summary:
    """Train one configuration into `run_dir`; returns the final summary.

    Raises UserError for bad configs or data *before* anything marks the folder as a run.
    Divergence and interruption end the run with that status (not an exception).
    """
    tr = build(cfg, run_dir, device)
    if resume:
        restore(tr)
    # experiment loggers: new logger runs, or the same ones continued from the checkpoint's step
    main = distributed.is_main()
    tr.loggers = loggers.start(cfg, tr.run, resume_from=tr.state.step if resume else None) if main else loggers.OFF
    if main:
        tr.data.tokenizer.save(str(tr.run.tokenizer_path))
    tr.wall_start = time.time() - tr.state.wall_seconds
    if main:
        _start_summary(tr)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt) if on_main else None
    status, error = "running", None
    try:
        loop(tr, fresh=not resume)
        final_evaluation(tr)
        distributed.barrier()  # every rank got here: only then may rank 0 say completed
        status = "completed"
    except Diverged as exc:
        status, error = "diverged", str(exc)
        log.error("diverged: %s (checkpoints/last holds the last good state)", exc)
    except (KeyboardInterrupt, Interrupted) as exc:
        status, error = "interrupted", str(exc) or "interrupted"
        if distributed.active():
            error += " (with several processes: the launcher stops all when one fails; see its output)"
        log.error("interrupted at step %d; resume with: dropsample train --resume %s", tr.state.step, run_dir)
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        try:
            summary = finish(tr, status, error)
            tr.loggers.final(summary)
        finally:
            tr.loggers.close()
    return summary
