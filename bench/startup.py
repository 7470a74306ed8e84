"""Start-up cost: where the time from launching `dropsample train` to its first optimizer step goes.

    python bench/startup.py                      # the default command (baby preset), 5 runs, token cache warm
    python bench/startup.py --cold               # each run tokenizes afresh (empty token cache)
    python bench/startup.py --repeats 3 -- model=tiny dropout.rate=0   # any overrides after --
    python bench/startup.py --src /tmp/old/src   # another version's sources (git archive COMMIT src conf)

Each run is the real CLI (`python -m dropsample train ... hydra.run.dir=<tmp>`) in a fresh
process. That process is this file in `--child` mode: it stamps the wall clock at the
boundaries of the phases below by wrapping dropsample's functions as their modules load, adds
up the time spent importing modules per phase (outermost imports only, like `-X importtime`)
and in Python's garbage collector, counts Hydra's config compositions, and exits right after
the first optimizer step. The token cache is the benchmark's own (DROPSAMPLE_CACHE_DIR in a
temporary folder; an unmeasured warm-up run fills it; --cold gives every run an empty one), so
the user's cache is neither read nor written.
So is the bytecode cache (PYTHONPYCACHEPREFIX): modules are compiled once, as for an installed
command, even where PYTHONDONTWRITEBYTECODE is set (--no-bytecode-cache keeps that setting).

Phases (each ends where the next starts):
    interpreter      launch -> this file's first line (Python's own start-up)
    cli              -> preflight starts: typer, dropsample.cli, torch (distributed.py imports it)
    preflight        the CLI composes and checks every job's config before Hydra makes a folder
    hydra.main       -> the job function runs: Hydra composes again, makes the run folder, sets up logging
    job set-up       -> training.build starts: importing the training path, validating the config
    data             data.prepare: token cache read (or the corpus read and tokenized)
    model            GPT built and moved to the device (and the config's checks against the data)
    build rest       optimizer, batches, token byte lengths
    run set-up       -> the step-0 evaluation starts: loggers, tokenizer.json, summary.json
    step-0 eval      estimate_loss on train and val (eval_iters batches each)
    checkpoint       the step-0 checkpoints (last, and best: a copy)
    eval rest        RNG states, metrics row, log line
    first step       -> the first optimizer step has finished (forward, backward, AdamW)

Timings print as a table (minimum over the runs per phase, and the fastest run whole); they
are measurements, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("interpreter", "cli", "preflight", "hydra.main", "job set-up", "data", "model", "build rest", "run set-up",
          "step-0 eval", "checkpoint", "eval rest", "first step")


# ---------------------------------------------------------------------------
# The child: the real CLI with stamps


def child(stamp_file: str, argv: list[str]) -> None:
    """Run `dropsample train ARGV`, stamping phase boundaries; exit after the first optimizer step."""
    import functools
    import gc
    import importlib.abc
    import importlib.machinery as machinery
    import runpy

    started = time.time()
    marks: list[tuple[str, float]] = [("interpreter", started)]  # (phase that starts here, time)
    imports: dict[str, float] = {}  # phase -> seconds in outermost imports
    slowest: dict[str, list] = {}  # phase -> [(seconds, module)] of its outermost imports
    compositions = []  # seconds of each Hydra config composition
    collecting: dict[str, float] = {}  # phase -> seconds in Python's cyclic garbage collector
    gc_started = [0.0]
    depth = [0]
    FILE_LOADERS = (machinery.SourceFileLoader, machinery.SourcelessFileLoader, machinery.ExtensionFileLoader)

    def phase() -> str:
        return marks[-1][0]

    def mark(name: str) -> None:
        marks.append((name, time.time()))

    def wrap(owner, attr: str, before: str | None = None, after: str | None = None, once: bool = True):
        original = getattr(owner, attr)
        done = [False]

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if once and done[0]:
                return original(*args, **kwargs)
            done[0] = True
            if before:
                mark(before)
            result = original(*args, **kwargs)
            if after:
                mark(after)
            return result

        setattr(owner, attr, wrapper)

    def finish(*_args, **_kwargs) -> None:
        mark("end")
        Path(stamp_file).write_text(json.dumps({"marks": marks, "imports": imports, "compositions": compositions,
                                                "gc": collecting,
                                                "slowest": {p: sorted(v, reverse=True)[:4]
                                                            for p, v in slowest.items()}}))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the measurement ends at the first step: skip the rest of the run

    def timed_composition(original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                compositions.append(time.perf_counter() - tic)
        return wrapper

    def patch(name: str, module) -> None:
        if name == "dropsample.cli":
            wrap(module, "preflight", before="preflight", after="hydra.main")
            wrap(module, "_hydra_task", before="job set-up")
        elif name == "dropsample.data":
            wrap(module, "prepare", before="data", after="model")
        elif name == "dropsample.training":
            wrap(module, "make_optimizer", before="build rest")
            wrap(module, "build", after="run set-up")
            wrap(module, "estimate_loss", before="step-0 eval", after="eval rest")
            wrap(module, "evaluate", after="first step")
            module.Progress.update = finish  # called right after the first optimizer step
        elif name == "dropsample.checkpoint":
            wrap(module, "save", before="checkpoint")
            wrap(module, "copy", after="eval rest")
        elif name == "hydra._internal.config_loader_impl":
            cls = module.ConfigLoaderImpl
            cls.load_configuration = timed_composition(cls.load_configuration)

    class Stamper(importlib.abc.MetaPathFinder):
        """Times each module's execution and patches the modules above as they load."""

        def find_spec(self, name, path=None, target=None):
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            if type(loader) not in FILE_LOADERS or getattr(loader, "_stamped", False):
                return spec  # builtin and frozen modules (their loader is a shared class): not timed
            execute = loader.exec_module

            def exec_module(module):
                depth[0] += 1
                tic = time.perf_counter()
                try:
                    execute(module)
                finally:
                    depth[0] -= 1
                    if depth[0] == 0:
                        spent = time.perf_counter() - tic
                        imports[phase()] = imports.get(phase(), 0.0) + spent
                        slowest.setdefault(phase(), []).append((spent, name))
                patch(name, module)

            loader.exec_module, loader._stamped = exec_module, True
            return spec

    def on_gc(stage: str, _info: dict) -> None:
        if stage == "start":
            gc_started[0] = time.perf_counter()
        else:
            collecting[phase()] = collecting.get(phase(), 0.0) + time.perf_counter() - gc_started[0]

    gc.callbacks.append(on_gc)
    sys.meta_path.insert(0, Stamper())
    mark("cli")
    sys.argv = ["dropsample", "train", *argv]
    runpy.run_module("dropsample", run_name="__main__", alter_sys=True)
    raise SystemExit("the run ended before its first optimizer step; see the output above")


