import pytest
import torch

import dropsample.model as model_module
from dropsample.model import GPT, GPTConfig, KVCache


def tiny(**kw):
    return GPTConfig(vocab_size=kw.pop("vocab_size", 37), block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)


def test_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    x = torch.randint(0, 37, (3, 16))
    logits, loss = model(x, x)
    assert logits.shape == (3, 16, 37)
    assert loss.shape == ()
    # an untrained model is close to uniform: loss near log(V)
    assert abs(loss.item() - torch.log(torch.tensor(37.0)).item()) < 0.2
    last, _ = model(x, last_only=True)
    assert last.shape == (3, 1, 37)
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_embeddings_are_tied_and_counted_once():
    model = GPT(tiny())
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    C, V, T, L = 16, 37, 16, 2
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert model.num_params() == V * C + T * C + L * per_block + 2 * C


def test_too_long_context_is_refused():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_kv_cache_gives_the_same_logits_as_full_recompute():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 37, (2, 12))
    full, _ = model(x)
    cache = KVCache(model.config, 2, "cpu")
    first, _ = model(x[:, :5], cache=cache)
    rest = [model(x[:, t : t + 1], cache=cache)[0] for t in range(5, 12)]
    stepwise = torch.cat([first] + rest, dim=1)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=1e-5)
    # a wide batch (64 rows x 2 heads) decodes one query with two matmuls instead of the fused kernel
    wide = torch.randint(0, 37, (64, 12))
    cache = KVCache(model.config, 64, "cpu")
    model(wide[:, :5], cache=cache)
    last = [model(wide[:, t : t + 1], cache=cache)[0] for t in range(5, 12)][-1]
    torch.testing.assert_close(last, model(wide)[0][:, -1:], atol=1e-5, rtol=1e-5)
    # several new tokens after a cached prefix use the offset causal mask
    cache = KVCache(model.config, 2, "cpu")
    model(x[:, :5], cache=cache)
    chunk, _ = model(x[:, 5:], cache=cache)
    torch.testing.assert_close(chunk, full[:, 5:], atol=1e-5, rtol=1e-5)


def test_kv_cache_select_reorders_rows_reusing_the_shared_prefix():
    """Beam-style reorders within groups of 2 rows that share a 3-position prefix: after each
    select, every row holds exactly its source row's keys and values (the spare buffer's
    unchanged prefix included), as a plain gather of the whole cache would."""
    torch.manual_seed(0)
    cache = KVCache(tiny(), 4, "cpu")
    prefix = torch.randn(cache.k.shape[0], 2, cache.k.shape[2], 3, cache.k.shape[4])
    cache.k[:, :, :, :3] = prefix.repeat_interleave(2, dim=1)  # rows 0,1 and 2,3 share a prefix
    cache.v[:, :, :, :3] = -prefix.repeat_interleave(2, dim=1)
    cache.length = 3
    expect_k, expect_v = cache.k[:, :, :, :3].clone(), cache.v[:, :, :, :3].clone()
    for rows in ([1, 1, 2, 3], [0, 0, 3, 2], [1, 0, 2, 2]):
        new_k, new_v = torch.randn_like(cache.k[:, :, :, :1]), torch.randn_like(cache.v[:, :, :, :1])
        for layer in range(cache.k.shape[0]):
            cache.append(layer, new_k[layer], new_v[layer])
        cache.length += 1
        expect_k = torch.cat([expect_k, new_k], dim=3)[:, rows]
        expect_v = torch.cat([expect_v, new_v], dim=3)[:, rows]
        cache.select(torch.tensor(rows), same_prefix=3)
        assert torch.equal(cache.k[:, :, :, : cache.length], expect_k)
        assert torch.equal(cache.v[:, :, :, : cache.length], expect_v)
    cache.select(torch.tensor([3, 0]))  # fewer rows (contrastive search): a fresh buffer
    assert torch.equal(cache.k[:, :, :, : cache.length], expect_k[:, [3, 0]])


