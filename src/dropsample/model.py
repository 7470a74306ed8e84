"""A GPT-2 style language model with a separate dropout rate at every site.

Parameter names and shapes map one-to-one to transformers' GPT2LMHeadModel
(`transformer.h.0.attn.c_attn.weight` ...), except that we use nn.Linear
(out, in) where GPT-2 uses Conv1D (in, out): export transposes.

Shapes: B batch, T time, C n_embd, H n_head, D = C // H head size, V vocab.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dropsample.dropout import (
    DropoutRates,
    SiteDropout,
    drop_path_rates,
    head_keep,
    injecting,
    inverted_dropout,
    per_sample_keep,
    word_dropout_mask,
)


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int  # longest context the position table covers
    n_layer: int
    n_head: int
    n_embd: int
    dropout: DropoutRates = field(default_factory=DropoutRates)

    def to_dict(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "block_size": self.block_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "dropout": self.dropout.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Strict (checkpoint config.json): unknown or missing keys raise ValueError."""
        d = dict(d)
        known = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout"}
        if set(d) - known or not {"vocab_size", "block_size", "n_layer", "n_head", "n_embd"} <= set(d):
            raise ValueError(f"model config keys {sorted(d)} are not {sorted(known)}")
        for key in known - {"dropout"}:
            if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] <= 0:
                raise ValueError(f"model config {key}={d[key]!r} is not a positive integer")
        d["dropout"] = DropoutRates.from_dict(d.get("dropout", {}))
        return cls(**d)


# Inference's output layer on x86 CPUs (see GPT._logits): from about 4,096 tokens oneDNN's
# product beats MKL's (1.1-1.8x at 4,096 x 128, 1.4-5x at 50,257); below it, it loses.
_ONEDNN_MIN_VOCAB = 4096
_ONEDNN_HEAD = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class KVCache:
    """Keys and values of every layer, preallocated: (n_layer, B, H, max_len, D).

    `length` counts the positions already stored; a forward pass appends T more.
    Beam search reorders rows with `select`; contrastive search widens with `repeat`.
    """

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype=torch.float32, max_len: int | None = None):
        head_dim = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch, cfg.n_head, max_len or cfg.block_size, head_dim)
        # never read before written (attention only sees [:length]), so no zero fill
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self._layers()
        self.length = 0
        # `select` gathers into these and swaps (beam search reorders every step: a gather
        # into a second buffer costs a fifth of gathering into a temporary and copying back)
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None

    def _layers(self) -> None:
        # per-layer views made once: indexing [layer, :, :, a:b] each step costs more than the copy
        # (select, not unbind: autograd forbids writing into one of unbind's multiple views)
        self._k, self._v = [self.k[i] for i in range(len(self.k))], [self.v[i] for i in range(len(self.v))]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store (B, H, T, D) new keys/values; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        kl, vl = self._k[layer], self._v[layer]
        kl.narrow(2, start, end - start).copy_(k)
        vl.narrow(2, start, end - start).copy_(v)
        return kl.narrow(2, 0, end), vl.narrow(2, 0, end)

    def select(self, rows: torch.Tensor, same_prefix: int = 0) -> None:
        """Keep batch rows `rows`: reordered (beams), repeated or fewer (contrastive search).

        Copies only the filled positions, and of those only the ones at or after
        `same_prefix`: the caller promises that every earlier position already holds the same
        keys and values in row i as in row rows[i] (beam search: a prompt, which all of its
        beams share and which a beam never leaves), in this buffer and in the spare one."""
        n, same = self.length, min(same_prefix, self.length)
        if self._spare is not None and rows.numel() == self.k.shape[1]:
            new_k, new_v = self._spare
        else:  # first reorder or a new batch size: nothing in a fresh buffer can be reused
            same = 0
            new_k = self.k.new_empty((self.k.shape[0], rows.numel()) + self.k.shape[2:])
            new_v = torch.empty_like(new_k)
        torch.index_select(self.k[:, :, :, same:n], 1, rows, out=new_k[:, :, :, same:n])
        torch.index_select(self.v[:, :, :, same:n], 1, rows, out=new_v[:, :, :, same:n])
        # the old buffers' prefix is still right for the next select (rows stay in their group)
        self._spare = (self.k, self.v) if rows.numel() == self.k.shape[1] else None
        self.k, self.v = new_k, new_v
        self._layers()

    def repeat(self, times: int) -> None:
        self.select(torch.arange(self.k.shape[1], device=self.k.device).repeat_interleave(times))


