"""One run on several processes (DistributedDataParallel): who this process is, the process
group's start and end, and the few collective operations training and evaluation need.

    torchrun --nproc_per_node=N -m dropsample train ...          RANK, WORLD_SIZE, LOCAL_RANK, ... set by torchrun
    dropsample train -m hydra/launcher=slurm hydra.launcher.tasks_per_node=N ...
                                                                 SLURM tasks; submitit's TorchDistributedEnvironment
                                                                 exports the same variables inside each task

`launch()` reads that environment (no side effects but submitit's export); `session()` starts
the process group once per process and ends it: gloo for CPU tensors and, where CUDA exists,
NCCL for CUDA tensors (one group, backend "cpu:gloo,cuda:nccl"), so the reductions below work
on CPU numbers whatever device trains. Without a multi-process launch every helper is a no-op
and a run is exactly the single-process run it always was.

What each rank does differently (training.py and evaluation.py use these):
    batches      every rank draws the same batch_size * world_size windows from the run seed's
                 generator and keeps its own slice of batch_size: the union over ranks is the batch
                 one process with batch_size * world_size draws (same data, same gradient mean)
    dropout      rank 0 keeps the run seed's torch stream; rank r > 0 is reseeded with
                 rank_seed(seed, r) after model init, so masks differ between ranks
    files        only rank 0 (`is_main()`) writes the run folder, logs, checkpoints and samples
"""

from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from dropsample.errors import UserError

log = logging.getLogger("dropsample")


@dataclass(frozen=True)
class Launch:
    """This process's place in a multi-process launch (world_size 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str | None = None  # "torchrun" or "submitit"; None without a multi-process launcher

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Launch()
_current: Launch = SINGLE  # set by session() while a process group is up


def _int(environ, key: str, default: int) -> int:
    try:
        return int(environ.get(key, default))
    except ValueError:
        raise UserError(f"environment variable {key}={environ.get(key)!r} is not an integer; "
                        "launch through torchrun or the slurm launcher, which set it") from None


# submitit executors and the variable holding a job's number of tasks
SUBMITIT_TASKS = {"slurm": "SLURM_NTASKS", "local": "SUBMITIT_LOCAL_NTASKS"}


def _submitit_tasks(env) -> int | None:
    """Tasks of the submitit job this process belongs to (None outside submitit or once exported)."""
    key = SUBMITIT_TASKS.get(env.get("SUBMITIT_EXECUTOR", ""))
    return _int(env, key, 1) if key is not None and "RANK" not in env else None


def launch(environ=None) -> Launch:
    """What the launcher told this process: torchrun's variables, else a submitit job with
    several tasks (SLURM, or submitit's local executor; its TorchDistributedEnvironment
    exports torchrun's variables), else single."""
    env = os.environ if environ is None else environ
    if (_submitit_tasks(env) or 1) > 1:
        if env is not os.environ:
            raise UserError("a submitit job's distributed environment can only be read from os.environ")
        from submitit.helpers import TorchDistributedEnvironment

        # one GPU visible per task (CUDA_VISIBLE_DEVICES = its local rank): each task then trains on cuda:0
        TorchDistributedEnvironment().export(set_cuda_visible_devices=True)
        return Launch(_int(env, "RANK", 0), _int(env, "WORLD_SIZE", 1), _int(env, "LOCAL_RANK", 0),
                      _int(env, "LOCAL_WORLD_SIZE", 1), "submitit")
    if "RANK" in env or "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE", 1)
        return Launch(_int(env, "RANK", 0), world, _int(env, "LOCAL_RANK", 0),
                      _int(env, "LOCAL_WORLD_SIZE", world), "torchrun")
    return SINGLE


def info() -> Launch:
    """This process's rank and world while a session is up; SINGLE otherwise."""
    return _current


def is_main() -> bool:
    """The one process that writes the run folder (rank 0; always true without DDP)."""
    return _current.rank == 0


def active() -> bool:
    return _current.distributed and torch.distributed.is_available() and torch.distributed.is_initialized()


