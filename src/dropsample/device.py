"""Which device and number format a job computes in (a leaf: torch only)."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA, then MPS, then CPU; anything else as torch names it (cpu, cuda, cuda:N, mps)."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 autocast on CUDA that supports it, fp32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; fp32 needs none."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
