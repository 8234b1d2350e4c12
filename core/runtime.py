"""Where and how models run: device, dtype and CPU threads, resolved the same way by every entry point."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from soundsmith.core.checks import check_int

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> cuda if available, else mps, else cpu; anything else is checked to exist."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available here (no CUDA); use 'auto' or 'cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} is not available here (no MPS); use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}")
    return dev


def default_threads() -> int:
    """The CPU threads torch gets when the user names none: `OMP_NUM_THREADS` when set (the README's timings
    use 1), else the physical cores. Physical cores, simply: the CPUs this process may run on (its affinity
    mask; os.cpu_count() where there is none), halved when Linux reports simultaneous multithreading on (two
    logical CPUs per core; more than two per core, or a container's CPU quota, are not looked at)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # torch's own default counts cores, but a busy machine's users need the number said and settable
        smt = Path("/sys/devices/system/cpu/smt/active").read_text().strip() == "1"
    except OSError:
        smt = False
    return max(1, cpus // 2 if smt else cpus)


def set_threads(threads: int | None = None) -> int:
    """Give torch `threads` CPU threads (None: `default_threads()`) before any model work; returns the number.

    Intra-op threads are set for the calling thread (and threads started after it); the inter-op pool can be
    sized only once per process, before its first use, so a later call leaves it as it is.
    """
    n = default_threads() if threads is None else check_int("threads", threads, 1, 4096)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already used or already set: torch refuses, and the old size is fine
        pass
    return n


def resolve_dtype(dtype: str | torch.dtype = "fp32") -> torch.dtype:
    """"fp32"/"fp16"/"bf16" (or the torch dtypes / long names) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of fp32, fp16, bf16, got {dtype}")
        return dtype
    key = str(dtype).strip().lower()
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of fp32, fp16, bf16, got {dtype!r}")
    return DTYPES[key]
