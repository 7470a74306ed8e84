"""Each dropout site and variant drops what it claims, at the rate it claims.

Tolerances come from the binomial spread: with n Bernoulli(q) draws the observed
share has standard deviation sqrt(q (1 - q) / n); we allow 5 of them.
"""

import math

import pytest
import torch

from dropsample.dropout import (
    DropoutRates,
    DropoutSchedule,
    drop_path_rates,
    inverted_dropout,
    resolve_rates,
    set_mc_dropout,
)
from dropsample.schema import DropoutConfig, ScheduleConfig
from dropsample.model import GPT, GPTConfig


def within_binomial(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


def capture(module: torch.nn.Module):
    """Record a module's input and output on the next forward."""
    seen = {}

    def hook(mod, args, out):
        seen["in"], seen["out"] = args[0].detach(), out.detach()

    module.register_forward_hook(hook)
    return seen


def model_with(**rates):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=DropoutRates(**rates))
    return GPT(cfg)


SITE_MODULES = {
    "embd": lambda m: m.transformer.drop,
    "resid_attn": lambda m: m.transformer.h[0].attn.resid_drop,
    "mlp_hidden": lambda m: m.transformer.h[0].mlp.hidden_drop,
    "resid_mlp": lambda m: m.transformer.h[1].mlp.resid_drop,
    "head": lambda m: m.transformer.head_drop,
}


@pytest.mark.parametrize("site", sorted(SITE_MODULES))
@pytest.mark.parametrize("locked", [False, True])
def test_site_drops_at_its_rate_in_train_and_is_identity_in_eval(site, locked):
    p = 0.3
    model = model_with(**{site: p}, locked=(site,) if locked else ())
    seen = capture(SITE_MODULES[site](model))
    x = torch.randint(0, 50, (16, 32))
    model.train()
    model(x)
    zero_in = seen["in"] == 0
    dropped = (seen["out"] == 0) & ~zero_in
    n = (~zero_in).sum().item()
    if locked:
        # one mask per sequence: a unit is dropped at every position or at none
        per_unit = dropped.float().mean(dim=1)
        assert set(per_unit.unique().tolist()) <= {0.0, 1.0}
        n = per_unit.numel()
        share = per_unit.mean().item()
    else:
        share = dropped.sum().item() / n
    assert within_binomial(share, p, n)
    kept = ~dropped & ~zero_in
    torch.testing.assert_close(seen["out"][kept], seen["in"][kept] / (1 - p))
    model.eval()
    model(x)
    torch.testing.assert_close(seen["out"], seen["in"])
    # the other sites stay untouched
    for other, get in SITE_MODULES.items():
        if other != site:
            assert get(model).p == 0.0


def test_attention_dropout_only_in_train_mode():
    model = model_with(attn=0.5)
    x = torch.randint(0, 50, (4, 32))
    model.eval()
    a, b = model(x)[0], model(x)[0]
    torch.testing.assert_close(a, b)  # eval: deterministic, fused kernel gets dropout_p=0
    model.train()
    c, d = model(x)[0], model(x)[0]
    assert not torch.allclose(c, d)
    model_none = model_with()
    model_none.load_state_dict(model.state_dict())
    model_none.eval()
    torch.testing.assert_close(model_none(x)[0], a)


def test_attention_dropout_rate_on_probabilities():
    """Read the dropped attention matrix straight off the layer: q = k = 0 (uniform attention),
    v = identity and one-hot inputs make output[t, s] = dropout(1 / (t + 1)) for s <= t."""
    from dropsample.model import CausalSelfAttention

    T, C, p = 32, 64, 0.2
    cfg = GPTConfig(vocab_size=10, block_size=T, n_layer=1, n_head=2, n_embd=C, dropout=DropoutRates(attn=p))
    attn = CausalSelfAttention(cfg)
    with torch.no_grad():
        attn.c_attn.weight.zero_()
        attn.c_attn.bias.zero_()
        attn.c_attn.weight[2 * C :, :] = torch.eye(C)  # v = x
        attn.c_proj.weight.copy_(torch.eye(C))
        attn.c_proj.bias.zero_()
    x = torch.eye(T, C).expand(256, T, C).contiguous()  # position s carries e_s (head 0's dims)
    attn.eval()
    clean = attn(x)[:, :, :T]
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    torch.testing.assert_close(clean, uniform.expand_as(clean))
    attn.train()
    torch.manual_seed(0)
    out = attn(x)[:, :, :T]
    allowed = uniform.expand_as(out) > 0
    dropped = (out == 0) & allowed
    n = allowed.sum().item()
    assert within_binomial(dropped.sum().item() / n, p, n)
    kept = allowed & ~dropped
    torch.testing.assert_close(out[kept], (uniform.expand_as(out) / (1 - p))[kept])


