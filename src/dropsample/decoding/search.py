"""The search engine: batched greedy, sampling, beam and contrastive decoding with a KV cache.

All four strategies share one context rule, so cached and uncached decoding see
exactly the same tokens at the same positions:

    the model sees seq[start:], where start moves to len(seq) - block_size // 2
    whenever the context would exceed block_size (the cache is then re-primed).

Sampling is reproducible per sample: sample i draws its token at step t by inverse-CDF
with u[i, t], a uniform from its own generator seeded with seeds[i], so a sample does
not depend on which other samples share its batch.

End-of-text (`Request.eos_id`) ends a completion under every strategy and is not part of
it; `Request.min_new_tokens` bars it until that many tokens follow the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dropsample.decoding.processors import apply_processors, build_processors
from dropsample.model import GPT, KVCache
from dropsample.schema import Sampler


@dataclass
class Request:
    prompts: torch.Tensor  # (B, P) token ids, one prompt length per request
    max_new_tokens: int
    seeds: list[int]
    eos_id: int | None = None
    min_new_tokens: int = 0  # end-of-text is impossible before this many new tokens
    stop_strings: tuple[str, ...] = ()
    decode: object = None  # ids -> text, needed for stop strings


class Context:
    """Which tokens the model sees, with or without a KV cache (see module doc).

    `prime` and `advance` return (logits of the last position (B, V), final hidden
    states of the positions just computed (B, T, C), whether the window restarted).
    """

    def __init__(self, model: GPT, batch: int, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.block = model.config.block_size
        self.keep = max(self.block // 2, 1)
        self.start = 0
        device = next(model.parameters()).device
        self.cache = KVCache(model.config, batch, device) if use_cache else None

    def prime(self, seq: torch.Tensor):
        self.start = max(0, seq.shape[1] - self.block)
        return self._window(seq)

    def advance(self, seq: torch.Tensor):
        """seq ends with one new token: logits for the position after it."""
        if seq.shape[1] - self.start > self.block:
            self.start = seq.shape[1] - self.keep
            return self._window(seq)
        if self.cache is None:
            logits, hidden, _ = self._window(seq)
            return logits, hidden[:, -1:], False
        logits, _, hidden = self.model(seq[:, -1:], cache=self.cache, last_only=True, return_hidden=True)
        return logits[:, -1], hidden, False

    def _window(self, seq: torch.Tensor):
        if self.cache is not None:
            self.cache.length = 0
        logits, _, hidden = self.model(seq[:, self.start :], cache=self.cache, last_only=True, return_hidden=True)
        return logits[:, -1], hidden, True


def context_starts(prompt_len: int, total_len: int, block: int) -> list[int]:
    """For each target index i in [prompt_len, total_len): the first index of its context."""
    keep, start, starts = max(block // 2, 1), max(0, prompt_len - block), []
    for i in range(prompt_len, total_len):
        if i - start > block:
            start = i - keep
        starts.append(start)
    return starts


def _uniforms(seeds: list[int], steps: int, device) -> torch.Tensor:
    """(B, steps) uniforms, row i from its own CPU generator seeded with seeds[i]."""
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    u = torch.stack(rows)
    return u.to(device, torch.float32) if torch.device(device).type == "mps" else u.to(device)


def sample_from(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from softmax(logits) with uniforms u (B,); -inf logits are never drawn."""
    # float64 keeps the CDF exact enough for long-tailed vocabularies; MPS has no float64
    probs = torch.softmax(logits.to(torch.float32 if logits.device.type == "mps" else torch.float64), dim=-1)
    cdf = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def _chain(sampler: Sampler, req: Request):
    """The sampler's processors, with end-of-text barred for the first req.min_new_tokens tokens."""
    return build_processors(sampler.settings, eos_id=req.eos_id, min_new_tokens=req.min_new_tokens,
                            prompt_len=req.prompts.shape[1])


