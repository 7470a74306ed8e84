"""`dropsample eval`: loss, perplexity and bits per character of a checkpoint on whole splits,
optionally with MC dropout (the mean of K dropout-perturbed predictive distributions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dropsample import data as data_mod
from dropsample.device import pick_device
from dropsample.dropout import set_mc_dropout
from dropsample.errors import UserError
from dropsample.runs import RunFolder


@torch.inference_mode()
def split_loss(model, ids, batch_size: int = 32, max_batches: int = 0, mc_samples: int = 0, seed: int = 0) -> float:
    """Mean next-token NLL over non-overlapping block_size windows covering the split.

    With mc_samples = K > 0: NLL of p_bar = mean over K dropout-on passes of softmax(logits).
    """
    block = model.config.block_size
    data = torch.as_tensor(ids.astype("int64"))
    n_windows = (len(data) - 1) // block
    device = next(model.parameters()).device
    total, count = 0.0, 0
    if mc_samples:
        torch.manual_seed(seed)
    for b, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches and b >= max_batches:
            break
        rows = range(first, min(first + batch_size, n_windows))
        x = torch.stack([data[r * block : (r + 1) * block] for r in rows]).to(device)
        y = torch.stack([data[r * block + 1 : (r + 1) * block + 1] for r in rows]).to(device)
        if mc_samples:
            set_mc_dropout(model, True)
            probs = sum(F.softmax(model(x)[0].float(), dim=-1) for _ in range(mc_samples)) / mc_samples
            set_mc_dropout(model, False)
            nll = -probs.gather(-1, y[..., None]).clamp_min(1e-30).log()
        else:
            logp = F.log_softmax(model(x)[0].float(), dim=-1)
            nll = -logp.gather(-1, y[..., None])
        total += nll.sum().item()
        count += nll.numel()
    return total / max(count, 1)


def eval_command(run_dir, which: str = "best", mc_samples: int = 0, max_batches: int = 0) -> dict:
    from rich.console import Console
    from rich.table import Table

    if which not in ("best", "last"):
        raise UserError(f"--checkpoint {which!r}: use best or last")
    if mc_samples < 0 or max_batches < 0:
        raise UserError("--mc-samples and --batches must be >= 0")
    run = RunFolder(run_dir)
    cfg = run.config()
    run.summary(), run.eval_history()  # damage shows now, not after the work
    ckpt = run.load_checkpoint(which)
    model = ckpt.load_model(pick_device(cfg.train.device)).eval()
    splits = data_mod.prepare(cfg.data, log=lambda *a: None).splits
    char_level = cfg.data.tokenizer == "char"
    results = {}
    for role in ("val", "test"):
        if role not in splits:
            continue
        row = {"loss": split_loss(model, splits[role], max_batches=max_batches)}
        if mc_samples:
            row["mc_loss"] = split_loss(model, splits[role], max_batches=max_batches, mc_samples=mc_samples)
        for key in [k for k in row]:
            prefix = key[: -len("loss")]
            row[f"{prefix}ppl"] = math.exp(row[key])
            if char_level:
                row[f"{prefix}bpc"] = row[key] / math.log(2)
        results[role] = row
    record = {"checkpoint": which, "step": ckpt.state["step"], "mc_samples": mc_samples,
              "max_batches": max_batches, "splits": results}
    run.write_eval(f"{which}@{ckpt.state['step']}" + (f"+mc{mc_samples}" if mc_samples else ""), record)
    run.update_summary(eval=record)
    table = Table(title=f"{run.path.name}: {which} checkpoint (step {ckpt.state['step']})")
    columns = sorted({k for r in results.values() for k in r})
    table.add_column("split")
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for role, row in results.items():
        table.add_row(role, *(f"{row[c]:.4f}" for c in columns))
    Console().print(table)
    return record