# ---------------------------------------------------------------------------
# The parent: repeated runs, the table


def one_run(overrides: list[str], env: dict, work: Path, index: int) -> dict:
    stamps = work / f"stamps{index}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(stamps), "--",
           *overrides, f"hydra.run.dir={work / f'run{index}'}"]
    launched = time.time()
    result = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if result.returncode != 0 or not stamps.exists():
        raise SystemExit(f"run {index} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    data = json.loads(stamps.read_text())
    marks = [("interpreter", launched)] + [tuple(m) for m in data["marks"][1:]]
    seconds: dict[str, float] = {}
    for (name, start), (_, end) in zip(marks, marks[1:]):
        seconds[name] = seconds.get(name, 0.0) + end - start
    seconds["interpreter"] = data["marks"][0][1] - launched
    return {"seconds": seconds, "total": marks[-1][1] - launched, "imports": data["imports"],
            "compositions": data["compositions"], "slowest": data["slowest"], "gc": data["gc"],
            "cache": "hit" if "from cache" in result.stdout + result.stderr else "miss"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured runs (the minimum is reported)")
    parser.add_argument("--cold", action="store_true", help="an empty token cache in every run (tokenize afresh)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (OMP_NUM_THREADS); default: torch's")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="keep PYTHONDONTWRITEBYTECODE if set: every module compiled at every start")
    parser.add_argument("--src", type=Path, default=REPO / "src",
                        help="the dropsample sources to start (default: this checkout's src/); e.g. an older "
                             "commit's, from `git archive COMMIT src conf | tar -x -C DIR`, for before/after")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after --, e.g. -- model=tiny")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.overrides)
        return
    import torch

    with tempfile.TemporaryDirectory(prefix="dropsample-startup-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "DROPSAMPLE_CACHE_DIR": str(work / "cache")}
        if not args.no_bytecode_cache:
            # as an installed command starts: modules compiled once (by the warm-up run), then read
            # from their cached bytecode, here kept out of the repository
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.src.resolve()), env.get("PYTHONPATH")]))
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        runs = []
        for index in range(args.repeats + 1):
            if args.cold:
                env["DROPSAMPLE_CACHE_DIR"] = str(work / f"cache{index}")
            run = one_run(args.overrides, env, work, index)
            if index > 0:  # the first run fills the caches (tokens, bytecode): not measured
                runs.append(run)
    fastest = min(runs, key=lambda r: r["total"])
    print(f"# start-up of `dropsample train {' '.join(args.overrides)}` to its first optimizer step ({args.src})")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads or torch.get_num_threads()} threads; "
          f"token cache {fastest['cache']}; bytecode cache "
          f"{'off' if args.no_bytecode_cache and os.environ.get('PYTHONDONTWRITEBYTECODE') else 'on'}; "
          f"{len(runs)} runs; Hydra compositions per run: "
          f"{len(fastest['compositions'])} ({', '.join(f'{s:.2f}' for s in fastest['compositions'])} s)")
    print()
    print("| phase | min s | fastest run s | of which imports s | of which GC s | slowest imports (fastest run) |")
    print("|---|---|---|---|---|---|")
    for name in PHASES:
        if not any(name in r["seconds"] for r in runs):
            continue
        best = min(r["seconds"].get(name, 0.0) for r in runs)
        here = fastest["seconds"].get(name, 0.0)
        imp = fastest["imports"].get(name, 0.0)
        top = ", ".join(f"{mod} {s:.2f}" for s, mod in fastest["slowest"].get(name, []) if s >= 0.01)
        print(f"| {name} | {best:.3f} | {here:.3f} | {imp:.3f} | {fastest['gc'].get(name, 0.0):.3f} | {top} |")
    totals = sorted(r["total"] for r in runs)
    print(f"| **total** | | **{totals[0]:.3f}** | {sum(fastest['imports'].values()):.3f} | "
          f"{sum(fastest['gc'].values()):.3f} | runs: {', '.join(f'{t:.2f}' for t in totals)} |")


if __name__ == "__main__":
    main()
