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

import copy
from collections.abc import Callable

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
    "model_check",
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


def model_check(
    model,
    batch_shape: tuple[int, ...],
    *,
    backward: bool = True,
    channels_last: bool = False,
    amp: torch.dtype | None = None,
) -> Callable[[], list[torch.Tensor]]:
    """For `AdaptiveThreads.require_exact`: a function that runs a copy of `model` on a fixed random batch
    of `batch_shape` (N, C, H, W) and returns its loss and, with `backward` (in training mode), the
    gradients of the loss with respect to every parameter; without, in evaluation mode. `channels_last`
    and `amp` (an autocast dtype, e.g. torch.bfloat16) as the training step uses them. The same seeded
    batch and noise at every call; the model, its gradients, its BatchNorm statistics and torch's random
    stream stay untouched."""
    twin = []

    def compute() -> list[torch.Tensor]:
        if not twin:
            twin.append(copy.deepcopy(model))
        net = copy.deepcopy(twin[0])  # BatchNorm statistics of one call must not reach the next
        net.train(backward)  # a training step, or evaluation
        params = [p for p in net.parameters() if p.requires_grad]
        device = params[0].device if params else torch.device("cpu")
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(backward):
            torch.manual_seed(0)
            x = (torch.rand(batch_shape, device=device) > 0.5).float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = net(x).loss.float()
            if not backward:
                return [loss]
            grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
            return [loss.detach(), *(g for g in grads if g is not None)]

    return compute


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