class Finish:
    """Tracks which rows hit end-of-text or a stop string; lengths exclude end-of-text."""

    def __init__(self, req: Request, batch: int, prompt_len: int, device):
        self.req, self.prompt_len = req, prompt_len
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.length = torch.full((batch,), req.max_new_tokens, dtype=torch.long, device=device)

    def update(self, seq: torch.Tensor, token: torch.Tensor) -> None:
        n = seq.shape[1] - self.prompt_len  # tokens generated so far, `token` included
        if self.req.eos_id is not None:
            hit = (token == self.req.eos_id) & ~self.done
            self.length[hit] = n - 1
            self.done |= hit
        if self.req.stop_strings:
            for row in (~self.done).nonzero().flatten().tolist():
                text = self.req.decode(seq[row, self.prompt_len :].tolist())
                if any(s in text for s in self.req.stop_strings):
                    self.done[row] = True
                    self.length[row] = n

    def completions(self, seq: torch.Tensor) -> list[list[int]]:
        out = seq[:, self.prompt_len :].tolist()
        return [row[: int(n)] for row, n in zip(out, self.length)]


@torch.inference_mode()
def generate(model: GPT, sampler: Sampler, req: Request, use_cache: bool = True) -> list[list[int]]:
    """Completions (token ids, prompt excluded) for each prompt row."""
    strategy = sampler.strategy
    if strategy == "beam":
        return beam_search(model, sampler, req, use_cache)
    if strategy == "contrastive":
        return contrastive_search(model, sampler, req, use_cache)
    chain = _chain(sampler, req)
    seq = req.prompts
    B, P = seq.shape
    ctx = Context(model, B, use_cache)
    finish = Finish(req, B, P, seq.device)
    u = _uniforms(req.seeds, req.max_new_tokens, seq.device) if strategy == "sample" else None
    logits, _, _ = ctx.prime(seq)
    for step in range(req.max_new_tokens):
        scores = apply_processors(chain, seq, logits.float())
        token = scores.argmax(dim=-1) if strategy == "greedy" else sample_from(scores, u[:, step])
        seq = torch.cat([seq, token[:, None]], dim=1)
        finish.update(seq, token)
        if finish.done.all() or step == req.max_new_tokens - 1:
            break
        logits, _, _ = ctx.advance(seq)
    return finish.completions(seq)


