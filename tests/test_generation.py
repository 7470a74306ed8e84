import pytest
import torch

from conftest import sampler as make_sampler
from conftest import to_transformers
from dropsample.decoding.search import Request, context_starts, generate, sample_from, score
from dropsample.model import GPT, GPTConfig


def Sampler(name, settings):
    return make_sampler(name, **settings)


V = 40


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32))
    # a sharper distribution than at init, so strategies disagree
    with torch.no_grad():
        m.transformer.wte.weight.mul_(40)
    return m.eval()


STRATEGIES = [
    {"strategy": "greedy"},
    {"strategy": "sample", "top_k": 10, "temperature": 0.9},
    {"strategy": "beam", "num_beams": 3},
    {"strategy": "contrastive", "top_k": 4, "penalty_alpha": 0.6},
    {"strategy": "greedy", "repetition_penalty": 1.5, "no_repeat_ngram_size": 2},
]


@pytest.mark.parametrize("settings", STRATEGIES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_cache_equals_recompute_token_for_token(model, settings):
    """40 new tokens after a 10-token prompt: the window restarts twice past block_size 16."""
    prompts = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(1))
    req = Request(prompts, 40, seeds=[1, 2, 3])
    cached = generate(model, Sampler("s", settings), req, use_cache=True)
    uncached = generate(model, Sampler("s", settings), req, use_cache=False)
    assert cached == uncached
    assert all(len(c) == 40 for c in cached)


def test_same_seed_same_samples_and_batch_independence():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()  # near uniform
    prompts = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(2))
    sampler = Sampler("pure", {"strategy": "sample"})
    a = generate(model, sampler, Request(prompts, 20, seeds=[10, 11, 12, 13]))
    b = generate(model, sampler, Request(prompts, 20, seeds=[10, 11, 12, 13]))
    assert a == b
    alone = generate(model, sampler, Request(prompts[2:3], 20, seeds=[12]))
    assert alone[0] == a[2], "a sample depends only on its prompt and seed, not on its batch"
    other = generate(model, sampler, Request(prompts, 20, seeds=[20, 21, 22, 23]))
    assert other != a


def test_inverse_cdf_sampling_follows_the_distribution():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, 2.0, float("-inf")]])
    probs = torch.softmax(logits, -1)[0]
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = sample_from(logits.expand(20000, -1), u)
    counts = torch.bincount(draws, minlength=5).double() / 20000
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts, probs.double(), atol=0.015)


def test_greedy_and_beam_match_transformers_generate(model, tmp_path):
    pytest.importorskip("transformers")
    peer = to_transformers(model, tmp_path)
    prompts = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(3))
    common = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = generate(model, Sampler("g", {"strategy": "greedy"}), Request(prompts, 8, seeds=[0, 1]))
    theirs = peer.generate(prompts, attention_mask=torch.ones_like(prompts), **common)[:, 6:].tolist()
    assert ours == theirs
    ours = generate(model, Sampler("b", {"strategy": "beam", "num_beams": 4, "length_penalty": 1.0}),
                    Request(prompts, 8, seeds=[0, 1]))
    theirs = peer.generate(prompts, attention_mask=torch.ones_like(prompts), num_beams=4, length_penalty=1.0,
                           early_stopping=False, **common)[:, 6:].tolist()
    assert ours == theirs


def test_contrastive_with_alpha_zero_is_greedy(model):
    prompts = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(4))
    req = Request(prompts, 12, seeds=[0, 1])
    greedy = generate(model, Sampler("g", {"strategy": "greedy"}), req)
    contrastive = generate(model, Sampler("c", {"strategy": "contrastive", "top_k": 3, "penalty_alpha": 0.0}), req)
    assert contrastive == greedy


def test_end_of_text_and_stop_strings(model):
    prompts = torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(5))
    full = generate(model, Sampler("g", {"strategy": "greedy"}), Request(prompts, 10, seeds=[0]))[0]
    eos = full[3]
    cut = generate(model, Sampler("g", {"strategy": "greedy"}), Request(prompts, 10, seeds=[0], eos_id=eos))[0]
    assert cut == full[: full.index(eos)], "stops at end-of-text, which is not part of the completion"
    decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)  # noqa: E731
    stop = decode(full[2:4])
    out = generate(model, Sampler("g", {"strategy": "greedy"}),
                   Request(prompts, 10, seeds=[0], stop_strings=(stop,), decode=decode))[0]
    assert stop in decode(out) and len(out) <= 4


