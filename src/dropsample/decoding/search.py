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
    """Beam search with length penalty, vectorized over prompts and beams.

    A hypothesis scores sum(log p) / n ** length_penalty (n generated tokens, end-of-text
    excluded). As in transformers (early_stopping=False): each step looks at the 2K best
    continuations; an end-of-text among the first K closes a hypothesis into the prompt's
    pool of K finished ones; the first K others are the new beams. A prompt is done when
    its pool is full and no live beam can still beat the worst finished hypothesis.
    """
    K = sampler.settings.num_beams
    alpha = sampler.settings.length_penalty
    chain = _chain(sampler, req)
    B, P = req.prompts.shape
    device = req.prompts.device
    N = req.max_new_tokens
    seq = req.prompts.repeat_interleave(K, dim=0)  # (B*K, P)
    ctx = Context(model, B * K, use_cache)
    logits, _, _ = ctx.prime(seq)
    neg_inf = float("-inf")
    beam_scores = torch.full((B, K), neg_inf, device=device)
    beam_scores[:, 0] = 0.0  # the K beams start identical: keep one alive
    pool_scores = torch.full((B, K), neg_inf, device=device)  # finished, length-normalized
    pool_seqs = torch.zeros((B, K, N), dtype=torch.long, device=device)
    pool_lens = torch.zeros((B, K), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    first_rows = (torch.arange(B, device=device) * K)[:, None]
    ranks = torch.arange(2 * K, device=device)[None, :]
    for step in range(N):
        n = step + 1
        logp = F.log_softmax(apply_processors(chain, seq, logits.float()), dim=-1)  # (B*K, V)
        V = logp.shape[-1]
        total = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_ids = total.topk(min(2 * K, K * V), dim=-1)  # (B, 2K), best first
        beam, token = top_ids // V, top_ids % V
        is_eos = token == req.eos_id if req.eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        closes = is_eos & (ranks[:, : top_ids.shape[1]] < K) & ~done[:, None] & (top_scores > neg_inf)
        if closes.any():
            length = n - 1  # tokens before end-of-text
            cand_scores = torch.where(closes, top_scores / max(length, 1) ** alpha, neg_inf)
            cand = torch.zeros((B, top_ids.shape[1], N), dtype=torch.long, device=device)
            cand[:, :, :length] = seq[first_rows + beam, P:]
            merged = torch.cat([pool_scores, cand_scores], dim=1)
            pool_scores, pick = merged.topk(K, dim=-1)
            pool_seqs = torch.cat([pool_seqs, cand], dim=1).gather(1, pick[..., None].expand(-1, -1, N))
            pool_lens = torch.cat([pool_lens, torch.full_like(cand_scores, length, dtype=torch.long)], 1).gather(1, pick)
        # the first K continuations that do not end the text become the beams (stable in rank order)
        order = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :K]
        beam_scores = top_scores.gather(1, order).masked_fill(is_eos.gather(1, order), neg_inf)
        rows = (first_rows + beam.gather(1, order)).flatten()
        seq = torch.cat([seq[rows], token.gather(1, order).reshape(-1, 1)], dim=1)
        if ctx.cache is not None:
            ctx.cache.select(rows)
        if req.eos_id is not None:
            full = (pool_scores > neg_inf).all(dim=1)
            done |= full & (pool_scores.min(dim=1).values >= beam_scores.max(dim=1).values / n**alpha)
        if bool(done.all()) or step == N - 1:
            break
        logits, _, _ = ctx.advance(seq)
    generated = seq.shape[1] - P
    live = torch.where(done[:, None], neg_inf, beam_scores / max(generated, 1) ** alpha)
    results = []
    for b in range(B):
        best_live, k_live = live[b].max(dim=0)
        best_pool, k_pool = pool_scores[b].max(dim=0)
        if best_pool >= best_live and best_pool > neg_inf:
            results.append(pool_seqs[b, k_pool, : pool_lens[b, k_pool]].tolist())
        else:
            results.append(seq[b * K + k_live, P:].tolist())
    return results


@torch.inference_mode()
def contrastive_search(model: GPT, sampler: Sampler, req: Request, use_cache: bool = True) -> list[list[int]]:
    """Su et al. 2022: among the top-k tokens pick argmax (1 - alpha) p(v) - alpha max_j cos(h_v, h_j),
    where h are final hidden states and j runs over the context (prompt included)."""
    k = sampler.settings.top_k
    alpha = sampler.settings.penalty_alpha
    chain = _chain(sampler, req)
    seq = req.prompts
    B, P = seq.shape
    ctx = Context(model, B, use_cache)
    finish = Finish(req, B, P, seq.device)
    logits, past, _ = ctx.prime(seq)  # past: final hidden states of the context (B, L, C)
    for _ in range(req.max_new_tokens):
        probs = torch.softmax(apply_processors(chain, seq, logits.float()), dim=-1)
        top_p, top_ids = probs.topk(min(k, probs.shape[-1]), dim=-1)  # (B, k)
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
        score = (1 - alpha) * top_p - alpha * sim
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
