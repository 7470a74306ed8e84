import json

import pytest
import torch
from safetensors.torch import load_file

from dropsample import checkpoint, tokenizer
from dropsample.model import GPT, GPTConfig


@pytest.fixture()
def trained(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 20, (4, 8))
    for _ in range(3):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    tok = tmp_path / "tokenizer.json"
    tokenizer.train_tokenizer("char", "abcdefghijklmnopqrs").save(str(tok))  # 19 chars + <unk> = 20
    return model, opt, tok


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path, trained):
    model, opt, tok = trained
    rng = {"torch": torch.get_rng_state()}
    checkpoint.save(tmp_path / "ck" / "last", model, tok, state={"step": 3}, optimizer=opt, rng=rng)
    ck = checkpoint.load(tmp_path / "ck" / "last")
    assert ck.state["step"] == 3
    loaded = ck.load_model()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    tensors = ck.tensors()
    restored = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    restored.load_state_dict(checkpoint.optimizer_state(ck, tensors))
    old, new = opt.state_dict()["state"], restored.state_dict()["state"]
    assert sorted(old) == sorted(new)
    for index in old:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(old[index][key], new[index][key])
    assert torch.equal(tensors["rng.torch"], rng["torch"])


def test_checkpoint_files_hold_no_pickles(tmp_path, trained):
    model, opt, tok = trained
    checkpoint.save(tmp_path / "last", model, tok, state={"step": 1}, optimizer=opt, rng={"torch": torch.get_rng_state()})
    for f in (tmp_path / "last").iterdir():
        if f.suffix == ".safetensors":
            load_file(str(f))  # safetensors: raw tensors + a JSON header, no code
        else:
            assert f.suffix == ".json"
            json.loads(f.read_text())


def test_a_crash_during_save_keeps_the_previous_checkpoint(tmp_path, trained, monkeypatch):
    model, opt, tok = trained
    target = tmp_path / "checkpoints" / "last"
    checkpoint.save(target, model, tok, state={"step": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as m:  # dies while writing the new files
        m.setattr(checkpoint, "save_file", broken)
        with pytest.raises(OSError):
            checkpoint.save(target, model, tok, state={"step": 2})
    assert checkpoint.load(target).state["step"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last"], "no temporary folder is left behind"

    # dies between the two renames of the swap: `last` is gone, `.old-last` holds step 1
    real_replace = checkpoint.os.replace
    calls = []

    def die_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed (simulated)")
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(checkpoint.os, "replace", die_on_second)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(target, model, tok, state={"step": 3})
    assert not target.exists()
    assert checkpoint.load(target).state["step"] == 1
    checkpoint.save(target, model, tok, state={"step": 4})  # the next save cleans up
    assert checkpoint.load(target).state["step"] == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]


def test_a_kill_mid_save_leaves_a_temporary_folder_the_next_save_removes(tmp_path, trained, monkeypatch):
    model, opt, tok = trained
    target = tmp_path / "checkpoints" / "last"
    checkpoint.save(target, model, tok, state={"step": 1})
    stale = target.parent / ".tmp-last-killed"  # what SIGKILL during a save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    checkpoint.save(target, model, tok, state={"step": 2})
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]
    assert checkpoint.load(target).state["step"] == 2
