"""torch.distributed setup for `torchrun -m train`: NCCL on GPUs, gloo on CPU; rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init(device_name: str) -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); start a process group if world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_max(flag: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise maximum over ranks (every rank takes the same skip decision)."""
    if info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def all_gather_rows(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Each rank's 1-D tensor stacked into (world, n), on the CPU, on every rank."""
    if not info.enabled:
        return t[None].cpu()
    local = t.to(info.device)  # NCCL gathers CUDA tensors; gloo CPU ones
    rows = [torch.empty_like(local) for _ in range(info.world)]
    dist.all_gather(rows, local)
    return torch.stack(rows).cpu()


def check_in_sync(model: torch.nn.Module, info: DistInfo) -> None:
    """Raise if the ranks' weights differ (DDP keeps them equal; a mismatch means a silent bug)."""
    if not info.enabled:
        return
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    lo, hi = sums.clone(), sums.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError("model weights differ between ranks: the data-parallel update is broken")


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
