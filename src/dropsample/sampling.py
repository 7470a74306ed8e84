"""Decoding settings and the logits processors that implement them.

One contract for every processor: `(input_ids: LongTensor[B, T], logits: FloatTensor[B, V])
-> FloatTensor[B, V]`, removed tokens set to -inf, at least `min_tokens_to_keep` (1)
tokens kept. `build_processors(settings)` composes them in transformers' order:

    repetition_penalty, no_repeat_ngram_size,            (penalties)
    temperature, top_k, top_p, min_p, typical_p, epsilon, eta   (warpers)

Semantics follow transformers' LogitsProcessors, including ties at the k-th value
(kept) and `<=`/`<` boundaries; tests compare against them. Settings equal to their
neutral value (top_k 0, top_p 1, temperature 1, ...) add no processor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from dropsample.errors import ConfigError

NEG_INF = float("-inf")
STRATEGIES = ("greedy", "sample", "beam", "contrastive")
PROCESSOR_KEYS = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon",
    "eta",
)
STRATEGY_KEYS = ("strategy", "num_beams", "length_penalty", "penalty_alpha", "mc_dropout")
SETTING_KEYS = PROCESSOR_KEYS + STRATEGY_KEYS


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RepetitionPenalty:
    """CTRL's penalty on every token already in the sequence: logit / penalty if > 0, else * penalty."""

    def __init__(self, penalty: float):
        if not _is_number(penalty) or penalty <= 0:
            raise ConfigError("repetition_penalty", f"must be > 0 (1 = off), got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seen = torch.gather(logits, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return logits.scatter(1, input_ids, seen)


class NoRepeatNGram:
    """Ban any token that would complete an n-gram already present in the sequence."""

    def __init__(self, n: int):
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError("no_repeat_ngram_size", f"must be a positive integer (0 = off), got {n!r}")
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


class Temperature:
    def __init__(self, temperature: float):
        if not _is_number(temperature) or temperature <= 0:
            raise ConfigError("temperature", f"must be > 0 here (0 means greedy: strategy=greedy), got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class TopK:
    """Keep the k highest logits; every token tied with the k-th value is kept too."""

    def __init__(self, k: int, min_tokens_to_keep: int = 1):
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ConfigError("top_k", f"must be a positive integer (0 = off), got {k!r}")
        self.k = max(k, min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, NEG_INF)


class TopP:
    """Nucleus: the smallest set of most likely tokens whose probability reaches p."""

    def __init__(self, p: float, min_tokens_to_keep: int = 1):
        if not _is_number(p) or not 0 < p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {p!r}")
        self.p, self.min_keep = float(p), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(logits, descending=False)
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)
        # drop the low tail whose total mass stays within 1 - p; the top tokens always survive
        drop = mass_below <= (1 - self.p)
        drop[:, -self.min_keep :] = False
        return logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)


class MinP:
    """Keep tokens whose probability is at least min_p times the top token's."""

    def __init__(self, min_p: float, min_tokens_to_keep: int = 1):
        if not _is_number(min_p) or not 0 <= min_p <= 1:
            raise ConfigError("min_p", f"must be in [0, 1], got {min_p!r}")
        self.min_p, self.min_keep = float(min_p), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep = torch.topk(probs, min(self.min_keep, probs.shape[-1]), dim=-1).indices
        drop.scatter_(1, keep, False)
        return logits.masked_fill(drop, NEG_INF)


class Typical:
    """Locally typical sampling: keep the tokens whose surprisal is closest to the entropy,
    until their mass reaches typical_p (Meister et al. 2023)."""

    def __init__(self, mass: float, min_tokens_to_keep: int = 1):
        if not _is_number(mass) or not 0 < mass <= 1:
            raise ConfigError("typical_p", f"must be in (0, 1], got {mass!r}")
        self.mass, self.min_keep = float(mass), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(dim=-1)
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)
        distance = (-logp - entropy).abs()  # |surprisal - entropy|
        sorted_distance, order = torch.sort(distance, descending=False)
        mass = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (mass < self.mass).sum(dim=1).clamp(max=logits.shape[-1] - 1)
        drop = sorted_distance > sorted_distance.gather(1, last.view(-1, 1))
        drop[:, : self.min_keep] = False
        return logits.masked_fill(drop.scatter(1, order, drop), NEG_INF)


