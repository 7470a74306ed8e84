"""Whole-split evaluation: loss, bits per byte and their standard errors, recomputed by hand."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, cli
from dropsample import tokenizer as toks
from dropsample.evaluation import gap, ratio_se, split_loss, token_nll, window_starts
from dropsample.model import GPT, GPTConfig

TEXT = "Où est la gare? À gauche, après le café.\n" * 40  # multi-byte characters: bytes != chars


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = toks.train_tokenizer("bpe", TEXT, 300)
    ids = toks.encode(tok, TEXT)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    return tok, ids, model


def by_hand(model, tok, ids, starts):
    """Per-window NLL and bytes, one window at a time, written plainly from the definitions."""
    block = model.config.block_size
    lengths = {i: len(tok.id_to_token(i)) for i in range(tok.get_vocab_size())}  # byte-level: 1 char = 1 byte
    nats, nbytes = [], []
    for s in starts:
        window = torch.as_tensor(ids[s : s + block + 1].astype(np.int64))
        logits, _ = model(window[None, :-1])
        nll = -F.log_softmax(logits[0], -1).gather(1, window[1:, None]).sum().item()
        nats.append(nll)
        nbytes.append(sum(lengths[int(t)] for t in window[1:]))
    return np.array(nats), np.array(nbytes, dtype=float)


def test_loss_bpb_and_standard_errors_by_hand(setup):
    tok, ids, model = setup
    result = split_loss(model, ids, byte_lengths=toks.token_byte_lengths(tok), batch_size=5)
    starts = list(range(0, (len(ids) - 1) // 16 * 16, 16))
    nats, nbytes = by_hand(model, tok, ids, starts)
    per_window = nats / 16
    assert result.windows == len(starts) and result.tokens == 16 * len(starts)
    assert result.bytes == nbytes.sum()
    assert result.loss == pytest.approx(per_window.mean(), rel=1e-5)
    assert result.loss_se == pytest.approx(per_window.std(ddof=1) / math.sqrt(len(starts)), rel=1e-4)
    assert result.bpb == pytest.approx(nats.sum() / math.log(2) / nbytes.sum(), rel=1e-5)
    # the ratio estimator's standard error, from its textbook form
    n, r = len(nats), nats.sum() / nbytes.sum()
    expected_se = math.sqrt(((nats - r * nbytes) ** 2).sum() / (n * (n - 1))) / nbytes.mean() / math.log(2)
    assert result.bpb_se == pytest.approx(expected_se, rel=1e-4)
    # bits per byte is below bits per token here: a BPE token holds more than one byte
    assert result.bpb < result.loss / math.log(2)


def test_capped_windows_are_evenly_spaced_and_whole_split_by_default():
    assert list(window_starts(161, 16, None)) == [16 * i for i in range(10)]
    assert list(window_starts(161, 16, 4)) == [0, 48, 96, 144]
    assert list(window_starts(161, 16, 50)) == [16 * i for i in range(10)]


def test_ratio_se_is_zero_for_a_constant_ratio():
    a = np.array([2.0, 4.0, 6.0])
    assert ratio_se(a, a / 2) == pytest.approx(0.0, abs=1e-12)


def test_gap_standard_error_adds_in_quadrature(setup):
    tok, ids, model = setup
    half = len(ids) // 2
    losses = {"train": split_loss(model, ids[:half]), "val": split_loss(model, ids[half:])}
    g, se = gap(losses)
    assert g == pytest.approx(losses["val"].loss - losses["train"].loss)
    assert se == pytest.approx(math.hypot(losses["val"].loss_se, losses["train"].loss_se))


def test_a_run_summary_carries_the_final_evaluation_and_prints_an_80_column_headline(tmp_path):
    result = cli("train", *TINY, "name=ev", "experiment_name=ev", "train.final_eval_tokens=4000", cwd=tmp_path,
                 check=True)
    (run,) = (tmp_path / "runs" / "ev").iterdir()
    s = json.loads((run / "summary.json").read_text())
    ev = s["evaluation"]
    assert ev["checkpoint"] == "best" and ev["step"] == s["best_step"]
    val, train = ev["splits"]["val"], ev["splits"]["train"]
    assert val["tokens"] <= 4000 and val["windows"] == val["tokens"] // 32
    assert s["val_loss"] == val["loss"] and s["val_loss_se"] == val["loss_se"] > 0
    assert s["gap"] == pytest.approx(val["loss"] - train["loss"])
    assert s["gap_se"] == pytest.approx(math.hypot(val["loss_se"], train["loss_se"]))
    assert s["val_ppl_low"] < s["val_ppl"] < s["val_ppl_high"]
    assert s["val_ppl_low"] == pytest.approx(math.exp(s["val_loss"] - 1.96 * s["val_loss_se"]))
    # Tiny Shakespeare is ASCII: one byte per character, so bits per byte = bits per character
    assert s["val_bpb"] == pytest.approx(s["val_loss"] / math.log(2), rel=1e-6)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_loss_se"] > 0 and r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2)) for r in rows)
    lines = result.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("run "))
    block = lines[first : next(i for i, line in enumerate(lines) if line.startswith("gap ")) + 1]
    assert [b.split()[0] for b in block if not b.startswith(" ")] == ["run", "status", "dropout", "val", "gap"]
    assert all(len(b) <= 80 for b in block[1:]), block
    assert "±" in block[-1] and "bits/byte" in "".join(block)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_nll_is_cross_entropy_bit_for_bit(dtype):
    """The in-place log-softmax gives F.cross_entropy's per-token values exactly, at GPT-2's
    vocabulary, for fp32 logits and for a bf16 pass's logits (scored in fp32, as forward does)."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 50257, generator=g) * 4).to(dtype)
    targets = torch.randint(50257, (2, 5), generator=g)
    expected = F.cross_entropy(logits.float().view(-1, 50257), targets.view(-1), reduction="none").view(2, 5)
    got = token_nll(logits.clone(), targets)
    assert got.dtype == torch.float32 and got.shape == (2, 5)
    assert torch.equal(got, expected)