@torch.inference_mode()
def beam_search(model: GPT, sampler: Sampler, req: Request, use_cache: bool = True) -> list[list[int]]:
    """Beam search as transformers' `generate` does it, vectorized over prompts and beams.

    K = num_beams. A hypothesis of n generated tokens (end-of-text included) with summed
    log-probability S scores S / n ** length_penalty. Log-probabilities are processed after
    the softmax (penalties, min_new_tokens), not renormalized, as in transformers.
    Each step ranks the 2K best continuations of all K beams of a prompt; among the first
    K, those that end (end-of-text, or any at the last step) join the prompt's pool of its
    K best ended hypotheses; the first K that do not end are the next beams. A prompt takes
    no more hypotheses once its pool holds K and either early_stopping is on, or its best
    live beam, scored at its current length, is no better than the pool's worst (the
    transformers heuristic for early_stopping=False). The answer is the pool's best.
    """
    K = sampler.settings.num_beams
    alpha = sampler.settings.length_penalty
    early = sampler.settings.early_stopping
    chain = _chain(sampler, req)
    B, P = req.prompts.shape
    device = req.prompts.device
    N = req.max_new_tokens
    seq = req.prompts.repeat_interleave(K, dim=0)  # (B*K, P)
    # the K beams of a prompt start identical: run the prompt once and copy its cache and
    # logits K times (the prompt's forward pass was K times the work)
    ctx = Context(model, B, use_cache)
    logits, _, _ = ctx.prime(req.prompts)
    logits = logits.repeat_interleave(K, dim=0)  # (B*K, V)
    if ctx.cache is not None:
        ctx.cache.repeat(K)
    # cache positions every beam of a prompt shares (its prompt) need no reordering, until the
    # window restarts with each beam's own tokens
    shared = ctx.cache.length if ctx.cache is not None else 0
    neg_inf = float("-inf")
    beam_scores = torch.full((B, K), neg_inf, device=device)
    beam_scores[:, 0] = 0.0  # the K beams start identical: keep one alive
    pool_scores = torch.full((B, K), neg_inf, device=device)  # ended hypotheses, length-normalized
    pool_ended = torch.zeros((B, K), dtype=torch.bool, device=device)  # which pool slots hold one
    pool_seqs = torch.zeros((B, K, N), dtype=torch.long, device=device)
    pool_lens = torch.zeros((B, K), dtype=torch.long, device=device)  # completion length, end-of-text excluded
    closed = torch.zeros(B, dtype=torch.bool, device=device)  # the prompt takes no more hypotheses
    first_rows = (torch.arange(B, device=device) * K)[:, None]
    in_first_k = torch.arange(2 * K, device=device)[None, :] < K
    for step in range(N):
        n = step + 1  # tokens generated, this one included
        # in place, on the step's own logits: at a BPE vocabulary a (B*K, V) temporary is tens of
        # MB, and each fresh one is paid for in page faults (bench/generate_speed.py: at batch 64,
        # 38 -> 12 ms a step for these three lines; the same bits)
        logits = logits.float()
        logp = apply_processors(chain, seq, torch.log_softmax(logits, dim=-1, out=logits))  # (B*K, V)
        V = logp.shape[-1]
        total = logp.add_(beam_scores.view(-1, 1)).view(B, K * V)
        top_scores, top_ids = total.topk(min(2 * K, K * V), dim=-1)  # (B, 2K), best first
        beam, token = top_ids // V, top_ids % V
        is_eos = token == req.eos_id if req.eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        ends = is_eos | (n == N)
        joins = ends & in_first_k[:, : top_ids.shape[1]] & ~closed[:, None]
        if joins.any():
            cand_scores = torch.where(joins, top_scores / n**alpha, neg_inf)
            cand = torch.zeros((B, top_ids.shape[1], N), dtype=torch.long, device=device)
            cand[:, :, : n - 1] = seq[first_rows + beam, P:]
            cand[:, :, n - 1] = token
            pool_scores, pick = torch.cat([pool_scores, cand_scores], dim=1).topk(K, dim=-1)
            pool_ended = torch.cat([pool_ended, joins], dim=1).gather(1, pick)
            pool_seqs = torch.cat([pool_seqs, cand], dim=1).gather(1, pick[..., None].expand(-1, -1, N))
            pool_lens = torch.cat([pool_lens, n - is_eos.long()], dim=1).gather(1, pick)
        if n == N:
            break
        # the first K continuations that do not end the text become the beams (stable in rank order)
        order = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]
        beam_scores = top_scores.gather(1, order)
        rows = (first_rows + beam.gather(1, order)).flatten()
        seq = torch.cat([seq[rows], token.gather(1, order).reshape(-1, 1)], dim=1)
        if ctx.cache is not None:
            ctx.cache.select(rows, same_prefix=shared)
        full = pool_ended.all(dim=1)
        if early:
            closed |= full
        else:
            closed |= full & (beam_scores[:, 0] / n**alpha <= pool_scores.min(dim=1).values)
        if bool(closed.all()):
            break
        logits, _, restarted = ctx.advance(seq)
        shared = 0 if restarted else shared
    # the pool is kept best first, and by now every prompt's pool holds an ended hypothesis
    return [row[:n] for row, n in zip(pool_seqs[:, 0].tolist(), pool_lens[:, 0].tolist())]


