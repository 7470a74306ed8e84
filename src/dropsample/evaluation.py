"""Loss on whole splits with its uncertainty, and `dropsample eval`.

`split_loss` scores non-overlapping `block_size` windows of a split (all of them, or
`max_windows` evenly spaced ones) in eval mode and returns per-token loss, bits per byte and
their standard errors. The window is the unit of the standard error: with n windows of the
same length and per-window mean losses l_i,

    loss = mean_i l_i,   SE(loss) = sd(l_i) / sqrt(n)

and bits per byte is a ratio of sums over windows (nats a_i, UTF-8 bytes b_i of the window's
targets), with the ratio estimator's standard error:

    bpb = sum a_i / (ln 2 * sum b_i),   SE(bpb) = sqrt(sum (a_i - R b_i)^2 / (n (n - 1))) / (ln 2 * mean b_i),
    R = sum a_i / sum b_i

Windows of one text are not independent (neighbours share topics), so these standard errors
describe the spread over windows, not over corpora. Training ends with this evaluation of the
best checkpoint (train, val and test when there is one); `dropsample eval` runs it on demand,
optionally with MC dropout (the mean of K dropout-perturbed predictive distributions).

Under DDP (distributed.py) each rank scores every W-th window and the per-window vectors
(nats, bytes; zero where another rank scored) are summed over ranks with all_reduce, so every
rank holds the same n values a single process computes and the means and standard errors
above are the single-process figures, not an average of per-rank ones.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dropsample import data as data_mod
from dropsample import distributed
from dropsample import tokenizer as toks
from dropsample.device import pick_device
from dropsample.dropout import set_mc_dropout
from dropsample.errors import UserError
from dropsample.runs import RunFolder

LN2 = math.log(2)


@dataclass
class SplitLoss:
    loss: float  # mean next-token NLL (nats per token)
    loss_se: float | None
    bpb: float | None  # bits per UTF-8 byte of the predicted text
    bpb_se: float | None
    windows: int
    tokens: int
    bytes: int

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict:
        """JSON for summaries: the fields plus perplexity and its 95% interval (exp of loss +- 1.96 SE)."""
        d = asdict(self)
        d["ppl"] = self.ppl
        if self.loss_se is not None:
            d["ppl_low"], d["ppl_high"] = math.exp(self.loss - 1.96 * self.loss_se), math.exp(self.loss + 1.96 * self.loss_se)
        return d


def window_starts(n_tokens: int, block: int, max_windows: int | None) -> np.ndarray:
    """First index of each non-overlapping window (block inputs + 1 target); evenly spaced when capped."""
    n = (n_tokens - 1) // block
    if n < 1:
        raise UserError(f"a split of {n_tokens} tokens holds no window of {block + 1}; use a shorter model.block_size")
    chosen = np.arange(n) if not max_windows or max_windows >= n else np.linspace(0, n - 1, max_windows).round()
    return np.unique(chosen.astype(np.int64)) * block


def standard_error(values: np.ndarray) -> float | None:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def ratio_se(a: np.ndarray, b: np.ndarray) -> float | None:
    """Standard error of sum(a) / sum(b) over n paired units (the ratio estimator)."""
    n = len(a)
    if n < 2 or b.sum() == 0:
        return None
    r = a.sum() / b.sum()
    return float(math.sqrt(((a - r * b) ** 2).sum() / (n * (n - 1))) / b.mean())


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) ids -> (B, T) fp32 negative log-likelihoods, as F.cross_entropy
    computes them, but with the log-softmax written over the logits' own (fp32) storage:
    at a BPE vocabulary the logits are hundreds of MB, and a second tensor of that size doubled
    the memory and, on a CPU, cost page faults (an 8 x 256 batch at 50,257 tokens: 460 -> 310
    ms). The logits are consumed; call it only on a forward pass's own output, without grad."""
    logits = logits.float()  # no copy when already fp32 (a bf16 pass's logits: one fp32 copy)
    logp = torch.log_softmax(logits, dim=-1, out=logits)
    return -logp.gather(-1, targets[..., None]).squeeze(-1)


