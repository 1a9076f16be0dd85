"""The CPU thread count of `python -m train` and `python -m train.evaluate` (`--num-threads`).

Without `--num-threads` the count adapts while the run goes on (`vae_triton.cpu_threads.AdaptiveThreads`):
it starts at the cores not busy now, round(cores − 1-minute load average), and then follows the measured
step times, so a neighbour process that starts or stops later is seen. Measured on a shared 2-core
machine (`python -m bench.bench_threads`): two spinning OpenMP threads lose 73–98 % of their speed as soon
as a neighbour runs, one thread is ~20 % slower than two on a quiet machine. `--num-threads N` fixes the
count (no adaptation); so do a CUDA device, `--compile` (Inductor's CPU kernels keep the thread count they
were compiled with) and a multi-process run (every rank waits for the slowest, so one rank's probe would
be timed by all).
"""

from __future__ import annotations

import torch

from vae_triton.cpu_threads import (
    TORCH_DEFAULT_THREADS,
    AdaptiveThreads,
    available_cores,
    default_num_threads,
)

__all__ = [
    "TORCH_DEFAULT_THREADS",
    "AdaptiveThreads",
    "BatchTicks",
    "available_cores",
    "default_num_threads",
    "set_num_threads",
    "thread_controller",
]


def set_num_threads(requested: int | None) -> int:
    """Apply `--num-threads` (None: `default_num_threads()`); return the count in use."""
    n = default_num_threads() if requested is None else requested
    if n < 1:
        raise ValueError(f"--num-threads must be a positive number of CPU threads, got {n}")
    torch.set_num_threads(n)
    return n


def thread_controller(
    requested: int | None, device: torch.device | str = "cpu", *, compiled: bool = False, world: int = 1
) -> AdaptiveThreads:
    """The controller of a run's CPU threads: fixed at `requested` (`--num-threads`) when given, adaptive
    from `default_num_threads()` otherwise, except on CUDA, with `compiled` or with `world` > 1 (fixed at
    the starting count: see the module docstring). Sets torch's count now; raises ValueError for
    `requested` < 1 naming `--num-threads`."""
    n = set_num_threads(requested)
    adapt = requested is None and torch.device(device).type == "cpu" and not compiled and world == 1
    return AdaptiveThreads(n, adapt=adapt)


class BatchTicks:
    """`images` (anything with len() and slicing) whose every slice ticks `threads`: a loop that slices
    one batch at a time (vae_triton.metrics.iter_batches) lets the controller time each batch, and the
    count changes only between batches."""

    def __init__(self, images, threads: AdaptiveThreads) -> None:
        self.images, self.threads = images, threads

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        self.threads.tick()
        return self.images[index]
