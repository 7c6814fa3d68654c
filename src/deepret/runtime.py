"""Process settings that make CPU inference fast on small machines.

glibc serves every allocation above its mmap threshold with a fresh mapping and unmaps it on free,
so each forward pass over a large image zeroes new pages again: on 2 cores the kernel time rivals
the network's (docs/benchmarks.md). Keeping freed memory in the heap removes that cost; the process
then holds its peak memory. Set DEEPRET_MALLOC_TUNING=0 to keep glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.mallopt  # noqa: B018 - raises AttributeError off glibc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def tune_allocator(enable: bool = True) -> bool:
    """Keep freed memory for reuse (enable) or restore glibc's defaults; False where not glibc."""
    libc = _glibc()
    if not libc or (enable and os.environ.get("DEEPRET_MALLOC_TUNING", "1") == "0"):
        return False
    libc.mallopt(M_MMAP_MAX, 0 if enable else GLIBC_MMAP_MAX)
    libc.mallopt(M_TRIM_THRESHOLD, 2**30 if enable else GLIBC_TRIM_THRESHOLD)
    return True


def default_workers() -> int:
    """Image decoding processes: none on 1-2 cores (they would compete with the network's threads,
    measured in docs/benchmarks.md), else a quarter of the cores, at most 4."""
    cores = len(os.sched_getaffinity(0))
    return 0 if cores <= 2 else min(4, max(1, cores // 4))


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """True unless this is a torchrun process of rank > 0 (which must not print or write reports)."""
    return distributed()[0] == 0


def default_device():
    """The torch device to run on when none is asked for: CUDA if there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_device(requested: str | None):
    """The torch device for this process; starts the process group under torchrun."""
    import torch
    import torch.distributed as dist

    tune_allocator()
    rank, world, local = distributed()
    cuda = torch.cuda.is_available() and (requested is None or requested.startswith("cuda"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = torch.device(f"cuda:{local}" if world > 1 else (requested or "cuda"))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")