def test_estimate_loss_is_the_mean_cross_entropy_of_its_fixed_batches():
    """Each split's loss is the mean over eval_iters batches of F.cross_entropy on those batches
    (drawn as Batches draws them with the split's seed), its SE their spread, and bits per byte
    the batches' nats over their UTF-8 bytes."""
    from conftest import compose
    from dropsample.training import Batches, estimate_loss

    cfg = compose(["model=tiny", "train.eval_iters=3", "train.batch_size=4"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=cfg.model.block_size, n_layer=1, n_head=2, n_embd=16)).train()
    g = torch.Generator().manual_seed(1)
    splits = {"train": torch.randint(300, (500,), generator=g), "val": torch.randint(300, (400,), generator=g)}
    byte_lengths = np.random.default_rng(2).integers(1, 5, size=300)
    out = estimate_loss(model, splits, cfg, torch.device("cpu"), torch.autocast("cpu", enabled=False), byte_lengths)
    assert model.training  # restored
    for offset, role in enumerate(sorted(splits)):
        batches = Batches(splits[role], cfg.model.block_size, 4, torch.device("cpu"), cfg.train.eval_seed + offset, 0, 1)
        losses, nbytes = [], 0
        model.eval()
        with torch.no_grad():
            for _ in range(3):
                x, y = batches.next()
                logits, _ = model(x)
                losses.append(F.cross_entropy(logits.view(-1, 300), y.reshape(-1)).item())
                nbytes += int(byte_lengths[y.numpy()].sum())
        model.train()
        mean = float(np.mean(losses))
        assert out[role]["loss"] == pytest.approx(mean, rel=1e-6)
        # (the batch losses agree to float32 rounding, ~1e-7 nats; the SE is ~1e-3, so compare absolutely)
        assert out[role]["se"] == pytest.approx(np.std(losses, ddof=1) / math.sqrt(3), abs=1e-5)
        assert out[role]["bpb"] == pytest.approx(mean * 3 * 4 * cfg.model.block_size / (math.log(2) * nbytes), rel=1e-6)
