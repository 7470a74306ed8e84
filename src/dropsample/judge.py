"""The fixed judge: one model that scores every sampler's text and the reference.

`judge=` names it: a completed dropsample run folder (its best checkpoint), a local
transformers model folder, or, online, a hub causal LM id. The judge reads TEXT: each
prompt and completion is decoded and re-tokenized with the judge's own tokenizer, so a judge
need not share the sampled model's tokenizer. It gives per sample the summed NLL of the
completion given the prompt (gen-ppl, as Holtzman et al. 2020 score with GPT-2 Large) and the
last-layer hidden state at the text's last token (MAUVE's features, as mauve-text takes them).
Without a judge, gen-ppl is the sampling model's own (labelled "self") and there is no MAUVE.

`score_ids` is the one teacher-forced scorer, batched: the sampling model's own scores (gen-ppl
when self-judged, entropy) go through it too. Long texts are cut into the context windows
generation itself uses (decoding.search.context_starts), so every token is scored with the
context it was generated with.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dropsample import tokenizer as toks
from dropsample.decoding.search import context_starts
from dropsample.errors import UserError
from dropsample.runs import RunFolder

log = logging.getLogger("dropsample")

LOGIT_BUDGET = 1 << 24  # floats of (rows, T, V) logits held at once (64 MB in float32)
MAX_ROWS = 64
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # gpt2-large, org/name

# forward(ids (b, T) long, lengths (b,) long) -> (logits (b, T, V), last-layer hidden (b, T, C))
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Row:
    sample: int
    tokens: list[int]  # one context window
    first: int  # row position whose logits predict the first scored target
    targets: list[int]  # the tokens scored in this window (none: a features-only row)
    features: bool = False  # take the hidden state at the window's last position


def _rows(k: int, prompt: list[int], completion: list[int], max_len: int, features: bool) -> list[_Row]:
    seq = prompt + completion
    if not seq:
        return []
    if not prompt:  # nothing predicts the first token: it becomes the context
        prompt, completion = seq[:1], seq[1:]
    P, L = len(prompt), len(seq)
    rows = []
    starts = context_starts(P, L, max_len)
    i = P
    while i < L:
        start, last = starts[i - P], i
        while last + 1 < L and starts[last + 1 - P] == start:
            last += 1
        rows.append(_Row(k, seq[start:last], i - start - 1, seq[i : last + 1]))
        i = last + 1
    if features:
        if rows and len(rows[-1].tokens) < max_len:
            rows[-1].tokens = rows[-1].tokens + [seq[-1]]  # the window plus the last token: one forward
            rows[-1].features = True
        else:
            rows.append(_Row(k, seq[-max_len:], 0, [], True))
    return rows


@torch.inference_mode()
def score_ids(forward: Forward, prompts: Sequence[list[int]], completions: Sequence[list[int]], *, max_len: int,
              vocab: int, device, entropy: bool = False, features: bool = False,
              hidden_size: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher-forced scores of each completion given its prompt.

    Returns (scores (N, 3): summed NLL, summed entropy (0 unless `entropy`), tokens;
    features (N, C) of each prompt + completion, or None)."""
    N = len(prompts)
    rows = [r for k in range(N) for r in _rows(k, list(prompts[k]), list(completions[k]), max_len, features)]
    rows.sort(key=lambda r: len(r.tokens))
    scores = np.zeros((N, 3))
    scores[:, 2] = [len(c) if p else max(len(c) - 1, 0) for p, c in zip(prompts, completions)]
    feats = np.zeros((N, hidden_size), dtype=np.float32) if features else None
    i = 0
    while i < len(rows):
        T = len(rows[i].tokens)
        b = 1
        while (i + b < len(rows) and b < MAX_ROWS
               and (b + 1) * len(rows[i + b].tokens) * vocab <= LOGIT_BUDGET):
            b += 1
        batch = rows[i : i + b]
        T = max(len(r.tokens) for r in batch)
        ids = torch.zeros(b, T, dtype=torch.long)
        for j, r in enumerate(batch):
            ids[j, : len(r.tokens)] = torch.tensor(r.tokens)
        lengths = torch.tensor([len(r.tokens) for r in batch])
        logits, hidden = forward(ids.to(device), lengths.to(device))
        logp = F.log_softmax(logits.float(), dim=-1)  # (b, T, V)
        for j, r in enumerate(batch):
            if r.targets:
                lp = logp[j, r.first : r.first + len(r.targets)]  # (targets, V)
                target = torch.tensor(r.targets, device=logp.device)
                scores[r.sample, 0] -= lp.gather(1, target[:, None]).sum().item()
                if entropy:
                    scores[r.sample, 1] -= (lp.exp() * lp).nan_to_num(0.0).sum().item()
            if r.features:
                feats[r.sample] = hidden[j, len(r.tokens) - 1].float().cpu().numpy()
        i += b
    return scores, feats


