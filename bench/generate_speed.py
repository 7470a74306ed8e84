"""Generated tokens per second per sampler, dropsample's engine against transformers' generate,
on the same model (weights exported to GPT2LMHeadModel), in the same process; and the time to
compute every diversity metric over 1,000 samples of 256 tokens.

    python bench/generate_speed.py
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from common import VOCAB, environment, interleaved, ours, shape

SAMPLERS = {  # name: (dropsample settings, transformers generate kwargs)
    "greedy": ({"strategy": "greedy"}, {"do_sample": False}),
    "pure": ({"strategy": "sample"}, {"do_sample": True, "top_k": 0}),
    "top_k_40": ({"strategy": "sample", "top_k": 40}, {"do_sample": True, "top_k": 40}),
    "top_p_0.9": ({"strategy": "sample", "top_p": 0.9}, {"do_sample": True, "top_k": 0, "top_p": 0.9}),
    "min_p_0.1": ({"strategy": "sample", "min_p": 0.1}, {"do_sample": True, "top_k": 0, "min_p": 0.1}),
    "typical_0.95": ({"strategy": "sample", "typical_p": 0.95}, {"do_sample": True, "top_k": 0, "typical_p": 0.95}),
    "beam_4": ({"strategy": "beam", "num_beams": 4}, {"do_sample": False, "num_beams": 4, "early_stopping": False}),
}


def export(model, folder: Path):
    from transformers import GPT2LMHeadModel

    from dropsample.export import write_hf_model

    write_hf_model(model, folder)
    return GPT2LMHeadModel.from_pretrained(folder).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="baby")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 10, 64])
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=VOCAB, help="65: Tiny Shakespeare characters; 50257: GPT-2 BPE")
    ap.add_argument("--sharpen", type=float, default=1.0,
                    help="scale the final LayerNorm (so the logits): a random model's next-token distribution is near "
                         "uniform, unlike a trained one's; the median top-p 0.9 nucleus size is printed")
    ap.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    from dropsample.config import sampler_settings
    from dropsample.decoding.search import Request, generate
    from dropsample.schema import Sampler

    hf_logging.set_verbosity_error()
    print(environment())
    torch.manual_seed(0)
    model = ours(args.preset, vocab=args.vocab).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(args.sharpen)  # logits scale with it, inputs do not
        probe = torch.randint(0, args.vocab, (64, args.prompt), generator=torch.Generator().manual_seed(0))
        probs = model(probe)[0][:, -1].softmax(-1).sort(descending=True).values
        nucleus = ((probs.cumsum(-1) - probs) < 0.9).sum(-1).median().item()
    print(f"median top-p 0.9 nucleus after a {args.prompt}-token prompt: {nucleus} of {args.vocab} tokens")
    assert args.prompt + args.new <= shape(args.preset)[3], "transformers cannot run past n_positions"
    with tempfile.TemporaryDirectory() as tmp:
        peer = export(model, Path(tmp))
    print(f"| sampler | batch | dropsample tok/s | transformers tok/s | ratio |  ({args.preset}, vocab {args.vocab}, prompt {args.prompt}, "
          f"{args.new} new tokens)")
    print("|---|---|---|---|---|")
    # the process's first generations run slower (allocator, page faults on fresh weights and
    # caches): warm both sides up at every batch size before any timing
    for B in args.batches:
        warm = torch.zeros((B, args.prompt), dtype=torch.long)
        generate(model, Sampler("greedy", sampler_settings({"strategy": "greedy"})), Request(warm, args.new, [0] * B))
        with torch.no_grad():
            peer.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=args.new, do_sample=False,
                          pad_token_id=0)
    for name in args.samplers:
        settings, hf_kwargs = SAMPLERS[name]
        for B in args.batches:
            prompts = torch.randint(0, args.vocab, (B, args.prompt), generator=torch.Generator().manual_seed(B))
            sampler = Sampler(name, sampler_settings(settings))
            req = Request(prompts, args.new, seeds=list(range(B)))

            def run_ours():
                generate(model, sampler, req)

            def run_hf():
                with torch.no_grad():
                    peer.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new,
                                  min_new_tokens=args.new, pad_token_id=0, **hf_kwargs)

            t = interleaved({"ours": run_ours, "hf": run_hf}, rounds=args.rounds)
            tokens = B * args.new
            print(f"| {name} | {B} | {tokens / t['ours']:,.0f} | {tokens / t['hf']:,.0f} | "
                  f"{t['hf'] / t['ours']:.2f}x |", flush=True)

    from dropsample import metrics

    rng = random.Random(0)
    samples = [[rng.randint(0, 64) for _ in range(256)] for _ in range(1000)]
    tic = time.perf_counter()
    metrics.diversity(samples)
    print(f"\nall diversity metrics (distinct-1..4, self-BLEU-4, seq-rep-4, repetition, zipf) on 1,000 x 256 tokens: "
          f"{time.perf_counter() - tic:.2f} s")


if __name__ == "__main__":
    main()