def check(ddp, device: str, *, sweep: bool = False, planned: int | None = None, environ=None) -> None:
    """Bad launches, as one line each, before anything is written or trained.

    `ddp` is train.ddp: null (DDP whenever launched on several processes), true (require such a
    launch) or false (refuse one). `planned`: the processes a launcher will start for each job
    (hydra/launcher=slurm: nodes x tasks_per_node), checked on the submitting machine; otherwise
    this process's environment says how many were started."""
    env = os.environ if environ is None else environ
    if planned is not None:
        launched, world = planned > 1, planned
    elif _submitit_tasks(env) is not None:
        launched, world = _submitit_tasks(env) > 1, _submitit_tasks(env)
    else:
        launched, world = "RANK" in env or "WORLD_SIZE" in env, _int(env, "WORLD_SIZE", 1)
    if ddp is True and not launched:
        raise UserError("train.ddp=true, but this process was not started by torchrun (no RANK/WORLD_SIZE in "
                        "its environment); run: torchrun --nproc_per_node=N -m dropsample train ..., or on SLURM "
                        "hydra/launcher=slurm hydra.launcher.tasks_per_node=N")
    if ddp is False and world > 1:
        raise UserError(f"train.ddp=false, but the launcher starts {world} processes; launch one process "
                        "(plain `dropsample train`) or drop train.ddp=false")
    if planned is None and world > 1 and "RANK" in env and "MASTER_ADDR" not in env:
        raise UserError("RANK and WORLD_SIZE are set but MASTER_ADDR is not; launch through torchrun, which sets "
                        "all of them")
    if planned is None and world > 1 and sweep and env.get("SUBMITIT_EXECUTOR") not in SUBMITIT_TASKS:
        raise UserError("a sweep (-m) under torchrun is not supported; run one torchrun per configuration, or "
                        "sweep on SLURM with hydra/launcher=slurm hydra.launcher.tasks_per_node=N")
    if world > 1 and (device == "mps" or device.startswith("cuda:")):
        raise UserError(f"train.device={device} with {world} processes: DDP gives each process its own GPU "
                        "(cuda:LOCAL_RANK); use train.device=auto, cuda or cpu")


def local_device(name: str, launch_: Launch, cuda_available: bool | None = None,
                 cuda_count: int | None = None, environ=None) -> str:
    """The device a DDP process trains on: cuda:LOCAL_RANK for auto or cuda when CUDA exists,
    cpu otherwise. One process per GPU: with fewer GPUs than processes on a node it refuses,
    unless the launcher made exactly one GPU visible to each process (then cuda:0)."""
    env = os.environ if environ is None else environ
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "cpu" or (name == "auto" and not cuda_available):
        return "cpu"
    if not cuda_available:
        raise UserError(f"train.device={name}, but CUDA is not available here; use train.device=cpu (gloo)")
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if count >= launch_.local_world_size:
        return f"cuda:{launch_.local_rank}"
    if count == 1 and env.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "all") \
            and "," not in env.get("CUDA_VISIBLE_DEVICES", ""):
        return "cuda:0"
    raise UserError(f"{launch_.local_world_size} processes on this node but {count} GPU(s) visible: DDP needs one "
                    f"GPU per process; use --nproc_per_node={count} (or hydra.launcher.tasks_per_node={count})")


def rank_seed(seed: int, rank: int) -> int:
    """Rank r's seed for dropout masks: rank 0 keeps `seed`, others get an independent 63-bit
    seed from numpy's SeedSequence([seed, rank]) (not seed + rank, whose streams neighbour runs' seeds)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([abs(int(seed)), rank]).generate_state(2, dtype=np.uint64)[0] >> 1)


@contextmanager
def session(launch_: Launch | None = None, timeout_minutes: float = 30.0):
    """Start the process group for this process's launch (once) and end it afterwards; yields
    the Launch. Without a multi-process launch it yields SINGLE and does nothing."""
    global _current
    launch_ = launch() if launch_ is None else launch_
    if not launch_.distributed or active():
        yield _current if active() else launch_
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and torch.cuda.device_count() > launch_.local_rank:
        torch.cuda.set_device(launch_.local_rank)
    try:
        torch.distributed.init_process_group(backend=backend, rank=launch_.rank, world_size=launch_.world_size,
                                             timeout=datetime.timedelta(minutes=timeout_minutes))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not start the process group ({backend}, rank {launch_.rank} of "
                        f"{launch_.world_size}): {first}; check MASTER_ADDR/MASTER_PORT") from None
    _current = launch_
    if launch_.rank != 0:
        # the other ranks repeat rank 0's progress: only their warnings and errors are shown
        logging.getLogger("dropsample").setLevel(logging.WARNING)
    try:
        yield launch_
    finally:
        _current = SINGLE
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------
# Collectives (each a no-op without a process group)


def barrier() -> None:
    if active():
        torch.distributed.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. tokenizing into the shared cache), then the others."""
    if active() and not is_main():
        barrier()
    try:
        yield
    finally:
        if active() and is_main():
            barrier()


def broadcast(obj):
    """Rank 0's `obj` on every rank (a picklable value)."""
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * _current.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def sum_(values: np.ndarray) -> np.ndarray:
    """Elementwise sum over ranks of a float64 (or int64) array, on the CPU (gloo)."""
    if not active():
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values)).clone()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.numpy()


def mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor on its own device (NCCL for CUDA, gloo for CPU)."""
    if not active():
        return tensor
    tensor = tensor.detach().clone()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor / _current.world_size


def shard(n: int) -> slice:
    """This rank's share of n items, strided (rank, rank + W, ...) so shares differ by at most one."""
    return slice(_current.rank, n, _current.world_size)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` (gradients averaged over ranks); `model` itself
    when there is no process group."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
