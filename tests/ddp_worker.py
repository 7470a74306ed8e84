"""What tests/test_ddp.py runs on each of 2 gloo processes under torchrun (not a test module).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py OUT_DIR OVERRIDES_JSON

1. an uninterrupted run into OUT_DIR/full, then the same run into OUT_DIR/cut stopped by a
   KeyboardInterrupt on every rank at the same batch, and resumed;
2. each rank's output on one shared input in train mode (dropout on) and in eval mode, written
   with the statuses of 1. to OUT_DIR/masks.json by rank 0;
3. last, as it ends the process group: task.run_task (the CLI's failure policy) into OUT_DIR/run
   while rank 1 raises a bug mid-training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dropsample import distributed, task, training
from dropsample.config import compose, validate

INTERRUPT_AT = 20  # the 20th Batches.next call (eval batches count): mid-way through the run


def patch_next(fail_at: int, exc: BaseException) -> None:
    real_next, calls = training.Batches.next, [0]

    def patched(self):
        calls[0] += 1
        if calls[0] == fail_at:
            training.Batches.next = real_next
            raise exc
        return real_next(self)

    training.Batches.next = patched


def main(out: Path, overrides: list[str]) -> None:
    raw = compose(overrides)
    cfg = validate(raw)
    with distributed.session() as launch:
        assert launch.world_size == 2 and distributed.active()
        for name in ("full", "cut", "run"):  # what Hydra creates before a job starts
            (out / name).mkdir(parents=True, exist_ok=True)
        full = training.train(cfg, out / "full")
        patch_next(INTERRUPT_AT, KeyboardInterrupt())
        cut = training.train(cfg, out / "cut")
        resumed = training.train(cfg, out / "cut", resume=True)
        statuses = distributed.gather([full.status, cut.status, resumed.status])
        # masks: same weights, same input, train mode (dropout on) on every rank
        tr = training.build(cfg, out / "masks")
        x = torch.arange(cfg.model.block_size).remainder(tr.data.vocab_size)[None, :].repeat(2, 1)  # (2, T)
        tr.model.train()
        with torch.no_grad():
            on = tr.model(x)[0].flatten()
            tr.model.eval()
            off = tr.model(x)[0].flatten()
        outputs = distributed.gather({"train": on.tolist()[:512], "eval": off.tolist()[:512]})
        if distributed.is_main():
            (out / "masks.json").write_text(json.dumps({"statuses": statuses, "outputs": outputs}))
        if launch.rank == 1:
            patch_next(12, RuntimeError("simulated bug on rank 1"))
        task.run_task(raw, out / "run", sweep_job=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
