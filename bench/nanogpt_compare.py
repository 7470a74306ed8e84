"""dropsample's `train` against nanoGPT's own train.py, whole processes, the same settings.

    python bench/nanogpt_compare.py --nanogpt ~/src/nanoGPT            # dropout 0 and 0.2, 3 rounds
    python bench/nanogpt_compare.py --nanogpt ~/src/nanoGPT --rates 0 --rounds 5

nanoGPT is not a dependency: point --nanogpt at a checkout of github.com/karpathy/nanoGPT
whose character-level Tiny Shakespeare is prepared (`python data/shakespeare_char/prepare.py`
there writes data/shakespeare_char/train.bin and val.bin; it reads input.txt from that folder
when present, so copying a local Tiny Shakespeare there avoids the download).

Settings are those of nanoGPT's README "on a CPU" command, which issue 12 measured:
batch 12, context 64, 4 layers x 4 heads x 128, the shakespeare_char optimiser settings
(lr 1e-3 -> 1e-4 cosine, 100 warm-up steps, beta2 0.99, weight decay 0.1, clipping at 1.0),
fp32, evaluation every 250 steps on 20 batches per split, dropout on the embeddings,
attention probabilities and both residual branches at each --rates value. nanoGPT runs with
--compile=False (torch.compile is a separate question, see README) and --bias=True (GPT-2's
biases, as dropsample's model has). One model difference stays: nanoGPT's MLP uses the exact
(erf) GELU, dropsample GPT-2's tanh approximation, which on this project's CPUs cost the same
per training step.

Two figures per side, each a fresh process, the sides alternating so drift hits both:
    per iteration   (wall of a 700-step run - wall of a 200-step run) / 500, both runs
                    evaluating only at their start and end: start-up, evaluations and
                    writing results cancel, what is left is the training step as the
                    loop runs it (batch sampling, forward, backward, clipping, AdamW, logging)
    whole process   500 steps with evaluations every 250 (0, 250, 500), the issue's figure:
                    dropsample also writes its run folder and evaluates the best checkpoint
                    once more on 15,360 tokens per split with standard errors (the size of
                    one in-training evaluation); sampling after training is off
Both read pre-tokenised data (dropsample's token cache is filled by an unmeasured first run
in a temporary cache folder). Measurements, never assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, CONTEXT, LAYERS, HEADS, WIDTH, EVAL_ITERS = 12, 64, 4, 4, 128, 20
NEVER = 10**6  # an evaluation interval longer than any run here


def nanogpt_cmd(rate: float, iters: int, eval_interval: int, out_dir: Path) -> list[str]:
    return [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            f"--eval_iters={EVAL_ITERS}", "--log_interval=50", f"--block_size={CONTEXT}", f"--batch_size={BATCH}",
            f"--n_layer={LAYERS}", f"--n_head={HEADS}", f"--n_embd={WIDTH}", f"--max_iters={iters}",
            f"--lr_decay_iters={iters}", f"--dropout={rate}", "--bias=True", f"--eval_interval={eval_interval}",
            f"--out_dir={out_dir}"]


def ours_cmd(rate: float, iters: int, eval_interval: int, runs: Path) -> list[str]:
    # nanoGPT takes iterations 0 .. max_iters (max_iters + 1 optimizer steps); one step more here
    # would be 0.2% of a 500-step run, left as it is. (Runs of 100 steps or fewer fail in
    # nanoGPT: its cosine schedule divides by max_iters - 100 warm-up steps.)
    return [sys.executable, "-m", "dropsample", "train", "model=baby", f"train.batch_size={BATCH}",
            f"train.max_iters={iters}", f"train.eval_interval={eval_interval}", f"train.eval_iters={EVAL_ITERS}",
            f"train.final_eval_tokens={BATCH * CONTEXT * EVAL_ITERS}", "train.device=cpu", "train.dtype=float32",
            "dropout=standard", f"dropout.rate={rate}", "sample_after_train=false", f"runs_root={runs}"]


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    tic = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[1:4])} ... failed (exit {done.returncode}): "
                 f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    ap.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.2])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    nano = args.nanogpt.expanduser().resolve()
    if not (nano / "train.py").is_file() or not (nano / "config" / "train_shakespeare_char.py").is_file():
        sys.exit(f"error: {nano} is not a nanoGPT checkout (no train.py, config/train_shakespeare_char.py); "
                 "clone github.com/karpathy/nanoGPT and pass its folder")
    if not (nano / "data" / "shakespeare_char" / "train.bin").is_file():
        sys.exit(f"error: nanoGPT's Tiny Shakespeare is not prepared in {nano}; "
                 f"run: cd {nano} && python data/shakespeare_char/prepare.py")

    from common import environment, median_ratio  # (imports torch: after the checks above)

    print(environment() + f"; batch {BATCH} x context {CONTEXT}, {LAYERS} x {HEADS} x {WIDTH}, fp32, "
          f"{args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "DROPSAMPLE_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        ours_dir = tmp / "ours"
        ours_dir.mkdir()
        timed(ours_cmd(0.0, 1, NEVER, tmp / "warm"), ours_dir, env)  # fills the token cache
        rows = []
        for rate in args.rates:
            walls = {key: [] for key in ("nano200", "nano700", "ours200", "ours700", "nano500", "ours500")}
            for r in range(args.rounds):
                for iters, interval in ((200, NEVER), (700, NEVER), (500, 250)):
                    key = str(iters)
                    walls["nano" + key].append(timed(nanogpt_cmd(rate, iters, interval, tmp / f"nano{r}"), nano, env))
                    walls["ours" + key].append(timed(ours_cmd(rate, iters, interval, tmp / "runs"), ours_dir, env))
            per_iter = {side: [(b - a) / 500 * 1e3 for a, b in zip(walls[side + "200"], walls[side + "700"])]
                        for side in ("nano", "ours")}
            per_step, per_step_spread = median_ratio(per_iter, "nano", "ours")
            whole, whole_spread = median_ratio(walls, "nano500", "ours500")
            rows.append(f"| {rate:g} | {statistics.median(per_iter['nano']):.1f} | {statistics.median(per_iter['ours']):.1f} "
                        f"| {per_step:.2f}x ± {per_step_spread:.2f} "
                        f"| {statistics.median(walls['nano500']):.1f} | {statistics.median(walls['ours500']):.1f} "
                        f"| {whole:.2f}x ± {whole_spread:.2f} |")
            print(f"rate {rate:g}: " + "; ".join(f"{k} " + " ".join(f"{v:.2f}" for v in vs) for k, vs in walls.items()),
                  flush=True)
    print("| dropout | nanoGPT ms/iter | dropsample ms/iter | speed-up | nanoGPT 500 steps (s) | "
          "dropsample 500 steps (s) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("(medians over rounds; speed-up = nanoGPT / dropsample per round, median ± half the range)")


if __name__ == "__main__":
    main()