def _keep_top(logits: torch.Tensor, drop: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Never drop the min_keep highest logits."""
    kth = torch.topk(logits, min(min_keep, logits.shape[-1]), dim=-1).values[:, -1:]
    return drop & (logits < kth)


class Epsilon:
    """Truncate tokens with probability below epsilon (Hewitt et al. 2022)."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        if not _is_number(epsilon) or not 0 < epsilon < 1:
            raise ConfigError("epsilon", f"must be in (0, 1), got {epsilon!r}")
        self.epsilon, self.min_keep = float(epsilon), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        drop = _keep_top(logits, logits.softmax(dim=-1) < self.epsilon, self.min_keep)
        return logits.masked_fill(drop, NEG_INF)


class Eta:
    """Entropy-dependent cutoff eta = min(epsilon, sqrt(epsilon) * exp(-H)) (Hewitt et al. 2022)."""

    def __init__(self, epsilon: float, min_tokens_to_keep: int = 1):
        if not _is_number(epsilon) or not 0 < epsilon < 1:
            raise ConfigError("eta", f"must be in (0, 1), got {epsilon!r}")
        self.epsilon, self.min_keep = torch.tensor(float(epsilon)), min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        entropy = torch.distributions.Categorical(logits=logits).entropy()
        eta = torch.minimum(self.epsilon, self.epsilon.sqrt() * torch.exp(-entropy))[:, None]
        drop = _keep_top(logits, probs < eta, self.min_keep)
        return logits.masked_fill(drop, NEG_INF)


def build_processors(settings: dict) -> list:
    """The ordered processor chain for sampler settings (keys as in conf/sampler/*.yaml)."""
    s = {k: v for k, v in dict(settings).items() if v is not None}
    chain = []
    if s.get("repetition_penalty", 1.0) != 1.0:
        chain.append(RepetitionPenalty(s["repetition_penalty"]))
    if s.get("no_repeat_ngram_size", 0) != 0:
        chain.append(NoRepeatNGram(s["no_repeat_ngram_size"]))
    temperature = s.get("temperature", 1.0)
    if _is_number(temperature) and temperature < 0:
        raise ConfigError("temperature", f"must be >= 0 (0 = greedy), got {temperature!r}")
    if temperature not in (0, 1.0):
        chain.append(Temperature(temperature))
    top_k = s.get("top_k", 0)
    if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k < 0:
        raise ConfigError("top_k", f"must be >= 0 (0 = off), got {top_k!r}")
    if top_k != 0:
        chain.append(TopK(top_k))
    if s.get("top_p", 1.0) != 1.0:
        chain.append(TopP(s["top_p"]))
    if s.get("min_p", 0.0) != 0.0:
        chain.append(MinP(s["min_p"]))
    if s.get("typical_p", 1.0) != 1.0:
        chain.append(Typical(s["typical_p"]))
    if s.get("epsilon", 0.0) != 0.0:
        chain.append(Epsilon(s["epsilon"]))
    if s.get("eta", 0.0) != 0.0:
        chain.append(Eta(s["eta"]))
    return chain


def apply_processors(chain: list, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    for processor in chain:
        logits = processor(input_ids, logits)
    return logits


@dataclass
class Sampler:
    """A named decoding strategy with its settings and processor chain."""

    name: str
    settings: dict

    @property
    def strategy(self) -> str:
        if self.settings.get("temperature") == 0:
            return "greedy"  # temperature 0 is greedy, as the limit of T -> 0
        return self.settings.get("strategy", "sample")

    def processors(self) -> list:
        return build_processors(self.settings)


def _preset(name: str) -> dict:
    from dropsample.config import conf_dir

    path = conf_dir() / "sampler" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (conf_dir() / "sampler").glob("*.yaml"))
        raise ConfigError("samplers", f"unknown sampler preset {name!r}; choose from {', '.join(names)} or give a dict")
    return dict(OmegaConf.to_container(OmegaConf.load(path)))


def check_settings(settings: dict) -> None:
    """Raise ConfigError(setting, problem) for the first invalid setting."""
    unknown = set(settings) - set(SETTING_KEYS)
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown setting; use {', '.join(SETTING_KEYS)}")
    strategy = settings.get("strategy", "sample")
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", f"got {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    beams = settings.get("num_beams", 1)
    if strategy == "beam" and (not isinstance(beams, int) or beams < 1):
        raise ConfigError("num_beams", f"must be an integer >= 1, got {beams!r}")
    if strategy == "contrastive":
        alpha, k = settings.get("penalty_alpha", 0.6), settings.get("top_k", 4)
        if not _is_number(alpha) or not 0 <= alpha <= 1:
            raise ConfigError("penalty_alpha", f"must be in [0, 1], got {alpha!r}")
        if not isinstance(k, int) or k < 1:
            raise ConfigError("top_k", f"contrastive search needs top_k >= 1, got {k!r}")
    build_processors(settings)


def resolve_samplers(entries) -> list[Sampler]:
    """Preset names and dicts ({base: preset, key: value, name: ...}) -> validated Samplers."""
    if entries is None or isinstance(entries, str):
        raise ConfigError("samplers", "must be a list, e.g. samplers=[greedy,top_p_0.9]")
    samplers = []
    for index, entry in enumerate(entries):
        if OmegaConf.is_config(entry):
            entry = OmegaConf.to_container(entry)
        if isinstance(entry, str):
            name, settings = entry, _preset(entry)
        elif isinstance(entry, dict):
            entry = dict(entry)
            base = entry.pop("base", None)
            given_name = entry.pop("name", None)
            settings = _preset(base) if base else {}
            settings.update(entry)
            changes = ",".join(f"{k}={v}" for k, v in entry.items())
            name = given_name or ("+".join(x for x in (base, changes) if x) or "sample")
        else:
            raise ConfigError("samplers", f"entry {entry!r} is neither a preset name nor a dict of settings")
        try:
            check_settings(settings)
        except ConfigError as err:
            problem = str(err).split(": ", 1)[1]
            raise ConfigError(f"samplers[{index}].{err.key}", f"{problem} (sampler {name})") from None
        samplers.append(Sampler(name, settings))
    names = [s.name for s in samplers]
    if len(set(names)) != len(names):
        raise ConfigError("samplers", f"names repeat in {names}; give dict entries a distinct `name`")
    return samplers