def gpt_forward(model) -> Forward:
    def forward(ids, lengths):
        logits, _, hidden = model(ids, return_hidden=True)  # right padding never reaches earlier positions
        return logits, hidden
    return forward


def self_scores(model, prompts: Sequence[list[int]], completions: Sequence[list[int]]) -> np.ndarray:
    """(N, 3) summed NLL, summed entropy, tokens of each completion under the sampling model itself."""
    device = next(model.parameters()).device
    scores, _ = score_ids(gpt_forward(model), prompts, completions, max_len=model.config.block_size,
                          vocab=model.config.vocab_size, device=device, entropy=True)
    return scores


@dataclass
class Judge:
    kind: str  # "run" (a dropsample run folder) or "transformers" (a local folder or hub id)
    identity: dict  # what metrics.json and the summary record
    encode: Callable[[str], list[int]]
    forward: Forward
    max_len: int
    vocab: int
    hidden_size: int
    device: object = field(default="cpu")

    def score_texts(self, prompts: Sequence[str], completions: Sequence[str],
                    features: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """((N, 2) summed NLL and judge tokens of each completion given its prompt, (N, C) features)."""
        p = [self.encode(t) for t in prompts]
        c = [self.encode(t) for t in completions]
        scores, feats = score_ids(self.forward, p, c, max_len=self.max_len, vocab=self.vocab, device=self.device,
                                  features=features, hidden_size=self.hidden_size)
        return scores[:, [0, 2]], feats


def self_identity(run: RunFolder, step: int | None) -> dict:
    return {"kind": "self", "path": str(run.path), "step": step,
            "note": "gen-ppl under the sampled model itself (no judge); MAUVE needs a judge"}


def load(spec: str, device="cpu") -> Judge:
    """The judge named by `judge=`: a run folder, a local transformers folder, or a hub id."""
    path = Path(str(spec)).expanduser()
    if path.is_dir() and RunFolder(path).is_run():
        return _from_run(RunFolder(path), device)
    if path.is_dir() and (path / "config.json").is_file():
        return _from_transformers(str(path), device, local=True)
    if path.exists():
        raise UserError(f"judge={spec}: not a dropsample run folder (no .hydra/config.yaml) or a transformers "
                        "model folder (no config.json); give a completed run folder")
    if not HUB_ID.fullmatch(str(spec)):
        raise UserError(f"judge={spec}: no such folder; give a completed dropsample run folder (or a hub model id)")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(f"judge={spec}: not a folder here and the hub is offline (HF_HUB_OFFLINE is set); "
                        "give a completed dropsample run folder or go online")
    return _from_transformers(str(spec), device, local=False)


def _from_run(run: RunFolder, device) -> Judge:
    summary = run.summary()
    if summary.status != "completed":
        raise UserError(f"judge={run.path}: the run is {summary.status or 'not started'}, not completed; "
                        "finish training it (dropsample train --resume) or give another run")
    ckpt = run.load_checkpoint("best", fix="retrain the judge run, or give another completed run as judge=")
    model = ckpt.load_model(device).eval()
    tok = ckpt.tokenizer
    identity = {"kind": "run", "path": str(run.path.resolve()), "checkpoint": "best", "step": ckpt.state["step"],
                "config_hash": summary.config_hash, "params": summary.params, "tokenizer": toks.kind_of(tok),
                "val_ppl": summary.val_ppl, "val_bpb": summary.val_bpb}
    cfg = model.config
    return Judge("run", identity, lambda text: toks.encode_prompt(tok, text) if text else [], gpt_forward(model),
                 cfg.block_size, cfg.vocab_size, cfg.n_embd, device)


def _from_transformers(spec: str, device, local: bool) -> Judge:
    try:
        import transformers
    except ImportError:
        raise UserError(f"judge={spec}: a transformers model needs transformers (pip install transformers); "
                        "or give a dropsample run folder") from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(spec)
        model = transformers.AutoModelForCausalLM.from_pretrained(spec).to(device).eval()
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"judge={spec}: transformers cannot load it ({first}); give a completed dropsample run "
                        "folder or a causal LM folder") from None
    cfg = model.config
    max_len = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024)

    def forward(ids, lengths):
        mask = (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]).long()
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True)
        return out.logits, out.hidden_states[-1]

    identity = {"kind": "transformers", "id": spec, "local": local,
                "revision": getattr(cfg, "_commit_hash", None), "params": sum(p.numel() for p in model.parameters()),
                "model_type": getattr(cfg, "model_type", None)}
    return Judge("transformers", identity, lambda text: tok(text)["input_ids"] if text else [], forward, max_len,
                 int(cfg.vocab_size), int(getattr(cfg, "hidden_size", None) or cfg.n_embd), device)
