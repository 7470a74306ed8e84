"""Export a checkpoint as a folder transformers loads as GPT2LMHeadModel; the one mapping
between dropsample's weights and GPT-2's, both ways (pretrained.py imports with `from_hf`).

GPT-2 stores its projections as Conv1D (in, out) where dropsample uses nn.Linear
(out, in): those four weights per block are transposed; every name is unchanged.
transformers has one residual dropout rate (resid_pdrop); we write resid_attn there.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from dropsample import checkpoint
from dropsample import tokenizer as toks
from dropsample.errors import UserError
from dropsample.runs import RunFolder

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_PREFIX = "transformer."  # GPT2LMHeadModel's names; OpenAI's hub files (saved from GPT2Model) lack it
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers older transformers saved, not weights


def to_hf(state: dict) -> dict:
    """dropsample state_dict -> GPT-2 tensors (Conv1D layout, the tied lm_head left out)."""
    return {key: (value.t() if key.endswith(CONV1D_SUFFIXES) else value).detach().cpu().contiguous()
            for key, value in state.items() if key != checkpoint.TIED}


def from_hf(tensors: dict) -> dict:
    """GPT-2 tensors (GPT2LMHeadModel's or GPT2Model's names) -> dropsample state_dict names and
    layout; `lm_head.weight`, when stored, is kept for the caller to compare with the tied wte."""
    out = {}
    for key, value in tensors.items():
        if key.endswith(HF_BUFFERS):
            continue
        if not key.startswith(HF_PREFIX) and key != checkpoint.TIED:
            key = HF_PREFIX + key
        out[key] = value.t().contiguous() if key.endswith(CONV1D_SUFFIXES) else value
    return out


def hf_config(cfg, eos_id: int | None) -> dict:
    d = cfg.dropout
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "embd_pdrop": d.embd,
        "attn_pdrop": d.attn,
        "resid_pdrop": d.resid_attn,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
    }


def write_hf_model(model, out_dir: Path, eos_id: int | None = None) -> None:
    """config.json + model.safetensors in transformers' GPT-2 layout."""
    weights = to_hf(model.state_dict())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config(model.config, eos_id), indent=2))


def export_hf(run_dir: Path, out_dir: Path, which: str = "best") -> Path:
    run = RunFolder(run_dir)
    run.config()  # a clear error when run_dir is not a run
    if which not in ("best", "last"):
        raise UserError(f"--checkpoint {which!r}: use best or last")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} is not empty; choose a new folder")
    ckpt = run.load_checkpoint(which)
    found = ckpt.folder
    model, tok = ckpt.load_model("cpu"), ckpt.tokenizer
    eos_id = toks.end_of_text_id(tok)
    write_hf_model(model, out_dir, eos_id)
    tok.save(str(out_dir / "tokenizer.json"))
    special = {"eos_token": toks.END_OF_TEXT} if eos_id is not None else {"unk_token": toks.UNK}
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": ckpt.model_config.block_size,
                        "clean_up_tokenization_spaces": False, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    print(f"exported {found} to {out_dir} (load with GPT2LMHeadModel.from_pretrained)")
    return out_dir