@pytest.mark.parametrize("p", [0.0, 0.05, 0.2, 0.5, 0.9])
def test_cpu_dropout_kernel_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    x = torch.randn(64, 33, 47, requires_grad=True)  # odd sizes: the last 64-bit word is partly used
    y = inverted_dropout(x, p)
    dropped = y == 0
    assert within_binomial(dropped.float().mean().item(), p, x.numel()) if p else not dropped.any()
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
    y.sum().backward()
    expected = (~dropped).float() / (1 - p)
    torch.testing.assert_close(x.grad, expected)


def test_word_dropout_drops_token_types_together():
    p = 0.4
    model = model_with(word=p)
    seen = capture(model.transformer.drop)  # sees token + position embeddings
    torch.manual_seed(1)
    x = torch.randint(0, 50, (8, 32))
    model.train()
    model(x)
    tok = model.transformer.wte(x).detach()
    pos = model.transformer.wpe(torch.arange(32)).detach()
    scaled = seen["in"] - pos  # token part after word dropout
    is_zero = (scaled.abs() < 1e-6).all(-1)
    for token in x.unique():
        rows = is_zero[x == token]
        assert rows.all() or not rows.any(), "a token type must be dropped everywhere or nowhere"
    kept = ~is_zero
    torch.testing.assert_close(scaled[kept], tok[kept] / (1 - p), atol=1e-5, rtol=1e-5)
    # the rate over token types, across many batches
    drops, n = 0, 0
    for _ in range(40):
        model(x)
        z = ((seen["in"] - pos).abs() < 1e-6).all(-1)
        types = x.unique()
        drops += sum(bool(z[x == t].all()) for t in types)
        n += len(types)
    assert within_binomial(drops / n, p, n)


def test_drop_head_drops_whole_heads_per_sample():
    p = 0.25
    model = model_with(drop_head=p)
    attn = model.transformer.h[0].attn
    with torch.no_grad():  # identity output projection: the output *is* the concatenated heads
        attn.c_proj.weight.copy_(torch.eye(64))
        attn.c_proj.bias.zero_()
    x = torch.randn(512, 8, 64)
    attn.eval()
    clean = attn(x).view(512, 8, 4, 16)
    attn.train()
    torch.manual_seed(3)
    out = attn(x).view(512, 8, 4, 16)
    off = (out == 0).all(dim=3).all(dim=1)  # (B, H): the head is zero at every position
    assert within_binomial(off.float().mean().item(), p, off.numel())
    kept = (~off)[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[kept], clean[kept] / (1 - p))
    # expectation preserved: the mean over many samples matches eval mode
    assert abs(out.mean().item() - clean.mean().item()) < 0.05 * clean.abs().mean().item()


