"""torchrun-aware process groups: gloo on CPU, NCCL on CUDA, plain single process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun (world size > 1); else one process.

    ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA when available). Each rank uses ``cuda:LOCAL_RANK``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        dev = torch.device(device if device.startswith("cuda") and ":" in device else ("cuda" if use_cuda else "cpu"))
        return DistInfo(device=dev)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return DistInfo(rank, world, local, dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of scalar logs over ranks (identity in one process)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
