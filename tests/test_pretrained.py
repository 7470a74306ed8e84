"""model.init_from: a GPT-2 saved by transformers is imported with its logits, fine-tuned with
dropsample's dropout, sampled, evaluated and exported back; bad sources are one line each.

The source is a small GPT2LMHeadModel the test builds with transformers (random weights, a
byte-level BPE tokenizer trained with `tokenizers` on the start of Tiny Shakespeare) and
saves with save_pretrained: no hub access.
"""

import hashlib
import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from conftest import DATA_DIR, TINY, compose, make_run_dir, run_cli
from dropsample import pretrained, task
from dropsample.config import validate
from dropsample.dropout import DropoutRates
from dropsample.errors import ConfigError
from dropsample.model import GPT, GPTConfig
from dropsample.runs import RunFolder
from dropsample.schema import SITES, Config, ModelConfig, to_dict

transformers = pytest.importorskip("transformers")

N_POSITIONS = 64
RUN = [o for o in TINY if not o.startswith(("model=", "train.max_iters", "train.eval_interval"))] + [
    "model=pretrained", "model.block_size=32", "+data.max_chars=60000", "train.eval_interval=2",
    "train.eval_iters=1", "train.final_eval_tokens=512", "train.lr=1e-3",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (two spin-wait on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base():
    """The tiny run's config, composed once (Hydra composition costs most of a refusal test)."""
    return compose(RUN)


def _with(cfg, **model):
    """`cfg` with model keys changed, re-validated as a run folder's saved config would be."""
    raw = to_dict(cfg)
    raw["model"].update(model)
    raw["data"]["tokenizer"], raw["data"]["tokenizer_path"] = "char", None  # as composed: derive() sets them
    return validate(OmegaConf.create(raw))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A save_pretrained folder: config.json, model.safetensors, tokenizer.json; and the peer model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("gpt2-tiny")
    text = (DATA_DIR / "tinyshakespeare" / "input.txt").read_text()[:8000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=N_POSITIONS,
                                     vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    peer = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # weights far from init, so logits differ by O(1) between tokens and positions
        for name, p in peer.named_parameters():
            p.copy_((1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith(
                "ln_f.weight") else 0.0) + 0.3 * torch.randn_like(p))
    peer.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    return folder, peer


def _imported(folder, block_size=None, rates=None):
    cfg = Config(model=ModelConfig(n_layer=None, n_head=None, n_embd=None, block_size=block_size,
                                   init_from=str(folder)))
    src = pretrained.open_source(cfg.model)
    cfg = pretrained.shaped(cfg, src)
    m = cfg.model
    model = GPT(GPTConfig(src.hf["vocab_size"], m.block_size, m.n_layer, m.n_head, m.n_embd, rates or DropoutRates()))
    pretrained.load_weights(model, src)
    return model.eval(), src


def test_imported_model_gives_transformers_logits(source):
    folder, peer = source
    ids = torch.randint(0, peer.config.vocab_size, (2, N_POSITIONS), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = peer(ids).logits  # (2, 64, V)
        assert want.std() > 1.0  # the comparison is not between near-zero numbers
        model, src = _imported(folder)
        got, _ = model(ids)
        assert (got - want).abs().max().item() < 1e-4
        # a shorter context keeps the first block_size position embeddings
        short, _ = _imported(folder, block_size=16)
        assert short.config.block_size == 16 and (short(ids[:, :16])[0] - want[:, :16]).abs().max().item() < 1e-4
    assert src.kind == "folder" and src.shape() == {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64}
    assert src.revision == "sha256:" + hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_dropout_at_each_site_acts_in_training_only(source):
    folder, peer = source
    ids = torch.randint(0, peer.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = peer(ids).logits
        for site in SITES:
            model, _ = _imported(folder, rates=DropoutRates(**{site: 0.5}))
            assert (model(ids)[0] - want).abs().max().item() < 1e-4, site  # eval: no dropout
            model.train()
            torch.manual_seed(0)
            first = model(ids)[0]
            assert (first - want).abs().max().item() > 1e-2, site  # the site drops something
            assert not torch.equal(first, model(ids)[0]), site  # with fresh masks each pass


def _hf_logits(folder, ids):
    with torch.no_grad():
        return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()(ids).logits


def test_max_iters_0_imports_evaluates_samples_and_exports_the_source(source, tmp_path):
    folder, peer = source
    cfg = compose(RUN + [f"model.init_from={folder}", "train.max_iters=0"])
    assert (cfg.data.tokenizer, cfg.data.tokenizer_path) == ("gpt2", str(folder))  # the source's tokenizer
    run_dir = make_run_dir(tmp_path, cfg)
    summary = task.job(cfg, run_dir)
    run = RunFolder(run_dir)
    assert summary.status == "completed" and summary.steps == 0 and summary.best_step == 0
    assert [r["step"] for r in run.metrics()] == [0]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert summary.init_from["revision"] == f"sha256:{digest}" and summary.init_from["source"] == str(folder)
    assert summary.val_loss is not None and summary.samples  # evaluated and sampled
    name = summary.latest_samples
    assert set(run.sample_metrics(name)["samplers"]) >= {"greedy", "top_p_0.9"}
    # the checkpoint is the source: exported, transformers reads the source's logits back
    out = tmp_path / "hf"
    assert run_cli("export", str(run_dir), str(out)).returncode == 0
    ids = torch.randint(0, peer.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (_hf_logits(out, ids) - peer(ids).logits).abs().max().item() < 1e-4
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((folder / "tokenizer.json").read_text())


def test_finetuning_with_dropout_everywhere_then_eval_sample_export(source, tmp_path):
    folder, peer = source
    cfg = compose(RUN + [f"model.init_from={folder}", "train.max_iters=4", "dropout.rate=0.1",
                         f"dropout.sites=[{','.join(SITES)}]", "sample_after_train=false"])
    run_dir = make_run_dir(tmp_path, cfg)
    summary = task.job(cfg, run_dir)
    assert summary.status == "completed" and summary.steps == 4
    assert summary.dropout["attn"] == summary.dropout["mlp_hidden"] == summary.dropout["head"] == 0.1
    run = RunFolder(run_dir)
    last = run.load_checkpoint("last")
    assert last.model_config.block_size == 32 and last.model_config.n_layer == 2
    tuned = last.load_model().eval()
    ids = torch.randint(0, peer.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (tuned(ids)[0] - peer(ids).logits).abs().max().item() > 1e-3  # the steps changed the weights
    # sample and eval on the run as on a scratch run; export round-trips the fine-tuned logits
    assert run_cli("eval", str(run_dir), "--checkpoint", "last", "--batches", "2").returncode == 0
    assert run_cli("sample", str(run_dir), "--name", "s", "gen.checkpoint=last", "samplers=[greedy]").returncode == 0
    assert run.sample_metrics("s") is not None
    out = tmp_path / "hf"
    assert run_cli("export", str(run_dir), str(out), "--checkpoint", "last").returncode == 0
    with torch.no_grad():
        assert (_hf_logits(out, ids) - tuned(ids)[0]).abs().max().item() < 1e-4


def _refusal(cfg):
    from dropsample import training

    with pytest.raises(ConfigError) as err:
        training.build(cfg, "unused")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_pickle_only_folder_is_refused(source, base, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(source[0] / "config.json", folder)
    shutil.copy(source[0] / "tokenizer.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    message = _refusal(_with(base, init_from=str(folder)))
    assert message.startswith("model.init_from:") and "pytorch_model.bin" in message and "never loads" in message


def test_other_model_types_are_refused(source, base, tmp_path):
    folder = tmp_path / "llama"
    shutil.copytree(source[0], folder)
    hf = json.loads((folder / "config.json").read_text())
    llama = {**hf, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(llama))
    message = _refusal(_with(base, init_from=str(folder)))
    assert "is a llama model (LlamaForCausalLM)" in message and "GPT-2-style" in message
    (folder / "config.json").write_text(json.dumps({**hf, "architectures": ["GPT2ForSequenceClassification"]}))
    assert "GPT2ForSequenceClassification" in _refusal(_with(base, init_from=str(folder)))
    (folder / "config.json").write_text(json.dumps({**hf, "activation_function": "relu"}))
    assert "activation_function=relu" in _refusal(_with(base, init_from=str(folder)))


def test_shape_overrides_that_contradict_the_source_are_refused(source, base):
    folder = str(source[0])
    message = _refusal(_with(base, init_from=folder, n_layer=3))
    assert message.startswith("model.n_layer: 3 contradicts model.init_from") and "n_layer=2" in message
    assert _refusal(_with(base, init_from=folder, block_size=128)).startswith(
        "model.block_size: 128 contradicts model.init_from")
    # the default preset's shape (baby: 4 layers) is an override too: model=pretrained takes the source's
    baby = _with(base, init_from=folder, n_layer=4, n_head=4, n_embd=128, block_size=64)
    assert "model=pretrained" in _refusal(baby)
    raw = to_dict(base)
    raw["data"]["tokenizer"] = "bpe"
    with pytest.raises(ConfigError, match="data.tokenizer: bpe trains a new tokenizer"):
        validate(OmegaConf.create(raw))
    with pytest.raises(ConfigError, match="model.n_layer: is null"):
        _with(base, init_from=None)


def test_offline_hub_id_is_one_line_naming_a_local_folder(base):
    message = _refusal(_with(base, init_from="dropsample-test/no-such-gpt2"))
    assert message.startswith("model.init_from: 'dropsample-test/no-such-gpt2' is not in the local hub cache")
    assert "save_pretrained(DIR)" in message and "model.init_from=DIR" in message


def test_a_refused_source_exits_2_before_training_and_leaves_no_run(source, base, tmp_path, capsys):
    cfg = _with(base, init_from=str(source[0]), n_head=4)
    run_dir = make_run_dir(tmp_path, cfg)
    with pytest.raises(SystemExit) as exit_:
        task.run_task(to_dict(cfg), run_dir, sweep_job=False)
    assert exit_.value.code == 2 and not run_dir.exists()
    assert capsys.readouterr().err.strip().startswith("error: model.n_head: 4 contradicts model.init_from")


def test_finetune_preset_composes():
    cfg = compose(["experiment=finetune_shakespeare"])
    assert cfg.model.init_from == "gpt2" and cfg.model.n_layer is None and cfg.model.block_size is None
    assert (cfg.data.tokenizer, cfg.data.tokenizer_path) == ("gpt2", "gpt2")
    assert cfg.train.max_iters == 300


def test_a_sweep_with_a_contradicting_source_stops_in_preflight(source):
    from dropsample.cli import preflight
    from dropsample.errors import UserError

    with pytest.raises(UserError, match=r"^model.n_layer: 3 contradicts model.init_from"):
        preflight(RUN + [f"model.init_from={source[0]}", "model.n_layer=3", "dropout.rate=0,0.1"], multirun=True)


def test_a_hub_id_reads_the_hub_cache_and_records_the_commit(source, monkeypatch, tmp_path):
    """A hub snapshot as huggingface_hub caches one (refs/main -> snapshots/<commit>/), offline."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--dropsample-test--tiny-gpt2"
    shutil.copytree(source[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    src = pretrained.open_source(ModelConfig(n_layer=None, n_head=None, n_embd=None, block_size=None,
                                             init_from="dropsample-test/tiny-gpt2"))
    assert (src.kind, src.revision, src.folder.name) == ("hub", commit, commit)
    assert src.describe()["source"] == "dropsample-test/tiny-gpt2"


def test_openai_layout_without_prefix_with_mask_buffers_and_stored_lm_head(source, tmp_path):
    """OpenAI's hub files were saved from GPT2Model: no `transformer.` prefix, causal-mask buffers
    (`h.N.attn.bias`), and some saves also store the tied lm_head."""
    from safetensors.torch import load_file, save_file

    folder, peer = source
    old = tmp_path / "openai-layout"
    old.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(folder / name, old)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    for layer in range(2):
        tensors[f"h.{layer}.attn.bias"] = torch.ones(1, 1, N_POSITIONS, N_POSITIONS).tril()
    tensors["lm_head.weight"] = tensors["wte.weight"].clone()
    save_file(tensors, str(old / "model.safetensors"))
    ids = torch.randint(0, peer.config.vocab_size, (1, N_POSITIONS), generator=torch.Generator().manual_seed(5))
    model, _ = _imported(old)
    with torch.no_grad():
        assert (model(ids)[0] - peer(ids).logits).abs().max().item() < 1e-4
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1.0  # untied: not GPT-2's architecture
    save_file(tensors, str(old / "model.safetensors"))
    with pytest.raises(ConfigError, match="lm_head that differs from its wte"):
        _imported(old)