@torch.inference_mode()
def contrastive_search(model: GPT, sampler: Sampler, req: Request, use_cache: bool = True) -> list[list[int]]:
    """Contrastive search (Su et al. 2022; SimCTG's reference code).

    Each step, the candidates V(k) are the top_k tokens of p = softmax(logits) over the
    whole vocabulary (after penalties and min_new_tokens; no warper), and the next token is

        argmax over v in V(k) of  (1 - alpha) p(v) - alpha max_j cos(h_v, h_j)

    with h the last layer's hidden states (after the final LayerNorm, as transformers'
    hidden_states[-1]): h_v of v appended to the sequence, h_j of every earlier token the
    model sees (prompt and generated, within the context window). A token a processor
    removed is never chosen.
    """
    k = sampler.settings.top_k
    alpha = sampler.settings.penalty_alpha
    chain = _chain(sampler, req)
    seq = req.prompts
    B, P = seq.shape
    ctx = Context(model, B, use_cache)
    finish = Finish(req, B, P, seq.device)
    logits, past, _ = ctx.prime(seq)  # past: final hidden states of the context (B, L, C)
    for _ in range(req.max_new_tokens):
        scores = apply_processors(chain, seq, logits.float())
        probs = torch.softmax(scores, dim=-1)
        top_p, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)  # (B, k)
        removed = scores.gather(1, top_ids) == float("-inf")
        kk = top_ids.shape[1]
        # one forward of every candidate: widen the batch to B * k
        wide = seq.repeat_interleave(kk, dim=0)
        wide = torch.cat([wide, top_ids.reshape(-1, 1)], dim=1)
        if ctx.cache is not None:
            ctx.cache.repeat(kk)
        cand_logits, cand_h, restarted = ctx.advance(wide)
        h = cand_h[:, -1]  # (B*k, C)
        # after a window restart the context is the new window's own hidden states
        context_h = cand_h[:, :-1] if restarted else past.repeat_interleave(kk, dim=0)
        sim = F.cosine_similarity(h[:, None, :], context_h, dim=-1).amax(dim=-1).view(B, kk)
        score = ((1 - alpha) * top_p - alpha * sim).masked_fill(removed, float("-inf"))
        choice = score.argmax(dim=-1)  # (B,)
        rows = torch.arange(B, device=seq.device) * kk + choice
        token = top_ids.gather(1, choice[:, None]).squeeze(1)
        seq = torch.cat([seq, token[:, None]], dim=1)
        past = torch.cat([context_h[rows], h[rows][:, None]], dim=1)
        logits = cand_logits[rows]
        if ctx.cache is not None:
            ctx.cache.select(rows)
        finish.update(seq, token)
        if finish.done.all():
            break
    return finish.completions(seq)


@torch.inference_mode()
def score(model: GPT, prompt: list[int], completion: list[int]) -> tuple[float, float, int]:
    """(sum of -log p(token), sum of the model's entropy, n tokens) of a completion, teacher-forced
    in the model's current mode, each token seeing exactly the context generation gave it."""
    if not completion:
        return 0.0, 0.0, 0
    device = next(model.parameters()).device
    seq = torch.tensor(prompt + completion, device=device)
    starts = context_starts(len(prompt), len(seq), model.config.block_size)
    nll = ent = 0.0
    i = len(prompt)
    while i < len(seq):
        start = starts[i - len(prompt)]
        last = i  # the run of targets sharing this context start: i .. last
        while last + 1 < len(seq) and starts[last + 1 - len(prompt)] == start:
            last += 1
        logits, _ = model(seq[start:last][None])  # row r predicts index start + 1 + r
        logp = F.log_softmax(logits[0, i - start - 1 :].float(), dim=-1)  # targets i..last
        targets = seq[i : last + 1]
        nll -= logp.gather(1, targets[:, None]).sum().item()
        ent -= (logp.exp() * logp).nan_to_num(0.0).sum().item()
        i = last + 1
    return nll, ent, len(completion)
