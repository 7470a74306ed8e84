"""Decoders as their definitions say, on a model that really predicts end-of-text.

Contrastive search against a reference written from Su et al. 2022's formula (uncached, a
full forward pass of the window for every candidate); beam search against transformers'
`generate` with end-of-text, length_penalty in {0, 1, 2} and early_stopping on and off;
min_new_tokens against transformers' MinNewTokensLengthLogitsProcessor and `generate`;
end-of-text ending every strategy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import to_transformers
from conftest import sampler as make_sampler
from dropsample import tokenizer as toks
from dropsample.config import sampler_settings
from dropsample.decoding.processors import MinNewTokens, build_processors
from dropsample.decoding.search import Request, context_starts, generate
from dropsample.errors import ConfigError
from dropsample.model import GPT, GPTConfig
from dropsample.schema import GenConfig, check

P, N = 8, 20  # prompt tokens, new tokens (P + N stays within block_size: transformers stops there)


@dataclass
class EndOfTextModel:
    model: GPT
    peer: object  # the same weights as transformers' GPT2LMHeadModel
    eos: int
    prompts: torch.Tensor  # (24, P)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast as two on idle cores, far faster on busy ones,
    and makes the trained weights the same whatever the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eot(tmp_path_factory) -> EndOfTextModel:
    """A tiny GPT trained in-process on Shakespeare's speeches joined by <|endoftext|>.

    Half the prompts end a few tokens before a speech ends, so hypotheses really close early.
    """
    pytest.importorskip("transformers")
    text = (Path(os.environ["DROPSAMPLE_DATA_DIR"]) / "tinyshakespeare" / "input.txt").read_text()  # set by conftest
    # short speeches (a name and one to three lines), so a completion can end anywhere in reach
    docs = [d.strip() + "\n" for d in text.split("\n\n") if 0 < d.strip().count("\n") <= 3]
    train_docs, val_docs = docs[:1500], docs[1500:1600]
    tok = toks.train_tokenizer("bpe", "".join(train_docs), vocab_size=320)
    eos = toks.end_of_text_id(tok)

    def stream(ds):  # every document followed by end-of-text
        return torch.tensor([i for d in ds for i in [*toks.encode(tok, d).tolist(), eos]])

    train, val = stream(train_docs), stream(val_docs)
    torch.manual_seed(0)
    T = 48
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=T, n_layer=2, n_head=2, n_embd=48))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        ix = torch.randint(0, len(train) - T - 1, (16,), generator=g).tolist()
        x = torch.stack([train[i : i + T] for i in ix])
        y = torch.stack([train[i + 1 : i + T + 1] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    ends = (val == eos).nonzero().flatten().tolist()
    ends = [e for e in ends if e >= P + 12][:24]
    # prompt i stops (i % 12) tokens before a speech's end-of-text: short and long true continuations
    prompts = torch.stack([val[e - i % 12 - P : e - i % 12] for i, e in enumerate(ends)])
    peer = to_transformers(model, tmp_path_factory.mktemp("peer"))
    return EndOfTextModel(model, peer, eos, prompts)


def until_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def hf_generate(eot: EndOfTextModel, **kwargs) -> list[list[int]]:
    out = eot.peer.generate(eot.prompts, attention_mask=torch.ones_like(eot.prompts), max_new_tokens=N,
                            eos_token_id=eot.eos, pad_token_id=eot.eos, **kwargs)
    return until_eos(out[:, P:].tolist(), eot.eos)


# ---------------------------------------------------------------------------
# beam search


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_with_end_of_text_matches_transformers(eot, length_penalty, early_stopping):
    sampler = make_sampler("b", strategy="beam", num_beams=4, length_penalty=length_penalty,
                           early_stopping=early_stopping)
    ours = generate(eot.model, sampler, Request(eot.prompts, N, seeds=[0] * 24, eos_id=eot.eos))
    theirs = hf_generate(eot, do_sample=False, num_beams=4, length_penalty=length_penalty,
                         early_stopping=early_stopping)
    # a length penalty of 2 favours long hypotheses, so fewer end early; how many do depends on
    # the CPU's float kernels (6 on one machine, 2 on another): one is enough to exercise the path
    need = 6 if length_penalty < 2 else 1
    assert sum(len(c) < N for c in theirs) >= need, "the comparison needs hypotheses that end early"
    assert ours == theirs


# ---------------------------------------------------------------------------
# contrastive search


def contrastive_reference(model: GPT, prompt: list[int], k: int, alpha: float, max_new: int, eos: int | None = None,
                          min_new: int = 0, repetition_penalty: float = 1.0, renormalise: bool = False) -> list[int]:
    """Su et al. 2022, from the formula: x_t = argmax over v in V(k) of
    (1 - alpha) p(v | x<t) - alpha max_j cos(h_v, h_j), V(k) the top-k of the full softmax,
    h the last layer's hidden states. No cache: every probability and hidden state comes from
    a forward pass of the whole window (the engine's context rule, search.context_starts)."""
    block = model.config.block_size
    seq = list(prompt)
    # starts[i - len(prompt)]: the first index of the window that predicts index i
    starts = context_starts(len(prompt), len(prompt) + max_new + 1, block)
    for i in range(len(prompt), len(prompt) + max_new):
        s = starts[i - len(prompt)]
        logits, _ = model(torch.tensor([seq[s:i]]))
        z = logits[0, -1].float()
        for t in set(seq):  # CTRL's penalty, when asked
            z[t] = z[t] / repetition_penalty if z[t] > 0 else z[t] * repetition_penalty
        if eos is not None and i - len(prompt) < min_new:
            z[eos] = float("-inf")
        p = torch.softmax(z, dim=-1)
        candidates = p.topk(k).indices.tolist()
        if renormalise:  # the old, wrong confidence: p renormalised over the k candidates
            p = torch.zeros_like(p).index_fill(0, torch.tensor(candidates), 1.0) * p
            p = p / p.sum()
        best, best_score = None, float("-inf")
        for v in candidates:
            if z[v] == float("-inf"):  # removed by a processor: never a choice
                continue
            w = starts[i + 1 - len(prompt)]  # the window in which v sits at position i
            _, _, h = model(torch.tensor([seq[w:i] + [v]]), return_hidden=True)
            h = h[0]  # (window, C)
            cos = (h[:-1] @ h[-1]) / (h[:-1].norm(dim=-1) * h[-1].norm())
            score = (1 - alpha) * p[v].item() - alpha * cos.max().item()
            if score > best_score:
                best, best_score = v, score
        seq.append(best)
        if best == eos:
            break
    return until_eos([seq[len(prompt) :]], eos)[0] if eos is not None else seq[len(prompt) :]


@torch.no_grad()
def test_contrastive_search_equals_the_formula_past_block_size():
    """40 new tokens after 10 prompt tokens at block_size 16: the window restarts twice."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(40)  # sharper than at init, so candidates differ
    prompts = torch.randint(0, 40, (3, 10), generator=torch.Generator().manual_seed(1))
    sampler = make_sampler("c", strategy="contrastive", top_k=4, penalty_alpha=0.6)
    expected = [contrastive_reference(model, p, 4, 0.6, 40) for p in prompts.tolist()]
    for use_cache in (True, False):
        assert generate(model, sampler, Request(prompts, 40, seeds=[0] * 3), use_cache=use_cache) == expected


@torch.no_grad()
def test_contrastive_search_never_picks_a_removed_token():
    """With every token a candidate and a heavy penalty weight, end-of-text (probability 0 while
    min_new_tokens bars it) would often win on its dissimilar hidden state alone."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = torch.randint(0, 40, (4, 6), generator=torch.Generator().manual_seed(2))
    sampler = make_sampler("c", strategy="contrastive", top_k=40, penalty_alpha=0.9)
    out = generate(model, sampler, Request(prompts, 8, seeds=[0] * 4, eos_id=5, min_new_tokens=8))
    assert all(len(c) == 8 and 5 not in c for c in out)
    assert out == [contrastive_reference(model, p, 40, 0.9, 8, eos=5, min_new=8) for p in prompts.tolist()]


@torch.no_grad()
@pytest.mark.parametrize("settings", [
    {"top_k": 5, "penalty_alpha": 0.6},
    {"top_k": 3, "penalty_alpha": 0.4, "repetition_penalty": 1.3, "min_new_tokens": 6},
], ids=["plain", "penalty-min_new_tokens"])
def test_contrastive_search_equals_the_formula_with_end_of_text(eot, settings):
    settings = dict(settings)
    min_new = settings.pop("min_new_tokens", 0)
    sampler = make_sampler("c", strategy="contrastive", **settings)
    prompts = eot.prompts[::3]  # 8 prompts
    ours = generate(eot.model, sampler, Request(prompts, N, seeds=[0] * 8, eos_id=eot.eos, min_new_tokens=min_new))
    expected = [contrastive_reference(eot.model, p, settings["top_k"], settings["penalty_alpha"], N, eos=eot.eos,
                                      min_new=min_new, repetition_penalty=settings.get("repetition_penalty", 1.0))
                for p in prompts.tolist()]
    assert ours == expected
    assert any(len(c) < N for c in ours), "some completions must stop at end-of-text"
    assert all(len(c) >= min_new for c in ours)


@torch.no_grad()
def test_the_formula_reference_tells_full_softmax_from_renormalised(eot):
    """The reference can fail: the old confidence (p renormalised over the k candidates) decodes differently."""
    prompts = eot.prompts[::3].tolist()
    full = [contrastive_reference(eot.model, p, 5, 0.6, N, eos=eot.eos) for p in prompts]
    renormalised = [contrastive_reference(eot.model, p, 5, 0.6, N, eos=eot.eos, renormalise=True) for p in prompts]
    assert full != renormalised


@torch.no_grad()
def test_last_layer_hidden_states_are_transformers_hidden_states_minus_one(eot):
    """What contrastive search compares: after the final LayerNorm, as hidden_states[-1] in transformers."""
    _, _, ours = eot.model(eot.prompts, return_hidden=True)
    theirs = eot.peer(eot.prompts, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# min_new_tokens and end-of-text for every strategy


def test_min_new_tokens_processor_matches_transformers():
    tlp = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(0)
    logits = torch.randn(3, 30)
    for length in (5, 7, 8, 9, 12):  # prompt of 5: 0, 2, 3, 4, 7 new tokens
        ids = torch.randint(0, 30, (3, length))
        ours = MinNewTokens(5, 3, 7)(ids, logits.clone())
        theirs = tlp.MinNewTokensLengthLogitsProcessor(5, 3, 7)(ids, logits.clone())
        assert torch.equal(ours, theirs)
    assert torch.isinf(MinNewTokens(5, 3, 7)(torch.zeros(1, 7, dtype=torch.long), logits[:1]))[0, 7]
    chain = build_processors({"strategy": "sample", "top_k": 5, "repetition_penalty": 1.2}, eos_id=7,
                             min_new_tokens=3, prompt_len=5)
    assert [type(p).__name__ for p in chain] == ["RepetitionPenalty", "MinNewTokens", "TopK"]  # transformers' order


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_min_new_tokens_matches_transformers_generate(eot, strategy):
    settings = {"strategy": "beam", "num_beams": 4} if strategy == "beam" else {"strategy": "greedy"}
    ours = generate(eot.model, make_sampler("s", **settings),
                    Request(eot.prompts, N, seeds=[0] * 24, eos_id=eot.eos, min_new_tokens=6))
    theirs = hf_generate(eot, do_sample=False, num_beams=settings.get("num_beams", 1), min_new_tokens=6)
    assert ours == theirs
    assert min(len(c) for c in ours) >= 6 and any(len(c) < N for c in ours)


@pytest.mark.parametrize("settings", [
    {"strategy": "greedy"},
    {"strategy": "sample", "top_p": 0.9},
    {"strategy": "beam", "num_beams": 4},
    {"strategy": "contrastive", "top_k": 4, "penalty_alpha": 0.6},
], ids=lambda s: s["strategy"])
def test_every_strategy_stops_at_end_of_text(eot, settings):
    sampler = make_sampler("s", **settings)
    req = Request(eot.prompts, N, seeds=list(range(24)), eos_id=eot.eos)
    free = generate(eot.model, sampler, req)
    assert all(eot.eos not in c for c in free), "end-of-text is never part of a completion"
    assert any(len(c) < 4 for c in free), "these prompts end speeches: some completions stop at once"
    held = generate(eot.model, sampler, Request(eot.prompts, N, seeds=list(range(24)), eos_id=eot.eos,
                                                 min_new_tokens=4))
    assert all(len(c) >= 4 and eot.eos not in c for c in held)
    assert any(len(c) < N for c in held)


# ---------------------------------------------------------------------------
# settings


def test_decoding_settings_are_checked():
    assert sampler_settings({"strategy": "beam", "early_stopping": True}).early_stopping is True
    assert sampler_settings({"strategy": "beam"}).early_stopping is False  # transformers' default
    sampler_settings({"strategy": "contrastive", "top_k": 6})  # contrastive: top_k counts candidates
    sampler_settings({"strategy": "greedy", "temperature": 0})
    for settings, key in [({"strategy": "beam", "temperature": 0.7}, "temperature"),
                          ({"strategy": "contrastive", "top_k": 4, "top_p": 0.9}, "top_p"),
                          ({"strategy": "greedy", "typical_p": 0.9}, "typical_p")]:
        with pytest.raises(ConfigError, match="only strategy=sample") as err:
            sampler_settings(settings)
        assert err.value.key == key
    check(GenConfig(max_new_tokens=8, min_new_tokens=8), "gen.")
    with pytest.raises(ConfigError) as err:
        check(GenConfig(max_new_tokens=8, min_new_tokens=9), "gen.")
    assert err.value.key == "gen.min_new_tokens"
