"""Logits processors: the filters and penalties every sampling strategy composes.

One contract for every processor: `(input_ids: LongTensor[B, T], logits: FloatTensor[B, V])
-> FloatTensor[B, V]`, removed tokens set to -inf, at least `min_tokens_to_keep` (1)
tokens kept. `build_processors(settings)` composes them in transformers' order:

    repetition_penalty, no_repeat_ngram_size, min_new_tokens   (every strategy)
    temperature, top_k, top_p, min_p, typical_p, epsilon, eta   (warpers: sampling only)

As in transformers' generate, the warpers shape the distribution a sample is drawn from and
so belong to `strategy: sample` alone; greedy, beam and contrastive search see only the
penalties and the end-of-text rule (schema.SamplerSettings refuses warpers on them).

Semantics follow transformers' LogitsProcessors, including ties at the k-th value
(kept) and `<=`/`<` boundaries; tests compare against them. Constructors check their own
arguments and raise ValueError (config-level checks with key names live in schema.py).
Settings equal to their neutral value (top_k 0, top_p 1, temperature 1, ...) add no processor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dropsample.config import sampler_settings
from dropsample.schema import SamplerSettings

NEG_INF = float("-inf")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class LogitsProcessor:
    """The contract: (input_ids [B, T], logits [B, V]) -> logits [B, V], removed tokens at -inf."""

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class RepetitionPenalty(LogitsProcessor):
    """CTRL's penalty on every token already in the sequence: logit / penalty if > 0, else * penalty."""

    def __init__(self, penalty: float):
        if not _is_number(penalty) or penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seen = torch.gather(logits, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return logits.scatter(1, input_ids, seen)


class NoRepeatNGram(LogitsProcessor):
    """Ban any token that would complete an n-gram already present in the sequence."""

    def __init__(self, n: int):
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"no_repeat_ngram_size must be a positive integer (0 = off), got {n!r}")
        self.n = n

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        if T < self.n:
            return logits
        # the last n-1 tokens are the prefix of the n-gram the next token would complete;
        # every earlier window starting with that prefix bans its own last token
        prefix = input_ids[:, T - self.n + 1 :]  # (B, n-1)
        windows = input_ids.unfold(1, self.n, 1)  # (B, T-n+1, n)
        hit = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (B, T-n+1)
        V = logits.shape[-1]
        banned = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
        target = torch.where(hit, windows[:, :, -1], torch.full_like(windows[:, :, -1], V))  # misses go to column V
        banned.scatter_(1, target, True)
        return logits.masked_fill(banned[:, :V], NEG_INF)


class Temperature(LogitsProcessor):
    def __init__(self, temperature: float):
        if not _is_number(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be > 0 here (0 means greedy: strategy=greedy), got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class TopK(LogitsProcessor):
    """Keep the k highest logits; every token tied with the k-th value is kept too."""

    def __init__(self, k: int, min_tokens_to_keep: int = 1):
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"top_k must be a positive integer (0 = off), got {k!r}")
        self.k = max(k, min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, NEG_INF)


# Top-p and typical on candidate sets (CPU, large vocabularies). transformers sorts the whole
# vocabulary; on CPU that sort is most of a sampling step at a BPE vocabulary (64 x 50,257
# logits: 120 ms, against 5 ms for the 256 best). A row whose answer lies among its best
# CANDIDATES[0], else CANDIDATES[1], candidates is decided there; a row is decided only when no
# cumulative mass lies within TOLERANCE of the threshold (far beyond the float32 rounding of
# either computation); the other rows, and every row on other devices, take the sort.
CANDIDATES = (256, 4096)  # candidate set sizes tried in turn (topk of 4096 still beats a sort)
TOLERANCE = 1e-6


def _candidates_pay(logits: torch.Tensor) -> bool:
    return logits.device.type == "cpu" and logits.shape[-1] > 2 * CANDIDATES[0]


