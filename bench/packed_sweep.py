"""Packed sweeps: K configurations of one shape trained as one pack (packed.run_jobs) against
the same K trained one after another (the ordinary job path), in this process.

    python bench/packed_sweep.py                                   # tiny and baby, K=8, CPU
    python bench/packed_sweep.py --presets baby --k 16 --iters 200 --device cuda

The K configurations differ in seed and dropout rate (0 to 0.35 at the standard sites), so
most of the pack's members drop. Two measurements:

  step   one optimizer step of the pack (packed.Pack: masks, vmapped forward and backward,
         AdamW) against one step of each of the K configurations alone (training.py's loop
         body on each configuration's own model and AdamW), alternated `--steps` times; the
         fastest of each is kept, so a shared, noisy machine (load that comes and goes within
         seconds) spoils as little as possible
  sweep  (--sweep) the whole sweep, packed.run_jobs against the K jobs one after another
         (building, evaluations, checkpoints, final evaluations), interleaved rounds, best
         round of each: honest on a quiet machine only

bench/gpu.py imports `measure` for its sweep comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402


def sweep_configs(preset: str, k: int, iters: int, device: str, root: Path) -> list:
    from dropsample.config import compose, validate

    cfgs = []
    for i in range(k):
        rate = 0.05 * (i % 8)
        cfgs.append(validate(compose([
            f"model={preset}", f"train.max_iters={iters}", f"train.eval_interval={iters}", "train.eval_iters=5",
            "train.warmup_iters=10", "train.final_eval_tokens=4096", "sample_after_train=false",
            f"train.device={device}", f"dropout.rate={rate}", f"seed={i}", f"runs_root={root}",
        ])))
    return cfgs


def _train_seconds(summaries) -> list[float]:
    return [s.tokens_seen / s.tokens_per_sec for s in summaries if s.tokens_per_sec]


def measure(preset: str = "tiny", k: int = 8, iters: int = 100, device: str = "cpu", rounds: int = 2) -> dict:
    """Best-of-rounds wall and training seconds of a K-configuration sweep, packed and sequential."""
    from dropsample.packed import run_jobs

    best = {"packed_wall": float("inf"), "seq_wall": float("inf"), "packed_train": float("inf"),
            "seq_train": float("inf")}
    for r in range(rounds):
        root = Path(tempfile.mkdtemp(prefix="packed-bench-"))
        try:
            cfgs = sweep_configs(preset, k, iters, device, root)
            with contextlib.redirect_stdout(io.StringIO()):  # the runs' headlines
                tic = time.perf_counter()
                packed = run_jobs([(c, root / f"packed{i}") for i, c in enumerate(cfgs)])
                packed_wall = time.perf_counter() - tic
                tic = time.perf_counter()
                seq = [run_jobs([(c, root / f"seq{i}")])[0] for i, c in enumerate(cfgs)]
                seq_wall = time.perf_counter() - tic
            bad = [s.status for s in packed + seq if s.status != "completed"]
            if bad:
                raise SystemExit(f"runs did not complete: {bad} (see {root})")
            best["packed_wall"] = min(best["packed_wall"], packed_wall)
            best["seq_wall"] = min(best["seq_wall"], seq_wall)
            best["packed_train"] = min(best["packed_train"], max(_train_seconds(packed)))
            best["seq_train"] = min(best["seq_train"], sum(_train_seconds(seq)))
            print(f"  round {r + 1}: packed {packed_wall:.1f} s, sequential {seq_wall:.1f} s", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    best["wall_ratio"] = best["seq_wall"] / best["packed_wall"]
    best["train_ratio"] = best["seq_train"] / best["packed_train"]
    return best


def measure_step(preset: str = "tiny", k: int = 8, device: str = "cpu", steps: int = 20) -> dict:
    """Fastest packed step (K configurations) and fastest K lone steps, alternated `steps` times."""
    import torch

    from dropsample import training
    from dropsample.packed import Member, Pack, _start
    from dropsample.runs import RunFolder

    root = Path(tempfile.mkdtemp(prefix="packed-bench-"))
    try:
        members = []
        for i, cfg in enumerate(sweep_configs(preset, k, 10_000, device, root)):
            m = Member(cfg=cfg, run=RunFolder(root / f"m{i}"))
            m.run.path.mkdir()
            _start(m, device)
            members.append(m)
        pack = Pack(members)
        t = members[0].cfg.train
        rates = [m.tr.base_rates for m in members]
        lrs = [t.lr] * k

        def packed_step():
            xs, ys = zip(*(m.tr.batches.next() for m in members))
            losses = pack.forward_backward(torch.stack(xs), torch.stack(ys), rates, members[0].tr.amp(), 1)
            pack.optimizer_step(lrs)
            losses.cpu()

        def lone_steps():  # training.loop's body, once per configuration
            for m in members:
                tr = m.tr
                tr.model.train()
                x, y = tr.batches.next()
                with tr.amp():
                    _, loss = tr.model(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(tr.model.parameters(), t.grad_clip)
                tr.optimizer.step()
                tr.optimizer.zero_grad(set_to_none=True)
                loss.item()

        best = {"packed": float("inf"), "lone": float("inf")}
        for name, fn in (("packed", packed_step), ("lone", lone_steps)):
            fn()  # warm-up
        for _ in range(steps):
            for name, fn in (("packed", packed_step), ("lone", lone_steps)):
                tic = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - tic)
        for m in members:
            m.tr.loggers.close()
            m.stack.close()
        tokens = k * t.batch_size * members[0].cfg.model.block_size
        return {**best, "ratio": best["lone"] / best["packed"], "packed_tok_s": tokens / best["packed"],
                "lone_tok_s": tokens / best["lone"]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "baby"])
    ap.add_argument("--k", type=int, default=8, help="configurations in the sweep")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="alternations of the step measurement")
    ap.add_argument("--sweep", action="store_true", help="also time whole sweeps (quiet machines)")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    print(environment())
    print(f"{args.k} configurations (seed 0..{args.k - 1}, dropout 0..0.35), batch 32")
    for preset in args.presets:
        m = measure_step(preset, args.k, args.device, args.steps)
        print(f"{preset:>6}  step: {args.k} lone steps {m['lone'] * 1000:.0f} ms ({m['lone_tok_s']:,.0f} tok/s), "
              f"packed step {m['packed'] * 1000:.0f} ms ({m['packed_tok_s']:,.0f} tok/s) -> {m['ratio']:.2f}x "
              f"(fastest of {args.steps} alternations)", flush=True)
    for preset in args.presets if args.sweep else ():
        print(f"{preset} sweep, {args.iters} iterations per configuration, best of {args.rounds} rounds:", flush=True)
        m = measure(preset, args.k, args.iters, args.device, args.rounds)
        print(f"{preset:>6}  wall: sequential {m['seq_wall']:.1f} s, packed {m['packed_wall']:.1f} s "
              f"-> {m['wall_ratio']:.2f}x   training: sequential {m['seq_train']:.1f} s, packed "
              f"{m['packed_train']:.1f} s -> {m['train_ratio']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