def test_drop_path_drops_whole_branches_per_sample():
    model = model_with(drop_path=0.5, drop_path_by_depth=False)
    block = model.transformer.h[1]
    block.train()
    torch.manual_seed(0)
    branch = block._branch(torch.ones(4000, 4, 64))
    assert torch.all(branch == branch[:, :1, :1]), "one coin per sample, over all positions and channels"
    per_sample = branch[:, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert within_binomial((per_sample == 0).float().mean().item(), 0.5, 4000)
    assert abs(per_sample.mean().item() - 1.0) < 5 * math.sqrt(1.0 / 4000)  # E[mask / (1 - p)] = 1
    block.eval()
    h = torch.randn(2, 4, 64)
    torch.testing.assert_close(block._branch(h), h)


def test_drop_path_grows_with_depth():
    assert drop_path_rates(0.3, 3, by_depth=True) == pytest.approx([0.1, 0.2, 0.3])
    assert drop_path_rates(0.3, 3, by_depth=False) == [0.3, 0.3, 0.3]
    model = model_with(drop_path=0.2)
    assert [b.drop_path for b in model.transformer.h] == pytest.approx([0.1, 0.2])


def test_every_variant_is_identity_in_eval_unless_mc_dropout():
    rates = dict(embd=0.2, attn=0.2, resid_attn=0.2, mlp_hidden=0.2, resid_mlp=0.2, head=0.2,
                 word=0.2, drop_head=0.2, drop_path=0.2, locked=("embd", "resid_mlp"))
    model = model_with(**rates)
    clean = model_with()
    clean.load_state_dict(model.state_dict())
    x = torch.randint(0, 50, (4, 32))
    model.eval()
    clean.eval()
    torch.testing.assert_close(model(x)[0], clean(x)[0])
    with torch.no_grad():
        set_mc_dropout(model, True)
        a, b = model(x)[0], model(x)[0]
        set_mc_dropout(model, False)
    assert not torch.allclose(a, b), "MC dropout must keep sampling masks at inference"
    torch.testing.assert_close(model(x)[0], clean(x)[0])


def test_shorthand_rate_and_site_overrides():
    cfg = DropoutConfig(rate=0.1, sites=["embd", "attn"], attn=0.3, head=None, mlp_hidden=0.05)
    d = resolve_rates(cfg)
    assert (d.embd, d.attn, d.resid_attn, d.mlp_hidden, d.head) == (0.1, 0.3, 0.0, 0.05, 0.0)


def test_set_dropout_changes_rates_in_place():
    model = model_with(embd=0.1, attn=0.1)
    model.set_dropout(DropoutRates(embd=0.0, attn=0.4, resid_mlp=0.2))
    assert model.transformer.drop.p == 0.0
    assert model.transformer.h[1].attn.attn_p == 0.4
    assert model.transformer.h[0].mlp.resid_drop.p == 0.2


@pytest.mark.parametrize(
    "cfg,expected",
    [
        ({"kind": "constant"}, {0: 1.0, 50: 1.0, 99: 1.0}),
        ({"kind": "early", "end": 0.25}, {0: 1.0, 24: 1.0, 25: 0.0, 99: 0.0}),
        ({"kind": "early", "end_step": 10, "early_decay": "linear"}, {0: 1.0, 5: 0.5, 9: 0.1, 10: 0.0}),
        ({"kind": "late", "start": 0.5}, {0: 0.0, 49: 0.0, 50: 1.0, 99: 1.0}),
        ({"kind": "linear", "from_factor": 1.0, "to_factor": 0.0}, {0: 1.0, 25: 0.75, 100: 0.0}),
        ({"kind": "linear", "from_factor": 0.5, "to_factor": 1.0}, {0: 0.5, 50: 0.75}),
    ],
)
def test_schedule_values(cfg, expected):
    schedule = DropoutSchedule(ScheduleConfig(**cfg), max_iters=100)
    assert {s: schedule.factor(s) for s in expected} == pytest.approx(expected)


def test_val_plateau_schedule_rule_and_state():
    cfg = ScheduleConfig(kind="val_plateau", plateau_factor=0.5, plateau_threshold=0.01, plateau_min_factor=0.2)
    s = DropoutSchedule(cfg, 100)
    factors = []
    for val in [3.0, 2.5, 2.495, 2.4, 2.399, 2.398, 2.397]:
        s.observe_val(val)
        factors.append(s.factor(0))
    # improved by 0.5 (keep), 0.005 (< 0.01: halve), 0.095 (keep), 0.001 (halve), then floor 0.2
    assert factors == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.2, 0.2])
    restored = DropoutSchedule(cfg, 100)
    restored.load_state_dict(s.state_dict())
    restored.observe_val(2.3969)
    s.observe_val(2.3969)
    assert restored.factor(0) == s.factor(0)
