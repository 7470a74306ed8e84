"""Bad values fail before any work, as one line naming the key, exit code 2, no folder."""

import pytest

from conftest import TINY, cli
from dropsample.cli import preflight
from dropsample.errors import UserError


@pytest.mark.parametrize(
    "override,message",
    [
        ("dropout.rate=1.0", "dropout.rate: got 1.0; a dropout rate must be in [0, 1)"),
        ("dropout.attn=-0.1", "dropout.attn: got -0.1"),
        ("dropout.sites=[embd,ffn]", "dropout.sites: unknown site 'ffn'"),
        ("dropout.schedule.kind=cosine", "dropout.schedule.kind: got 'cosine'"),
        ("model.n_embd=31", "model.n_embd: 31 is not divisible by model.n_head=2"),
        ("train.batch_size=0", "train.batch_size: got 0; must be a positive integer"),
        ("train.max_iters=-5", "train.max_iters"),
        ("train.device=tpu", "train.device: got 'tpu'"),
        ("nonsense=1", "nonsense: unknown key"),
        ("+train.lr_warmup=3", "train.lr_warmup: unknown key"),
        ("model=huge", "model=huge: no such option; choose one of baby, gpt2, pretrained, shakespeare, tiny"),
        ("samplers=[{top_p:1.5}]", "samplers[0].top_p: got 1.5; must be in (0, 1]"),
        ("samplers=[greedy,{base:beam_4,num_beams:0}]", "samplers[1].num_beams"),
        ("gen.checkpoint=first", "gen.checkpoint: got 'first'"),
        ("dropout.rate=0,0.5", "is a sweep; add -m"),
    ],
)
def test_preflight_errors(override, message):
    with pytest.raises(UserError) as err:
        preflight(["model=tiny", override], multirun=False)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_preflight_checks_every_job_of_a_sweep():
    assert preflight(["model=tiny", "dropout.rate=0,0.1", "seed=1,2,3"], multirun=True)[0] == 6
    with pytest.raises(UserError, match="dropout.rate: got 1.5"):
        preflight(["model=tiny", "dropout.rate=0,1.5"], multirun=True)
    experiments = {"rate_sweep": 4, "site_sweep": 6, "decoding_sweep": 2, "early_dropout": 4}
    for name, jobs in experiments.items():
        assert preflight([f"experiment={name}", "model=tiny"], multirun=True)[0] == jobs, name


def test_cli_bad_input_one_line_exit_2_no_folder(tmp_path):
    result = cli("train", *TINY, "dropout.rate=2", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: dropout.rate: got 2.0; a dropout rate must be in [0, 1)"
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()
    # an error that needs the data (context longer than the corpus) also leaves nothing behind
    result = cli("train", *TINY, "model.block_size=200000", cwd=tmp_path)
    assert result.returncode == 2 and "model.block_size: 200000 is longer than the val split" in result.stderr
    assert "Traceback" not in result.stderr
    # so does sampling that could not fit its prompts and continuations into the val split
    result = cli("train", *TINY, "gen.max_new_tokens=200000", cwd=tmp_path)
    assert result.returncode == 2 and "does not fit the val split" in result.stderr
    assert not list(tmp_path.glob("runs/*/*")), "no run folder may be left behind"


@pytest.mark.parametrize("overrides", [
    [],
    ["model=shakespeare", "dropout.rate=0.2", "train.max_iters=30"],
    ["experiment=early_dropout", "model=tiny", "logger=[tensorboard,csv]"],
    ["experiment=finetune_shakespeare", "samplers=[greedy,{base:top_p_0.9,temperature:0.7}]"],
    ["data=wikitext2", "dropout=everywhere", "runs_root=elsewhere", "name=x${seed}"],
])
def test_a_single_run_is_validated_from_the_one_composition_preflight_makes(overrides):
    # preflight composes once (with the hydra node, for the run folder) and validates that
    # composition less its hydra node: it must be the config a composition without hydra gives
    from omegaconf import OmegaConf

    from dropsample.config import compose, job_config, validate

    once = job_config(compose(overrides, hydra_config=True))
    again = compose(overrides)
    assert "hydra" not in once
    assert OmegaConf.to_container(once, resolve=True) == OmegaConf.to_container(again, resolve=True)
    assert validate(once) == validate(again)