def _on_candidates(logits: torch.Tensor, decide, sort) -> torch.Tensor:
    """Each row decided on candidate sets of growing size, else by the full sort.

    decide(rows, k) -> (the rows it decided among `rows` (R',), their filtered logits (R', V));
    sort(mask) -> the filtered logits of the rows in boolean `mask`."""
    out = logits.clone()
    pending = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    for k in CANDIDATES:
        rows = pending.nonzero().squeeze(1)
        if k >= logits.shape[-1] or rows.numel() == 0:
            break
        done, filtered = decide(rows, k)
        out[done] = filtered
        pending[done] = False
    if pending.any():
        out[pending] = sort(pending)
    return out


class TopP(LogitsProcessor):
    """Nucleus: the smallest set of most likely tokens whose probability reaches p.

    On candidate sets (see CANDIDATES above): rank r (best first) is kept iff the mass above it
    is < p, which is the sorted rule (drop where the mass at or below is <= 1 - p) written from
    the top; a row is decided there only if, besides the tolerance, the boundary falls between
    two different probabilities (a tie there is broken by the sort's order).
    """

    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        if not _is_number(p) or not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        self.p, self.min_keep = float(p), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.p == 1.0 or not _candidates_pay(logits):
            return self._sorted(logits)
        probs = logits.softmax(dim=-1)
        best = probs.amax(dim=-1)

        def decide(rows: torch.Tensor, k: int):
            rows = rows[best[rows] * k >= self.p]  # k tokens of at most `best` each cannot reach p
            top, idx = probs[rows].topk(k, dim=-1)  # (R, k), best first
            top64 = top.double()
            above = top64.cumsum(dim=-1) - top64  # mass of the strictly better ranks
            keep = above < self.p
            keep[:, : self.min_keep] = True
            last = keep.sum(dim=-1, keepdim=True).clamp(max=k - 1)  # first dropped rank
            decided = (~keep[:, -1]) & ((above - self.p).abs() > TOLERANCE).all(dim=-1)
            decided &= top.gather(1, last).squeeze(1) != top.gather(1, last - 1).squeeze(1)
            rows = rows[decided]
            drop = torch.ones((rows.numel(), logits.shape[-1]), dtype=torch.bool, device=logits.device)
            drop.scatter_(1, idx[decided], ~keep[decided])
            return rows, logits[rows].masked_fill(drop, NEG_INF)

        return _on_candidates(logits, decide, lambda mask: self._sorted(logits[mask]))

    def _sorted(self, logits: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(logits, descending=False)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        # drop the low tail whose total mass stays within 1 - p; the top tokens always survive
        drop = mass_below <= (1 - self.p)
        drop[:, -self.min_keep :] = False
        return logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)


class MinP(LogitsProcessor):
    """Keep tokens whose probability is at least min_p times the top token's."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not _is_number(min_p) or not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
        self.min_p, self.min_keep = float(min_p), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_keep, probs.shape[-1]), dim=-1).indices
        drop.scatter_(1, keep, False)
        return logits.masked_fill(drop, NEG_INF)


class Typical(LogitsProcessor):
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy,
    until their mass reaches typical_p (Meister et al. 2023).

    On candidate sets (see CANDIDATES above), the tokens nearest the entropy: when they already
    hold typical_p, the cut is the distance d of the first candidate whose cumulative mass
    reaches it, and every token of the vocabulary within d is kept (transformers' rule, ties at
    d included)."""

    def __init__(self, mass: float, min_tokens_to_keep: int = 1):
        if not _is_number(mass) or not 0 < mass <= 1:
            raise ValueError(f"typical_p must be in (0, 1], got {mass!r}")
        self.mass, self.min_keep = float(mass), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(dim=-1)
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
        distance = (-logp - entropy).abs()  # |surprisal - entropy|
        if self.min_keep != 1 or not _candidates_pay(logits):
            return self._sorted(logits, distance)
        probs = logp.exp()

        def decide(rows: torch.Tensor, k: int):
            near, idx = distance[rows].topk(k, dim=-1, largest=False)  # (R, k), nearest first
            mass = probs[rows].gather(1, idx).double().cumsum(dim=-1)
            last = (mass < self.mass).sum(dim=-1, keepdim=True)  # first candidate reaching the mass
            decided = (last.squeeze(1) < k) & ((mass - self.mass).abs() > TOLERANCE).all(dim=-1)
            rows, cut = rows[decided], near.gather(1, last.clamp(max=k - 1))[decided]  # (R', 1)
            return rows, logits[rows].masked_fill(distance[rows] > cut, NEG_INF)

        return _on_candidates(logits, decide, lambda mask: self._sorted(logits[mask], distance[mask]))

    def _sorted(self, logits: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        sorted_distance, order = torch.sort(distance, descending=False)
        mass = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (mass < self.mass).sum(dim=1).clamp(max=logits.shape[-1] - 1)
        drop = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
        drop[:, : self.min_keep] = False
        return logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)


