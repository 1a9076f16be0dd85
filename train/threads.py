"""The CPU thread count both CLIs use by default (`--num-threads`), measured on a shared 2-core machine.

Measured on this project's shared 2-core CPU (x86_64; `mlp` preset, batch 100, one training step
timed over 5 s): nearly idle, 2 threads gave 14.9k img/s and 1 thread 11.3k (2 threads 1.3× faster); while
other processes kept both cores busy (load average 2.5–4.5), 1 thread gave 4.8k–7.2k img/s and 2
threads 77–272 img/s (25–60× slower: OpenMP threads spin waiting for a core a neighbour holds).
`python -m bench.bench_digits --skip-short --skip-warmup --skip-long` repeats the comparison through
`python -m train` under whatever load the machine has. So the default takes only the cores that are
free now:
    threads = max(1, min(torch's default, round(cores − 1-minute load average)))
"""

from __future__ import annotations

import os

import torch

# Captured once: later set_num_threads calls in this process must not lower the ceiling.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_threads() -> int:
    """Torch CPU threads for a run started now: the cores not already busy (at least 1)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return TORCH_DEFAULT_THREADS
    return max(1, min(TORCH_DEFAULT_THREADS, round(available_cores() - load)))


def set_num_threads(requested: int | None) -> int:
    """Apply `--num-threads` (None: `default_num_threads()`); return the count in use."""
    n = default_num_threads() if requested is None else requested
    if n < 1:
        raise ValueError(f"--num-threads must be a positive number of CPU threads, got {n}")
    torch.set_num_threads(n)
    return n
