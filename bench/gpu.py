"""The GPU benchmark, one command: training throughput and MFU, sampling against transformers'
generate, and a 16-configuration sweep on one GPU against one run.

    python bench/gpu.py                 # on a CUDA machine: the full benchmark
    python bench/gpu.py --cpu-smoke     # anywhere: the same code on tiny shapes, a few steps
                                        # (what tests/test_bench.py runs, so this file can't rot)

Parts and the targets they are read against (issue 12):
  train   tokens/s at the shakespeare and gpt2 shapes, bf16 autocast, eager and torch.compile;
          MFU = (6 N + 12 L T C) tokens/s / peak bf16 FLOP/s (nanoGPT's estimate, N the
          non-embedding-position parameters). Target: >= 1.42M tokens/s at the shakespeare
          shape on an H200 (nanoGPT's compiled figure), GPT-2 124M MFU >= 45%.
  sample  generated tokens/s at batch 1/10/64 per sampler against transformers' generate on the
          same weights (bench/generate_speed.py's settings). Target: >= 10x at batch 64.
  sweep   16 baby configurations: one after another, packed (bench/packed_sweep.py), against
          one run alone; `train.jobs_per_gpu` 4 and 8 through the parallel launcher.
          Target: the 16-configuration sweep within 3x the wall time of one run.

Prints a markdown table per part. Nothing here is a test assertion: speed is measured, not
asserted; the README reports what was measured and where.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import environment, interleaved, ours, shape  # noqa: E402

# dense bf16 peak FLOP/s by device name fragment (vendor data sheets, SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def flops_per_token(model, T: int) -> float:
    """nanoGPT's estimate: 6 N for the matmuls forward and backward, 12 L T C for attention."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * cfg.n_layer * T * cfg.n_embd


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_part(presets: list[str], batch: int, steps: int, device: torch.device, vocab: int) -> None:
    from dropsample.training import make_optimizer
    from dropsample.schema import TrainConfig

    print("\n## train: tokens/s and MFU\n")
    print("| preset | mode | batch x context | tokens/s | MFU |")
    print("|---|---|---|---|---|")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    peak = peak_flops(device)
    for preset in presets:
        T = shape(preset)[3]
        for compiled in (False, True):
            if compiled and device.type != "cuda" and not os.environ.get("DROPSAMPLE_BENCH_COMPILE_CPU"):
                continue  # inductor on CPU takes minutes to build: opt in with DROPSAMPLE_BENCH_COMPILE_CPU=1
            torch.manual_seed(0)
            model = ours(preset, 0.0, vocab=vocab).to(device).train()
            opt = make_optimizer(model, TrainConfig(), device)
            step_model = torch.compile(model) if compiled else model
            x = torch.randint(0, vocab, (batch, T), device=device)

            def step():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    _, loss = step_model(x, x)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            for _ in range(3 if compiled else 1):  # compile and warm up
                step()
            sync(device)
            tic = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            tps = batch * T * steps / (time.perf_counter() - tic)
            mfu = f"{flops_per_token(model, T) * tps / peak:.1%}" if peak else "n/a (no peak for this device)"
            print(f"| {preset} | {'compiled' if compiled else 'eager'} | {batch} x {T} | {tps:,.0f} | {mfu} |",
                  flush=True)


def sample_part(preset: str, batches: list[int], new: int, device: torch.device, rounds: int) -> None:
    from generate_speed import SAMPLERS, export
    from transformers.utils import logging as hf_logging

    from dropsample.config import sampler_settings
    from dropsample.decoding.search import Request, generate
    from dropsample.schema import Sampler

    hf_logging.set_verbosity_error()
    print(f"\n## sample: generated tokens/s against transformers' generate ({preset}, {new} new tokens)\n")
    print("| sampler | batch | dropsample tok/s | transformers tok/s | ratio |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    model = ours(preset).eval()
    prompt = min(16, shape(preset)[3] - new)
    with tempfile.TemporaryDirectory() as tmp:
        peer = export(model, Path(tmp)).to(device)
    model = model.to(device)
    for name, (settings, hf_kwargs) in SAMPLERS.items():
        for B in batches:
            prompts = torch.randint(0, 65, (B, prompt), generator=torch.Generator().manual_seed(B)).to(device)
            sampler = Sampler(name, sampler_settings(settings))
            req = Request(prompts, new, seeds=list(range(B)))

            def run_ours():
                generate(model, sampler, req)
                sync(device)

            def run_hf():
                with torch.no_grad():
                    peer.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                  min_new_tokens=new, pad_token_id=0, **hf_kwargs)
                sync(device)

            t = interleaved({"ours": run_ours, "hf": run_hf}, rounds=rounds)
            print(f"| {name} | {B} | {B * new / t['ours']:,.0f} | {B * new / t['hf']:,.0f} | "
                  f"{t['hf'] / t['ours']:.2f}x |", flush=True)


def sweep_part(preset: str, k: int, iters: int, device: torch.device, per_gpu: list[int]) -> None:
    """One run alone, k packed, k one after another (in this process); then k through the CLI's
    parallel launcher with train.jobs_per_gpu = each of per_gpu (CUDA only: slots are per GPU)."""
    from packed_sweep import measure

    print(f"\n## sweep: {k} {preset} configurations, {iters} steps each\n")
    one = measure(preset, k=1, iters=iters, device=device.type, rounds=1)
    many = measure(preset, k=k, iters=iters, device=device.type, rounds=1)
    print("| how | wall s | x one run |")
    print("|---|---|---|")
    print(f"| one run | {one['seq_wall']:.1f} | 1.00x |")
    print(f"| {k} one after another | {many['seq_wall']:.1f} | {many['seq_wall'] / one['seq_wall']:.2f}x |")
    print(f"| {k} packed | {many['packed_wall']:.1f} | {many['packed_wall'] / one['seq_wall']:.2f}x |")
    if device.type != "cuda":
        print("| jobs_per_gpu | - | CUDA only |")
        return
    rates = ",".join(f"{0.02 * i:.2f}" for i in range(k))
    for n in per_gpu:
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dropsample", "train", "-m", f"model={preset}",
                            f"train.max_iters={iters}", "sample_after_train=false", f"dropout.rate={rates}",
                            f"train.jobs_per_gpu={n}", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={n}",
                            f"runs_root={tmp}"], check=True, cwd=tmp, capture_output=True)
            wall = time.perf_counter() - tic
        print(f"| {k} with jobs_per_gpu={n} | {wall:.1f} | {wall / one['seq_wall']:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes and few steps, on the CPU")
    ap.add_argument("--parts", nargs="+", default=["train", "sample", "sweep"], choices=["train", "sample", "sweep"])
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --cpu-smoke for the reduced CPU form")
    device = torch.device("cuda" if cuda else "cpu")
    print(environment())
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "train" in args.parts:
        if cuda:
            train_part(["shakespeare", "gpt2"], batch=16, steps=20, device=device, vocab=50304)
        else:
            train_part(["tiny"], batch=4, steps=2, device=device, vocab=65)
    if "sample" in args.parts:
        if cuda:
            sample_part("baby", [1, 10, 64], new=48, device=device, rounds=3)
        else:
            sample_part("tiny", [1, 2], new=8, device=device, rounds=1)
    if "sweep" in args.parts:
        if cuda:
            sweep_part("baby", k=16, iters=500, device=device, per_gpu=[4, 8])
        else:
            sweep_part("tiny", k=2, iters=2, device=device, per_gpu=[])


if __name__ == "__main__":
    main()
