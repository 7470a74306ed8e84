"""The judge: a run folder's model scores TEXT (re-tokenized) as a hand teacher-forced pass does,
equals the same weights loaded through transformers, and bad judges are one-line errors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose, make_run_dir
from dropsample import checkpoint, judge
from dropsample import tokenizer as toks
from dropsample.decoding.search import score
from dropsample.errors import UserError
from dropsample.model import GPT, GPTConfig


def fake_run(tmp_path, name="judge", *, seed=0, block_size=32, status="completed", overrides=()):
    """A run folder with a randomly initialised tiny model as its best checkpoint (no training)."""
    from dropsample import data as data_mod

    cfg = compose(["model=tiny", f"model.block_size={block_size}", *overrides])
    run_dir = make_run_dir(tmp_path, cfg, name)
    tok = data_mod.prepare(cfg.data, log=lambda *a: None).tokenizer
    tok.save(str(run_dir / "tokenizer.json"))
    torch.manual_seed(seed)
    m = cfg.model
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=m.block_size, n_layer=m.n_layer,
                          n_head=m.n_head, n_embd=m.n_embd)).eval()
    for which in ("best", "last"):
        checkpoint.save(run_dir / "checkpoints" / which, model, run_dir / "tokenizer.json", state={"step": 7})
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "config_hash": "abc", "params": 1}))
    return run_dir, model, tok


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("judge"))


def hand_scores(model, prompt_ids, completion_ids):
    """Teacher forcing written out: sum of -log p(completion token | everything before it)."""
    seq = torch.tensor([prompt_ids + completion_ids])
    logits, _, hidden = model(seq, return_hidden=True)
    logp = F.log_softmax(logits[0].float(), -1)
    nll = -sum(logp[t - 1, seq[0, t]].item() for t in range(len(prompt_ids), seq.shape[1]))
    return nll, hidden[0, -1].detach().numpy()


def test_run_judge_scores_retokenized_text(judged):
    run_dir, model, tok = judged
    j = judge.load(str(run_dir))
    assert j.identity["kind"] == "run" and j.identity["step"] == 7 and j.identity["config_hash"] == "abc"
    prompts, completions = ["ROMEO: ", "First Citizen:\n"], ["I love thee", "Speak, speak."]
    scores, feats = j.score_texts(prompts, completions)
    for k, (p, c) in enumerate(zip(prompts, completions)):
        p_ids, c_ids = toks.encode_prompt(tok, p), toks.encode_prompt(tok, c)
        nll, h = hand_scores(model, p_ids, c_ids)
        assert scores[k, 0] == pytest.approx(nll, rel=1e-5) and scores[k, 1] == len(c_ids)
        np.testing.assert_allclose(feats[k], h, rtol=1e-4, atol=1e-5)


def test_long_texts_are_scored_in_generation_windows(judged):
    """Past block_size, every token is scored with the context generation gave it (search.score)."""
    _, model, _ = judged
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 60, 20).tolist(), rng.integers(0, 60, 5).tolist()]
    completions = [rng.integers(0, 60, 70).tolist(), rng.integers(0, 60, 3).tolist()]
    ours = judge.self_scores(model, prompts, completions)
    for k in range(2):
        nll, ent, n = score(model, prompts[k], completions[k])
        assert ours[k] == pytest.approx([nll, ent, n], rel=1e-5)


def test_transformers_judge_equals_the_run_judge(judged, tmp_path):
    pytest.importorskip("transformers")
    from dropsample.export import export_hf

    run_dir, _, _ = judged
    folder = export_hf(run_dir, tmp_path / "hf")
    ours, theirs = judge.load(str(run_dir)), judge.load(str(folder))
    assert theirs.identity["kind"] == "transformers" and theirs.identity["local"]
    texts = (["ROMEO: ", "KING"], ["I love thee, and more", "!"])
    a, fa = ours.score_texts(*texts)
    b, fb = theirs.score_texts(*texts)
    np.testing.assert_allclose(a, b, rtol=1e-4)
    np.testing.assert_allclose(fa, fb, rtol=1e-3, atol=1e-4)


def test_bad_judges_are_one_line_errors(tmp_path):
    running, _, _ = fake_run(tmp_path, "running", status="running")
    for spec, words in ((str(running), "not completed"), (str(tmp_path / "nowhere" / "x"), "no such folder"),
                        (str(tmp_path), "not a dropsample run folder"), ("gpt2-large", "offline")):
        with pytest.raises(UserError) as err:
            judge.load(spec)
        assert words in str(err.value) and "\n" not in str(err.value)
