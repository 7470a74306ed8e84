"""Training tokens per second: dropsample's GPT against transformers' GPT2LMHeadModel.

Same shape, batch, context, dropout rate (embd, attn, resid sites: GPT-2's placement),
dtype and optimizer, measured in the same process, interleaved. Also the cost of each
dropout variant relative to no dropout.

    python bench/train_speed.py                       # baby and shakespeare, dropout 0 and 0.2
    python bench/train_speed.py --variants            # + the dropout variants
    python bench/train_speed.py --dtype bfloat16      # both sides under bf16 autocast (train.dtype=bfloat16)
"""

from __future__ import annotations

import argparse

import torch

from common import environment, interleaved, interleaved_runs, median_ratio, ours, peer, shape


def step_fn(model, x, y, hf: bool, dtype: torch.dtype = torch.float32):
    """One optimizer step. Ours: the optimizer `dropsample train` builds (optim.AdamW on CPU);
    the peer: torch's fused AdamW, its fastest (the default of transformers' Trainer). Any dtype
    but float32: the forward under autocast, as `dropsample train` runs train.dtype=bfloat16
    (and transformers' Trainer bf16=True)."""
    from dropsample.device import autocast

    if hf:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    else:
        from dropsample.optim import AdamW

        opt = AdamW([{"params": list(model.parameters())}], lr=1e-4)
    model.train()

    def step():
        with autocast(x.device, dtype):
            if hf:
                loss = model(input_ids=x, labels=x).loss  # HF shifts labels inside
            else:
                loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def batch(preset: str, batch_size: int):
    T = shape(preset)[3]
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 65, (batch_size, T + 1), generator=g)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["baby", "shakespeare"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.2])
    ap.add_argument("--batch", type=int, default=0, help="0: 32 for baby, 8 for larger presets")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: both sides' forward under autocast (on a CPU, fast where it has AVX512-BF16 or AMX)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    print(environment() + f"; {args.dtype}")
    low = dtype != torch.float32  # then also our float32 step beside it: what the lower precision buys
    print("| preset | batch x context | dropout | dropsample ms/iter | transformers ms/iter | dropsample tok/s | "
          "transformers tok/s | speed-up (median of rounds ± half range) | dropout cost (ours, vs rate 0) |"
          + (f" ours {args.dtype} vs ours float32 |" if low else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if low else ""))
    for preset in args.presets:
        B = args.batch or (32 if preset in ("tiny", "baby") else 8)
        x, y = batch(preset, B)
        tokens = B * x.shape[1] * args.steps
        zero = None  # our step at dropout 0, timed again beside each rate: the dropout cost
        for rate in args.rates:
            torch.manual_seed(0)
            a, b = ours(preset, rate), peer(preset, rate)
            sa, sb = step_fn(a, x, y, False, dtype), step_fn(b, x, y, True, dtype)
            fns = {"ours": lambda: [sa() for _ in range(args.steps)], "hf": lambda: [sb() for _ in range(args.steps)]}
            if rate > 0 and zero is not None:
                fns["zero"] = lambda: [zero() for _ in range(args.steps)]
            if low:
                torch.manual_seed(0)
                s32 = step_fn(ours(preset, rate), x, y, False)
                fns["fp32"] = lambda: [s32() for _ in range(args.steps)]
            runs = interleaved_runs(fns, rounds=args.rounds)
            t = {name: min(v) for name, v in runs.items()}
            ratio, spread = median_ratio(runs, "hf", "ours")
            cost = median_ratio(runs, "ours", "zero")[0] if "zero" in runs else 1.0
            if rate == 0:
                zero = sa
            print(f"| {preset} | {B} x {x.shape[1]} | {rate:g} | {t['ours'] / args.steps * 1e3:.1f} | "
                  f"{t['hf'] / args.steps * 1e3:.1f} | {tokens / t['ours']:,.0f} | {tokens / t['hf']:,.0f} | "
                  f"{ratio:.2f}x ± {spread:.2f} | {cost:.2f}x |"
                  + (" {:.2f}x ± {:.2f} |".format(*median_ratio(runs, "fp32", "ours")) if low else ""), flush=True)
    if args.variants:
        print()
        print("| preset | variant (rate 0.2) | time vs no dropout |")
        print("|---|---|---|")
        cases = {
            "none": {},
            "standard (embd, attn, resid)": {"rate": 0.2},
            "standard, locked masks": {"rate": 0.2, "locked": ("embd", "resid_attn", "resid_mlp")},
            "mlp_hidden + head": {"mlp_hidden": 0.2, "head": 0.2},
            "word (embedding) dropout": {"word": 0.2},
            "drop_head": {"drop_head": 0.2},
            "drop_path (by depth)": {"drop_path": 0.2},
        }
        for preset in args.presets:
            B = args.batch or (32 if preset in ("tiny", "baby") else 8)
            x, y = batch(preset, B)
            fns = {}
            for name, kw in cases.items():
                kw = dict(kw)
                rate = kw.pop("rate", 0.0)
                torch.manual_seed(0)
                s = step_fn(ours(preset, rate, **kw), x, y, False, dtype)
                fns[name] = (lambda s=s: [s() for _ in range(args.steps)])
            t = interleaved(fns, rounds=args.rounds)
            for name in cases:
                print(f"| {preset} | {name} | {t[name] / t['none']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
