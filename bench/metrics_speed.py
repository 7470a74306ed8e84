"""Time every sample metric, with its bootstrap interval, on 1,000 samples x 256 tokens.

    python bench/metrics_speed.py [--samples 1000] [--replicates 1000] [--judge RUN_DIR]

The texts are 1,000 windows of Tiny Shakespeare of 1,100 characters (about 200 words, as
256 GPT-2 tokens of English text are), each with 256 token ids (its characters), and one
reference set like them. Every part of `metrics.suite.measure` is timed alone with the same
replicates, then the whole call. MAUVE runs on 128-dimensional features (a baby-preset
judge's width); the judge's own scoring (a forward pass over every text) is timed separately
because it is model time, not metric time. Target: everything but judge scoring < 30 s on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from dropsample.metrics import literature as lit
from dropsample.metrics import suite
from dropsample.metrics.bootstrap import Resampler
from dropsample.metrics.ngrams import Corpus, word_ids


def corpus_texts(n: int, chars: int, seed: int) -> list[str]:
    folder = Path(os.environ.get("DROPSAMPLE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    text = (folder / "tinyshakespeare" / "input.txt").read_text()
    rng = np.random.default_rng(seed)
    return [text[s : s + chars] for s in rng.integers(0, len(text) - chars, n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--chars", type=int, default=1100)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--judge", default=None, help="a run folder to time judge scoring with (default: a random "
                                                  "baby-preset model)")
    args = ap.parse_args()

    texts = corpus_texts(args.samples, args.chars, 0)
    refs = corpus_texts(args.samples, args.chars, 1)
    ids = [[ord(c) for c in t[: args.tokens]] for t in texts]
    rng = np.random.default_rng(0)
    own = np.column_stack([rng.uniform(300, 600, args.samples), rng.uniform(300, 600, args.samples),
                           np.full(args.samples, float(args.tokens))])
    feats_q, feats_p = rng.normal(size=(args.samples, 128)), rng.normal(size=(args.samples, 128)) + 0.2
    R = Resampler(args.samples, args.replicates, 0)
    Wp = np.vstack([lit.ones(args.samples), R.W])  # per-sample statistics: every replicate
    Wc = np.vstack([lit.ones(args.samples), R.W[: suite.CORPUS_REPLICATES]])  # corpus statistics

    parts: dict[str, list[float]] = {}  # name -> [wall seconds, CPU seconds of this process]

    def timed(name, f):
        tic, cpu = time.perf_counter(), time.process_time()
        out = f()
        acc = parts.setdefault(name, [0.0, 0.0])
        acc[0] += time.perf_counter() - tic
        acc[1] += time.process_time() - cpu
        return out

    words = timed("words: split and map to ids", lambda: word_ids(texts))
    corpora = {}
    for unit, seqs in (("word", words), ("token", ids)):
        c = corpora[unit] = timed("n-gram ids and per-sample counts", lambda: Corpus(seqs))
        timed("n-gram ids and per-sample counts", lambda: [c.stats(n) for n in (1, 2, 3, 4)])
        timed(f"distinct-1/2/4 ({suite.CORPUS_REPLICATES} replicates)", lambda: [lit.distinct(c, n, Wc)
                                                                            for n in (1, 2, 4)])
        timed(f"rep-2/3/4, diversity, seq-rep-4 ({args.replicates} replicates)",
              lambda: [lit.rep(c, n, Wp) for n in (2, 3, 4)] + [lit.simctg_diversity(c, Wp), lit.seq_rep(c, 4, Wp)])
        flags = timed("Holtzman repetition", lambda: np.array([lit.ends_in_repetition(s) for s in seqs]))
        timed("Holtzman repetition", lambda: lit.repetition(flags, Wp))
        timed(f"Zipf ({suite.CORPUS_REPLICATES} replicates)", lambda: lit.zipf(c, Wc))
        bleu = timed("self-BLEU-4 (exact, all pairs)", lambda: lit.self_bleu_per_sample(c, 4))
        timed("self-BLEU-4 (exact, all pairs)", lambda: Wp @ bleu)
    timed(f"gzip ratio (1 + {suite.COMPRESSION_REPLICATES} replicates)",
          lambda: [lit.compression_ratio(texts)] + [lit.compression_ratio([texts[i] for i in row])
                                                    for row in R.idx[: suite.COMPRESSION_REPLICATES]])
    timed("gen-ppl, entropy, length", lambda: (suite._ppl(own[:, [0, 2]])(Wp), Wp @ own[:, 1]))
    timed("MAUVE: import mauve-text (sklearn, faiss)", lambda: __import__("mauve"))
    from dropsample.metrics import mauve

    m = timed("MAUVE: PCA, k-means (5 seeds x 500 iterations), curve", lambda: mauve.compute(feats_p, feats_q))

    width = max(map(len, parts))
    print(f"{args.samples:,} samples x {args.tokens} tokens ({args.chars} characters), "
          f"{args.replicates} bootstrap replicates; MAUVE {m['mauve']:.3f} with {m['num_buckets']} buckets; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  {'part'.ljust(width)}  {'wall':>7}  {'CPU':>7}")
    for name, (wall, cpu) in parts.items():
        print(f"  {name.ljust(width)}  {wall:6.2f}s  {cpu:6.2f}s")
    print(f"  {'sum of parts'.ljust(width)}  {sum(p[0] for p in parts.values()):6.2f}s  "
          f"{sum(p[1] for p in parts.values()):6.2f}s")

    ts = suite.TextSet(texts, ids, own=own, judged=own[:, [0, 2]], features=feats_q)
    tic, cpu = time.perf_counter(), time.process_time()
    suite.measure(ts, R, ref_features=feats_p)
    print(f"  {'suite.measure, whole (judge scores given)'.ljust(width)}  {time.perf_counter() - tic:6.2f}s  "
          f"{time.process_time() - cpu:6.2f}s")

    # judge scoring: model time, reported apart
    from dropsample import judge as judge_mod
    from dropsample.config import model_preset
    from dropsample.model import GPT, GPTConfig

    if args.judge:
        j = judge_mod.load(args.judge)
        what = f"judge run {args.judge}"
    else:
        # the baby preset's layers with a context that holds a whole text (prompt + 1,100 characters)
        shape = model_preset("baby")
        block = 2048
        model = GPT(GPTConfig(vocab_size=128, block_size=block, n_layer=shape.n_layer,
                              n_head=shape.n_head, n_embd=shape.n_embd)).eval()
        j = judge_mod.Judge("run", {}, lambda t: [min(ord(c), 127) for c in t], judge_mod.gpt_forward(model),
                            block, 128, shape.n_embd)
        what = f"a baby-shaped judge ({shape.n_layer} layers x {shape.n_embd}, context {block}, characters)"
    prompts = [r[:128] for r in refs]
    tic, cpu = time.perf_counter(), time.process_time()
    j.score_texts(prompts, texts)
    print(f"judge scoring (gen-ppl and MAUVE features) of {args.samples:,} prompt + completion texts with {what}: "
          f"{time.perf_counter() - tic:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")


if __name__ == "__main__":
    main()