def math_attention(q, k, v, p: float = 0.0, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v, optionally causal, with dropout p on the probabilities.

    Used where the fused kernel is slower: on CPU in training with attention dropout (SDPA
    then draws one mt19937 number per element), and for a single decoding query over a wide
    batch of strided KV-cache views (SDPA copies them first).
    """
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Tq, Tk)
    if causal:
        T = q.shape[-2]
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    att = att.softmax(dim=-1)
    return (inverted_dropout(att, p) if p > 0 else att) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_p = cfg.dropout.attn  # on the attention probabilities
        self.drop_head = cfg.dropout.drop_head
        self.resid_drop = SiteDropout(cfg.dropout.resid_attn, "resid_attn" in cfg.dropout.locked)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, H, T, D) views, strided exactly as split + view + transpose
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        prefix = 0
        if cache is not None:
            prefix = cache.length
            k, v = cache.append(layer, k, v)  # (B, H, prefix + T, D)
        p = self.attn_p if self.training else 0.0  # SDPA drops whenever dropout_p > 0, even in eval
        if prefix == 0 and ((x.device.type == "cpu" and (p > 0 or q.dtype != torch.float32)) or injecting()):
            # CPU: our dropout kernel beats SDPA's RNG, and under bf16 autocast SDPA's CPU kernel
            # is 1.7-4x slower than two bf16 matmuls (forward + backward, bench/train_speed.py
            # --dtype bfloat16); packed (vmapped) training: SDPA has no batching rule on CPU and
            # its dropout cannot take the packed masks
            y = math_attention(q, k, v, p, causal=True)
        elif prefix == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        elif T == 1 and p == 0 and B * self.n_head >= 128:
            # decoding a wide batch: one query sees every cached key; on CPU the fused kernel
            # loses to two batched matmuls from about 128 (row, head) pairs (bench/generate_speed.py)
            y = math_attention(q, k, v)
        elif T == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            # T new queries after a cached prefix: query i sees keys up to prefix + i
            mask = torch.ones(T, prefix + T, dtype=torch.bool, device=x.device).tril(prefix)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        if self.training and self.drop_head > 0:
            # DropHead: one coin per (sample, head); kept heads scaled by 1/(1-p)
            y = y * head_keep(B, self.n_head, self.drop_head, y)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        # GPT-2's "gelu_new" is the tanh approximation; using it keeps exported logits equal.
        # (torch's fused kernel: one pass each way. A hand-written x sigmoid(2z) with its own
        # backward lost to it on this project's CPUs: 1.11x slower per baby step, 1.04x shakespeare.)
        self.act = nn.GELU(approximate="tanh")
        self.hidden_drop = SiteDropout(cfg.dropout.mlp_hidden, "mlp_hidden" in cfg.dropout.locked)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.resid_drop = SiteDropout(cfg.dropout.resid_mlp, "resid_mlp" in cfg.dropout.locked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resid_drop(self.c_proj(self.hidden_drop(self.act(self.c_fc(x)))))


class Block(nn.Module):
    """Pre-LayerNorm residual block; `drop_path` removes a whole branch per sample."""

    def __init__(self, cfg: GPTConfig, drop_path: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.drop_path = drop_path

    def _branch(self, out: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return out
        return out * per_sample_keep(out.shape[0], self.drop_path, out, extra_dims=2)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self._branch(self.attn(self.ln_1(x), cache, layer))
        x = x + self._branch(self.mlp(self.ln_2(x)))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        d = cfg.dropout
        path_rates = drop_path_rates(d.drop_path, cfg.n_layer, d.drop_path_by_depth)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=SiteDropout(d.embd, "embd" in d.locked),
                h=nn.ModuleList(Block(cfg, path_rates[i]) for i in range(cfg.n_layer)),
                head_drop=SiteDropout(d.head, "head" in d.locked),
                ln_f=nn.LayerNorm(cfg.n_embd),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.word_drop = d.word
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream
        # does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Unique parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def set_dropout(self, d: DropoutRates) -> None:
        """Apply new rates in place (schedules); the placement (locked sites) is fixed at build time."""
        t = self.transformer
        t.drop.p, t.head_drop.p, self.word_drop = d.embd, d.head, d.word
        path_rates = drop_path_rates(d.drop_path, self.config.n_layer, d.drop_path_by_depth)
        for block, path_p in zip(t.h, path_rates):
            block.drop_path = path_p
            block.attn.attn_p, block.attn.drop_head = d.attn, d.drop_head
            block.attn.resid_drop.p = d.resid_attn
            block.mlp.hidden_drop.p, block.mlp.resid_drop.p = d.mlp_hidden, d.resid_mlp

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, V). Without gradients on an x86 CPU, a large vocabulary's output
        layer goes through oneDNN's matrix product: MKL's, which nn.Linear calls, is slow for a
        (V, C) weight this wide (bench/generate_speed.py; at 50,257 x 128: 3.4 vs 0.7 ms for
        one row, 9.6 vs 5.4 ms for 64, 46 vs 32 ms for 256). Same fp32 product, another order
        of summation: logits differ from nn.Linear's in the last bits."""
        w = self.lm_head.weight
        if (w.shape[0] >= _ONEDNN_MIN_VOCAB and _ONEDNN_HEAD and x.device.type == "cpu"
                and not torch.is_grad_enabled() and x.dtype == w.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and not injecting()):  # (packed: vmap has no rule for it)
            flat = x.reshape(-1, x.shape[-1])  # (B*T, C)
            return torch.ops.mkldnn._linear_pointwise(flat, w, None, "none", [], "").view(*x.shape[:-1], w.shape[0])
        return self.lm_head(x)

    def forward(
        self,
        idx: torch.Tensor,  # (B, T) token ids
        targets: torch.Tensor | None = None,  # (B, T) next-token ids
        cache: KVCache | None = None,
        last_only: bool = False,  # generation needs only the last position's logits
        return_hidden: bool = False,  # contrastive search compares final hidden states
    ):
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        tok = self.transformer.wte(idx)  # (B, T, C)
        if self.training and self.word_drop > 0:
            tok = tok * word_dropout_mask(idx, self.config.vocab_size, self.word_drop)
        x = self.transformer.drop(tok + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(self.transformer.head_drop(x))  # (B, T, C)
        # generation needs only the last position's logits: skip the (B, T, V) projection
        logits = self._logits(x[:, -1:, :] if last_only else x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        if return_hidden:
            return logits, loss, x
        return logits, loss