@pytest.mark.skipif(not model_module._ONEDNN_HEAD, reason="the oneDNN output layer is used on x86 CPUs only")
def test_large_vocabulary_inference_logits_equal_nn_linear_and_follow_the_weights():
    """Without gradients a large vocabulary's output layer runs through oneDNN, not nn.Linear
    (seen in the profile): the logits equal nn.Linear's to float rounding, for one row and for
    many, follow an in-place change of the weight, and work for weights made in inference mode."""
    from torch.profiler import profile

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=model_module._ONEDNN_MIN_VOCAB + 3, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (3, 6))

    def reference(ids):  # the same forward pass with the output layer through nn.Linear
        with torch.enable_grad():
            return model(ids)[0].detach()

    for ids in (x[:1], x):
        with torch.no_grad(), profile() as prof:
            logits = model(ids)[0]
        assert any("_linear_pointwise" in e.name for e in prof.events())
        torch.testing.assert_close(logits, reference(ids), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        last = model(x, last_only=True)[0]
        model.transformer.wte.weight.mul_(2.0)
        moved = model(x, last_only=True)[0]
    assert not torch.allclose(last, moved)
    torch.testing.assert_close(moved, reference(x)[:, -1:], atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # weights without a version counter
        frozen = GPT(cfg).eval()
        assert frozen(x[:1], last_only=True)[0].shape == (1, 1, cfg.vocab_size)
    with torch.no_grad():
        assert model(x[:0])[0].shape == (0, 6, cfg.vocab_size)  # no rows: empty logits, as nn.Linear gives
        wide = GPT(cfg).double().eval()  # oneDNN's op takes no float64: nn.Linear's logits
        logits, _, hidden = wide(x, return_hidden=True)  # hidden: after the final LayerNorm
        assert logits.dtype == torch.float64 and torch.equal(logits, wide.lm_head(hidden))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), profile() as prof:
        model(x)  # under autocast the output layer stays nn.Linear's (bf16, as in training)
    assert not any("_linear_pointwise" in e.name for e in prof.events())
    # a packed (vmapped) evaluation keeps nn.Linear too: vmap has no batching rule for oneDNN's op
    from torch.func import functional_call, vmap

    from dropsample.dropout import mask_source

    stacked = {n: torch.stack([p.detach(), 2 * p.detach()]) for n, p in model.named_parameters()}
    with torch.no_grad(), mask_source(object()), profile() as prof:
        packed = vmap(lambda p: functional_call(model, p, (x,))[0])(stacked)
    assert not any("_linear_pointwise" in e.name for e in prof.events())
    torch.testing.assert_close(packed[0], reference(x), atol=1e-5, rtol=1e-5)


def test_matches_transformers_gpt2(tmp_path):
    """Same weights in GPT2LMHeadModel give the same logits (names map one to one)."""
    pytest.importorskip("transformers")
    from conftest import to_transformers

    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    peer = to_transformers(model, tmp_path)
    assert peer.num_parameters() == model.num_params()
    x = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(model(x)[0], peer(x).logits, atol=1e-5, rtol=1e-5)




def test_bf16_autocast_training_on_cpu_matches_float32_to_bf16_precision():
    # train.dtype=bfloat16 on a CPU: under autocast attention takes the two-matmul path (faster
    # there than SDPA's kernel); loss and gradients must still be fp32's to bf16 precision,
    # and the causal mask must hold (a changed future token leaves earlier logits alone)
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=65))
    x = torch.randint(0, 65, (4, 16))
    y = torch.roll(x, -1, dims=1)
    _, ref = model(x, y)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(x, y)
        x2 = x.clone()
        x2[:, -1] = (x2[:, -1] + 1) % 65
        changed, _ = model(x2)
    assert logits.dtype == torch.bfloat16
    assert torch.equal(changed[:, :-1], logits[:, :-1])
    loss.backward()
    assert abs(loss.item() - ref.item()) < 0.02 * ref.item()
    for p, g in zip(model.parameters(), ref_grads):
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0)
        assert cos > 0.98, cos