@torch.inference_mode()
def split_loss(model, ids: np.ndarray, *, byte_lengths: np.ndarray | None = None, batch_size: int = 32,
               max_windows: int | None = None, mc_samples: int = 0, seed: int = 0, amp=None) -> SplitLoss:
    """Per-window NLL over non-overlapping windows of `ids`, in eval mode (see the module doc).

    With mc_samples = K > 0: NLL of p_bar = mean over K dropout-on passes of softmax(logits).
    """
    block = model.config.block_size
    data = torch.as_tensor(ids.astype(np.int64))
    starts = window_starts(len(data), block, max_windows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if mc_samples:
        torch.manual_seed(seed)
    nats = np.zeros(len(starts))  # (n,) float64 nats per window
    nbytes = np.zeros(len(starts), dtype=np.int64)  # (n,) UTF-8 bytes of each window's targets
    mine = np.arange(len(starts))[distributed.shard(len(starts))]  # this rank's windows (all of them alone)
    offsets = torch.arange(block + 1)
    try:
        for first in range(0, len(mine), batch_size):
            chosen = mine[first : first + batch_size]  # (b,)
            rows = data[torch.as_tensor(starts[chosen])[:, None] + offsets]  # (b, block + 1)
            x, y = rows[:, :-1].to(device), rows[:, 1:].to(device)
            with amp if amp is not None else nullcontext():
                if mc_samples:
                    set_mc_dropout(model, True)
                    probs = sum(F.softmax(model(x)[0].float(), dim=-1) for _ in range(mc_samples)) / mc_samples
                    set_mc_dropout(model, False)
                    nll = -probs.gather(-1, y[..., None]).squeeze(-1).clamp_min(1e-30).log()
                else:
                    nll = token_nll(model(x)[0], y)
            nats[chosen] = nll.sum(dim=1).double().cpu().numpy()
            if byte_lengths is not None:
                nbytes[chosen] = byte_lengths[rows[:, 1:].numpy()].sum(axis=1)
    finally:
        model.train(was_training)
    if distributed.active():  # disjoint shares: the sums are every window's values
        nats, nbytes = distributed.sum_(nats), distributed.sum_(nbytes)
    per_window = nats / block
    total_bytes = int(nbytes.sum())
    return SplitLoss(
        loss=float(per_window.mean()), loss_se=standard_error(per_window),
        bpb=float(nats.sum() / (LN2 * total_bytes)) if total_bytes else None,
        bpb_se=ratio_se(nats, nbytes.astype(float)) / LN2 if total_bytes and len(starts) > 1 else None,
        windows=len(starts), tokens=len(starts) * block, bytes=total_bytes,
    )


def evaluate_splits(model, splits: dict[str, np.ndarray], tokenizer, *, max_tokens: int | None,
                    batch_size: int = 32, amp=None) -> dict[str, SplitLoss]:
    """split_loss on every split, at most `max_tokens` tokens each (evenly spaced windows)."""
    lengths = toks.token_byte_lengths(tokenizer)
    block = model.config.block_size
    cap = max(1, max_tokens // block) if max_tokens else None
    return {role: split_loss(model, ids, byte_lengths=lengths, batch_size=batch_size, max_windows=cap, amp=amp)
            for role, ids in splits.items()}


def gap(losses: dict[str, SplitLoss]) -> tuple[float, float | None]:
    """val - train loss and its standard error (independent splits: SEs add in quadrature)."""
    t, v = losses["train"], losses["val"]
    se = math.sqrt(t.loss_se ** 2 + v.loss_se ** 2) if t.loss_se is not None and v.loss_se is not None else None
    return v.loss - t.loss, se


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
    lengths = toks.token_byte_lengths(ckpt.tokenizer)
    batch = 32
    results = {}
    for role in ("val", "test"):
        if role not in splits:
            continue
        kwargs = dict(byte_lengths=lengths, batch_size=batch, max_windows=max_batches * batch or None)
        row = split_loss(model, splits[role], **kwargs).to_dict()
        if mc_samples:
            mc = split_loss(model, splits[role], mc_samples=mc_samples, **kwargs)
            row.update(mc_loss=mc.loss, mc_loss_se=mc.loss_se, mc_ppl=mc.ppl, mc_bpb=mc.bpb)
        if cfg.data.tokenizer == "char":
            row["bpc"] = row["loss"] / LN2
        results[role] = row
    record = {"checkpoint": which, "step": ckpt.state["step"], "mc_samples": mc_samples,
              "max_batches": max_batches, "splits": results}
    run.write_eval(f"{which}@{ckpt.state['step']}" + (f"+mc{mc_samples}" if mc_samples else ""), record)
    run.update_summary(eval=record)
    table = Table(title=f"{run.path.name}: {which} checkpoint (step {ckpt.state['step']})")
    columns = [("loss", "loss (nats)"), ("ppl", "ppl"), ("bpb", "bits/byte"), ("mc_ppl", "MC ppl")]
    columns = [(k, h) for k, h in columns if any(k in r for r in results.values())]
    table.add_column("split")
    for _, header in columns:
        table.add_column(header, justify="right")
    for role, row in results.items():
        cells = []
        for key, _ in columns:
            se = row.get(f"{key}_se")
            if key == "ppl" and row.get("ppl_low") is not None:
                cells.append(f"{row['ppl']:.3f} [{row['ppl_low']:.3f}, {row['ppl_high']:.3f}]")
            else:
                cells.append(f"{row[key]:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
        table.add_row(role, *cells)
    Console().print(table)
    return record