def test_score_is_teacher_forced_nll(model):
    prompt, completion = [1, 2, 3], [4, 5, 6, 7]
    nll, entropy, n = score(model, prompt, completion)
    logits, _ = model(torch.tensor([prompt + completion[:-1]]))
    logp = torch.log_softmax(logits[0, 2:], -1)
    expected = -logp.gather(1, torch.tensor(completion)[:, None]).sum().item()
    assert n == 4 and nll == pytest.approx(expected, rel=1e-5)
    assert entropy == pytest.approx(-(logp.exp() * logp).sum().item(), rel=1e-5)


def test_score_uses_the_generation_context_windows(model):
    """Past block_size, scoring sees exactly what generation saw: compare with uncached steps."""
    prompt = list(range(10))
    completion = generate(model, Sampler("g", {"strategy": "greedy"}), Request(torch.tensor([prompt]), 30, seeds=[0]))[0]
    seq = prompt + completion
    starts = context_starts(len(prompt), len(seq), 16)
    expected = 0.0
    for i, start in zip(range(len(prompt), len(seq)), starts):
        logits, _ = model(torch.tensor([seq[start:i]]))
        expected -= torch.log_softmax(logits[0, -1], -1)[seq[i]].item()
    assert score(model, prompt, completion)[0] == pytest.approx(expected, rel=1e-5)
    assert max(i - s for i, s in zip(range(10, 40), starts)) <= 16


def test_mc_dropout_generation_differs_and_is_seeded():
    from dropsample.dropout import DropoutRates, set_mc_dropout

    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32,
                      dropout=DropoutRates(embd=0.5, resid_attn=0.5, resid_mlp=0.5))).eval()
    prompts = torch.randint(0, V, (4, 5), generator=torch.Generator().manual_seed(6))
    greedy = Sampler("g", {"strategy": "greedy"})
    plain = generate(m, greedy, Request(prompts, 12, seeds=[0] * 4))
    set_mc_dropout(m, True)
    torch.manual_seed(1)
    mc_a = generate(m, greedy, Request(prompts, 12, seeds=[0] * 4))
    torch.manual_seed(1)
    mc_b = generate(m, greedy, Request(prompts, 12, seeds=[0] * 4))
    set_mc_dropout(m, False)
    assert mc_a == mc_b and mc_a != plain


@pytest.mark.parametrize("length_penalty", [1.0, -2.0])  # -2 favours short, closed hypotheses
@pytest.mark.parametrize("row,position", [(0, 0), (0, 2), (1, 4), (3, 1)])
def test_beam_search_with_end_of_text_matches_transformers(model, tmp_path, row, position, length_penalty):
    pytest.importorskip("transformers")
    peer = to_transformers(model, tmp_path)
    torch.manual_seed(0)
    with torch.no_grad():  # a softer model than the fixture's, so end-of-text competes
        peer.transformer.wte.weight.div_(8)
    soft = GPT(model.config).eval()
    soft.load_state_dict(model.state_dict())
    with torch.no_grad():
        soft.transformer.wte.weight.div_(8)
    prompts = torch.randint(0, V, (4, 5), generator=torch.Generator().manual_seed(7))
    sampler = Sampler("b", {"strategy": "beam", "num_beams": 3, "length_penalty": length_penalty})
    # end-of-text = a token the beams really produce, so hypotheses close early
    base = generate(soft, sampler, Request(prompts, 9, seeds=[0] * 4))
    eos = base[row][position]
    ours = generate(soft, sampler, Request(prompts, 9, seeds=[0] * 4, eos_id=eos))
    assert ours[row] != base[row]  # base[row] contains the end-of-text token: it cannot be a completion now
    if length_penalty < 0:
        assert any(len(o) < 9 for o in ours), "some closed hypothesis must win"
    out = peer.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=9, do_sample=False,
                        num_beams=3, length_penalty=length_penalty, early_stopping=False, eos_token_id=eos,
                        pad_token_id=eos)[:, 5:].tolist()
    theirs = [row[: row.index(eos)] if eos in row else row for row in out]
    assert ours == theirs