class MinNewTokens(LogitsProcessor):
    """End-of-text is impossible while fewer than min_new_tokens tokens follow the prompt."""

    def __init__(self, prompt_len: int, min_new_tokens: int, eos_id: int):
        for name, value in (("prompt_len", prompt_len), ("min_new_tokens", min_new_tokens), ("eos_id", eos_id)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.prompt_len, self.min_new_tokens, self.eos_id = prompt_len, min_new_tokens, eos_id

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_len >= self.min_new_tokens:
            return logits
        return logits.index_fill(1, torch.tensor([self.eos_id], device=logits.device), NEG_INF)


def _keep_top(logits: torch.Tensor, drop: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Never drop the min_keep highest logits."""
    kth = torch.topk(logits, min(min_keep, logits.shape[-1]), dim=-1).values[:, -1:]
    return drop & (logits < kth)


class Epsilon(LogitsProcessor):
    """Truncate tokens with probability below epsilon (Hewitt et al. 2022)."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        if not _is_number(epsilon) or not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
        self.epsilon, self.min_keep = float(epsilon), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        drop = _keep_top(logits, logits.softmax(dim=-1) < self.epsilon, self.min_keep)
        return logits.masked_fill(drop, NEG_INF)


class Eta(LogitsProcessor):
    """Entropy-dependent cutoff eta = min(epsilon, sqrt(epsilon) * exp(-H)) (Hewitt et al. 2022)."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        if not _is_number(epsilon) or not 0 < epsilon < 1:
            raise ValueError(f"eta must be in (0, 1), got {epsilon!r}")
        self.epsilon, self.min_keep = torch.tensor(float(epsilon)), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        eta = torch.minimum(self.epsilon, self.epsilon.sqrt() * torch.exp(-entropy))[:, None]
        drop = _keep_top(logits, probs < eta, self.min_keep)
        return logits.masked_fill(drop, NEG_INF)


def build_processors(settings: SamplerSettings | Mapping, *, eos_id: int | None = None, min_new_tokens: int = 0,
                     prompt_len: int = 0) -> list[LogitsProcessor]:
    """The ordered processor chain for sampler settings (keys as in conf/sampler/*.yaml); with an
    end-of-text id and min_new_tokens > 0, end-of-text is barred for the first tokens after a
    prompt of prompt_len tokens."""
    if isinstance(settings, Mapping):
        settings = sampler_settings(dict(settings))
    s = settings
    chain: list[LogitsProcessor] = []
    if s.repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(s.repetition_penalty))
    if s.no_repeat_ngram_size != 0:
        chain.append(NoRepeatNGram(s.no_repeat_ngram_size))
    if eos_id is not None and min_new_tokens > 0:
        chain.append(MinNewTokens(prompt_len, min_new_tokens, eos_id))
    if s.strategy != "sample" or s.temperature == 0:
        # greedy (also temperature 0, the limit T -> 0), beam and contrastive search take no
        # warpers; contrastive search's top_k counts its candidates
        return chain
    if s.temperature not in (0, 1.0):
        chain.append(Temperature(s.temperature))
    if s.top_k != 0:
        chain.append(TopK(s.top_k))
    if s.top_p != 1.0:
        chain.append(TopP(s.top_p))
    if s.min_p != 0.0:
        chain.append(MinP(s.min_p))
    if s.typical_p != 1.0:
        chain.append(Typical(s.typical_p))
    if s.epsilon != 0.0:
        chain.append(Epsilon(s.epsilon))
    if s.eta != 0.0:
        chain.append(Eta(s.eta))
    return chain


def apply_processors(chain: list[LogitsProcessor], input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    for processor in chain:
        logits = processor(input_ids, logits)
    return logits
