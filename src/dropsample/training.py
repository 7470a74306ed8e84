"""The training loop: config -> data -> model -> optimizer -> run folder.

Evaluation happens at step 0, every `eval_interval` steps and at the end: train
and val loss in eval mode (no dropout) on `eval_iters` batches each, drawn with the
fixed `eval_seed`, so the gap (val - train) compares across steps and runs. Each
evaluation also saves `checkpoints/last` (and `best` when val improved): a resumed
run restores weights, optimizer moments, RNG states, data position and schedule
state, and continues exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dropsample import checkpoint as ckpt
from dropsample import data as data_mod
from dropsample.config import validate, validate_with_data
from dropsample.dropout import DropoutSchedule, ScheduleConfig, resolve_rates
from dropsample.model import GPT, GPTConfig
from dropsample.runs import RunFolder, config_hash

log = logging.getLogger("dropsample")


class Diverged(Exception):
    pass


class Interrupted(Exception):
    pass


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def lr_at(step: int, t) -> float:
    """Linear warm-up to lr, then cosine decay to min_lr at lr_decay_iters (nanoGPT's schedule)."""
    decay_iters = t.lr_decay_iters or t.max_iters
    if step < t.warmup_iters:
        return t.lr * (step + 1) / (t.warmup_iters + 1)
    if step >= decay_iters:
        return t.min_lr
    ratio = (step - t.warmup_iters) / max(decay_iters - t.warmup_iters, 1)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (t.lr - t.min_lr)


def make_optimizer(model: GPT, t, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings (dim >= 2), none on biases and LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)


class Batches:
    """Random windows of block_size + 1 tokens; the generator's state is the data position."""

    def __init__(self, data: torch.Tensor, block_size: int, batch_size: int, device: torch.device, seed: int):
        self.data = data  # (N,) int64 token ids
        self.block_size, self.batch_size, self.device = block_size, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        # (N - block_size, block_size + 1) strided view: a batch is one gather, no copies per row
        self.windows = self.data.unfold(0, block_size + 1, 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(self.windows.shape[0], (self.batch_size,), generator=self.generator)
        rows = self.windows[ix]
        x, y = rows[:, :-1], rows[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


@torch.inference_mode()
def estimate_loss(model: GPT, splits: dict[str, torch.Tensor], cfg, device, autocast) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches per split, in eval mode."""
    was_training = model.training
    model.eval()
    out = {}
    for offset, (role, ids) in enumerate(sorted(splits.items())):
        batches = Batches(ids, cfg.model.block_size, cfg.train.batch_size, device, cfg.train.eval_seed + offset)
        losses = []
        for _ in range(cfg.train.eval_iters):
            x, y = batches.next()
            with autocast:
                _, loss = model(x, y)
            losses.append(loss.item())
        out[role] = float(np.mean(losses))
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
        if sys.stderr.isatty():
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


def rng_states(batches: Batches, device: torch.device) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state(), "data": batches.generator.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(tensors: dict[str, torch.Tensor], batches: Batches, device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    batches.generator.set_state(tensors["rng.data"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def _sigterm_to_interrupt(signum, frame):
    raise Interrupted("terminated by signal")


def train(cfg: DictConfig, run_dir: Path, *, resume: bool = False, device: str | None = None) -> dict:
    """Train one configuration into `run_dir`; returns the final summary.

    Raises UserError for bad configs or data *before* anything marks the folder as a run.
    """
    validate(cfg)
    run = RunFolder(run_dir)
    torch.manual_seed(cfg.seed)
    data = data_mod.prepare(cfg.data, log=log.info)
    validate_with_data(cfg, {role: len(ids) for role, ids in data.splits.items()})
    dev = pick_device(device or cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, dev)
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    # loss scaling only where fp16 needs it; bf16 has fp32's range
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and dev.type == "cuda")

    data.tokenizer.save(str(run.tokenizer_path))
    base_rates = resolve_rates(OmegaConf.to_container(cfg.dropout, resolve=True))
    model_cfg = GPTConfig(
        vocab_size=data.vocab_size,
        block_size=cfg.model.block_size,
        n_layer=cfg.model.n_layer,
        n_head=cfg.model.n_head,
        n_embd=cfg.model.n_embd,
        dropout=base_rates,
    )
    model = GPT(model_cfg).to(dev)
    optimizer = make_optimizer(model, cfg.train, dev)
    schedule = DropoutSchedule(ScheduleConfig.from_dict(cfg.dropout.schedule), cfg.train.max_iters)
    tokens = {r: torch.from_numpy(data.splits[r].astype(np.int64)) for r in ("train", "val")}
    batches = Batches(tokens["train"], cfg.model.block_size, cfg.train.batch_size, dev, cfg.seed)
    char_level = cfg.data.tokenizer == "char"

    start_step, best_val, best_step, tokens_seen, train_seconds = 0, math.inf, None, 0, 0.0
    summary = run.summary()
    if resume:
        last = ckpt.load(run.checkpoint("last"))
        weights = last.load_model(dev).state_dict()
        model.load_state_dict(weights)
        tensors = last.tensors()
        optimizer.load_state_dict(ckpt.optimizer_state(last, tensors))
        restore_rng(tensors, batches, dev)
        schedule.load_state_dict(last.state["schedule"])
        start_step = last.state["step"]
        best_val, best_step = last.state["best_val"], last.state["best_step"]
        tokens_seen, train_seconds = last.state["tokens_seen"], last.state["train_seconds"]
        run.truncate_metrics(start_step)
        log.info("resuming %s from step %d", run_dir, start_step)
    wall_start = time.time() - summary.get("wall_seconds", 0.0) if resume else time.time()

    summary = run.update_summary(
        status="running",
        error=None,
        experiment=cfg.experiment_name,
        name=cfg.name,
        config_hash=config_hash(cfg),
        data={"corpus": cfg.data.name, "tokenizer": cfg.data.tokenizer, "vocab_size": data.vocab_size,
              "sources": data.sources, "tokens": {r: int(len(a)) for r, a in data.splits.items()}},
        dropout=base_rates.to_dict(),
        dropout_schedule=cfg.dropout.schedule.kind,
        params=model.num_params(),
        device=str(dev),
        dtype=str(dtype).replace("torch.", ""),
        torch_version=torch.__version__,
        cpu_threads=torch.get_num_threads(),
    )
    train_model = torch.compile(model) if cfg.train.compile else model
    t = cfg.train
    tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size
    progress = Progress(t.max_iters, start_step, t.log_interval)
    previous_handler = signal.signal(signal.SIGTERM, _sigterm_to_interrupt) if _main_thread() else None
    last_losses: dict[str, float] = {}
    step = start_step
    status, error = "running", None

    def evaluate_and_save(step: int, rates) -> None:
        nonlocal best_val, best_step, last_losses
        losses = estimate_loss(model, tokens, cfg, dev, autocast)
        last_losses = losses
        if not all(math.isfinite(v) for v in losses.values()):
            raise Diverged(f"non-finite eval loss at step {step}: {losses}")
        schedule.observe_val(losses["val"])
        row = {
            "step": step,
            "tokens": tokens_seen,
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "train_ppl": math.exp(losses["train"]),
            "val_ppl": math.exp(losses["val"]),
            "gap": losses["val"] - losses["train"],
            "lr": lr_at(min(step, t.max_iters - 1), t),
            "dropout_factor": schedule.factor(step),
            "dropout": rates.rates(),
            "tokens_per_sec": tokens_seen / train_seconds if train_seconds else None,
            "elapsed_sec": time.time() - wall_start,
        }
        if char_level:
            row["train_bpc"], row["val_bpc"] = losses["train"] / math.log(2), losses["val"] / math.log(2)
        run.append_metrics(row)
        improved = losses["val"] < best_val
        if improved:
            best_val, best_step = losses["val"], step
        state = {
            "step": step,
            "best_val": best_val,
            "best_step": best_step,
            "tokens_seen": tokens_seen,
            "train_seconds": train_seconds,
            "schedule": schedule.state_dict(),
            "config_hash": summary["config_hash"],
            "val_loss": losses["val"],
        }
        ckpt.save(run.checkpoint("last"), model, run.tokenizer_path, state=state, optimizer=optimizer,
                  rng=rng_states(batches, dev))
        if improved:
            ckpt.copy(run.checkpoint("last"), run.checkpoint("best"))
        log.info("eval step %d: train %.4f val %.4f gap %.4f", step, losses["train"], losses["val"], row["gap"])

    try:
        rates = base_rates.scaled(schedule.factor(start_step))
        model.set_dropout(rates)
        if not resume:
            evaluate_and_save(0, rates)
        model.train()
        for step in range(start_step, t.max_iters):
            rates = base_rates.scaled(schedule.factor(step))
            model.set_dropout(rates)
            lr = lr_at(step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tic = time.perf_counter()
            for _ in range(t.grad_accum):
                x, y = batches.next()
                with autocast:
                    _, loss = train_model(x, y)
                scaler.scale(loss / t.grad_accum).backward()
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()  # also syncs the device so the timing is honest
            train_seconds += time.perf_counter() - tic
            tokens_seen += tokens_per_step
            if not math.isfinite(loss_value):
                raise Diverged(f"loss became {loss_value} at step {step}")
            progress.update(step, loss_value, lr, tokens_seen / train_seconds)
            done = step + 1
            if done % t.eval_interval == 0 or done == t.max_iters:
                evaluate_and_save(done, base_rates.scaled(schedule.factor(done)))
                model.train()
        status = "completed"
    except Diverged as exc:
        status, error = "diverged", str(exc)
        log.error("diverged: %s (checkpoints/last holds the last good state)", exc)
    except (KeyboardInterrupt, Interrupted) as exc:
        status, error = "interrupted", str(exc) or "interrupted"
        log.error("interrupted at step %d; resume with: dropsample train --resume %s", step, run_dir)
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("training failed")
        raise
    finally:
        progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        summary = _write_final(run, status, error, best_val, best_step, last_losses, tokens_seen, train_seconds,
                               wall_start, char_level)
    return summary


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _write_final(run, status, error, best_val, best_step, losses, tokens_seen, train_seconds, wall_start,
                 char_level) -> dict:
    rows = run.metrics()
    fields = {
        "status": status,
        "error": error,
        "steps": rows[-1]["step"] if rows else 0,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "best_val_ppl": math.exp(best_val) if math.isfinite(best_val) else None,
        "best_step": best_step,
        "tokens_seen": tokens_seen,
        "tokens_per_sec": tokens_seen / train_seconds if train_seconds else None,
        "wall_seconds": time.time() - wall_start,
    }
    if losses:
        fields.update(
            final_train_loss=losses["train"],
            final_val_loss=losses["val"],
            final_train_ppl=math.exp(losses["train"]),
            final_val_ppl=math.exp(losses["val"]),
            gap=losses["val"] - losses["train"],
            ppl_ratio=math.exp(losses["val"] - losses["train"]),
        )
        if char_level:
            fields["final_val_bpc"] = losses["val"] / math.log(2)
    return run.update_summary(**fields)
