"""CPU thread counts that stay fast when other processes share the cores.

torch's OpenMP threads spin-wait for each other. On a 2-core machine with one busy neighbour process,
two spinning threads lost 73–98 % of their throughput (the `mlp` preset trained at 2,605 img/s instead of
9,611), while one thread kept 92 % (7,248 of 7,874); `OMP_WAIT_POLICY=PASSIVE` avoids the collapse but
halves the quiet-machine speed. No fixed count wins, and a neighbour can start or stop at any time, so
`AdaptiveThreads` measures: it times windows of steps at the current count and now and then probes
another count for a short window, switching when that one is clearly faster.

    threads = AdaptiveThreads(start=default_num_threads())   # sets torch's thread count
    for batch in batches:
        t0 = time.perf_counter()
        train_step(batch)                                     # CPU work only: no device sync needed
        threads.observe(time.perf_counter() - t0)             # may change the count for the next step

The count changes only between steps (never inside one). Whether it changes the numbers depends on the
kernels: on this project's x86_64 CPU (MKL, oneDNN, GNU OpenMP) the `mlp` and `dsprites` presets' gradients
are bitwise the same at 1 and 2 threads, the `small` and `celeba64` presets' are not (oneDNN splits their
convolutions' weight-gradient sums by thread). `require_exact` checks this on the real shapes before any
switch and keeps the count fixed where the bits differ, so a run stays reproducible and `--resume` exact
(`tests/vae_triton/test_cpu_threads.py`, `tests/train/test_threads.py`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

# Captured at import: later set_num_threads calls in this process must not lower the ceiling.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


CGROUP_CPU_FILES = (  # (quota, period) of cgroup v2, then of cgroup v1
    ("/sys/fs/cgroup/cpu.max", None),
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def cgroup_cpu_limit(files=CGROUP_CPU_FILES) -> float | None:
    """The CPU time a container may use, in cores (quota / period), or None without a limit. A container
    limited to 2 CPUs (a Space's 2 vCPUs) may still see all of the host's cores."""
    for quota_file, period_file in files:
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file is not None:
                with open(period_file) as f:
                    fields = fields[:1] + f.read().split()[:1]
        except OSError:
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = float(fields[0]), float(fields[1])
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def available_cores() -> int:
    """The cores this process may use: its CPU affinity (os.cpu_count() where there is none), capped by
    a cgroup CPU limit rounded up (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores


def default_num_threads() -> int:
    """Torch CPU threads for work started now: the cores not already busy, round(cores − 1-minute load
    average), at least 1 and at most torch's own default. A starting guess: the load average lags."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        return min(TORCH_DEFAULT_THREADS, cores)
    return max(1, min(TORCH_DEFAULT_THREADS, cores, round(cores - load)))


def thread_ladder(ceiling: int, start: int) -> tuple[int, ...]:
    """The counts worth probing: `ceiling`, its halvings down to 1, and `start`, ascending."""
    counts, n = {start}, ceiling
    while n >= 1:
        counts.add(n)
        n //= 2
    return tuple(sorted(counts))


def same_at_every_count(compute: Callable[[], Sequence[torch.Tensor]], counts: Sequence[int]) -> bool:
    """Whether `compute()` returns bitwise-equal tensors at each of `counts` torch CPU threads (stops at
    the first difference; torch's count is restored after). Some CPU kernels split a reduction by thread
    (oneDNN's convolution weight gradients for some shapes), others never do (MKL's matrix products)."""
    before = torch.get_num_threads()
    try:
        reference = None
        for n in counts:
            torch.set_num_threads(n)
            outputs = [t.detach().clone() for t in compute()]
            if reference is None:
                reference = outputs
            elif len(outputs) != len(reference) or not all(map(torch.equal, outputs, reference)):
                return False
        return True
    finally:
        torch.set_num_threads(before)


class AdaptiveThreads:
    """Picks torch's CPU thread count from measured step times, between steps.

    `start`: the count to begin with (set at once). `adapt=False`: keep `start` for good (an explicit
    `--num-threads`, a CUDA device): `observe` then does nothing. `candidates`: the counts it may use
    (default: `thread_ladder` of min(torch's default, `available_cores()`)).

    How it decides (all times are the observed step seconds, so evaluation or checkpoint time between
    steps counts for nothing):
    - every `window_s` of steps it closes a window and records the count's throughput (steps/s);
    - after two windows, then every `probe_every_s` of steps (doubling up to `probe_every_max_s` after
      each probe that lost, back to `probe_every_s` after a switch), or at once when a window falls
      below `collapse` × the median of the count's last windows (a neighbour arrived), it runs the next
      candidate count — the one below and the one above the current count in turn, the one below first
      after a collapse — for `probe_s`;
    - it keeps the probed count if its throughput beats the window before the probe by more than
      `margin` (hysteresis), and goes back otherwise;
    - a probe starts only while the probes so far (including the first step after each switch, which is
      not measured) took at most `budget` of the time observed plus 2 `probe_s`: in all, probes take at
      most `budget` of the time plus 3 `probe_s` and one step.
    `set_threads`, `clock` (for `tick`) and the observed seconds are injectable, so the decisions can be
    tested with a fake machine. Raises ValueError for a count below 1 or a `budget` outside (0, 1).
    """

    def __init__(
        self,
        start: int,
        *,
        adapt: bool = True,
        candidates: Sequence[int] | None = None,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        clock: Callable[[], float] = time.perf_counter,
        window_s: float = 1.0,
        probe_s: float = 0.3,
        probe_every_s: float = 5.0,
        probe_every_max_s: float = 20.0,
        budget: float = 0.05,
        margin: float = 0.10,
        collapse: float = 0.6,
    ) -> None:
        if start < 1:
            raise ValueError(f"the thread count must be a positive number of CPU threads, got {start}")
        if not 0 < budget < 1:
            raise ValueError(f"`budget` must be a fraction of the time in (0, 1), got {budget}")
        ceiling = min(TORCH_DEFAULT_THREADS, available_cores())
        self.candidates = tuple(sorted(set(candidates or thread_ladder(ceiling, start))))
        if min(self.candidates) < 1 or start not in self.candidates:
            raise ValueError(f"`candidates` {self.candidates} must be positive counts that include {start}")
        self.adapt = adapt and len(self.candidates) > 1
        self._set = set_threads
        self.window_s, self.probe_s, self.budget, self.margin = window_s, probe_s, budget, margin
        self.probe_every_s, self.probe_every_max_s, self.collapse = probe_every_s, probe_every_max_s, collapse
        self.threads = start
        self.elapsed = 0.0  # observed step seconds in all
        self.probe_seconds = 0.0  # of which probing
        self.switches: list[tuple[float, int]] = []  # (elapsed, new count) of each adopted switch
        self.probes = 0
        self.inexact = False  # adaptation was turned off because the counts give different bits
        self._interval = 2 * window_s  # the first probe soon: the starting count is a guess
        self._since_probe = 0.0
        self._history: dict[int, list[float]] = {}  # the last windows' throughput per count
        self._probing: int | None = None  # the count under probe, if any
        self._turn = 0  # which neighbour the next scheduled probe tries
        self._urgent = False
        self._new_window()
        self._last_tick: float | None = None
        self._clock = clock
        set_threads(start)

    def __repr__(self) -> str:
        mode = "adaptive" if self.adapt else "fixed"
        return f"AdaptiveThreads({self.threads}, {mode}, switches={len(self.switches)}, probes={self.probes})"

    def require_exact(self, compute: Callable[[], Sequence[torch.Tensor]]) -> bool:
        """Keep adapting only if `compute()` (e.g. a step's gradients) gives the same bits at every candidate
        count, so that switching cannot change a run's numbers (nor a `--resume`'s). Otherwise the count
        stays at the current one. Returns whether adaptation goes on; no work when it is already off."""
        if self.adapt and not same_at_every_count(compute, self._counts_to_check()):
            self.adapt = False
            self.inexact = True
        return self.adapt

    def use(self, count: int) -> None:
        """Run at `count` (one of `candidates`) from now on, e.g. the fastest count of a timed start; a new
        measuring window begins. Raises ValueError for a count outside `candidates`."""
        if count not in self.candidates:
            raise ValueError(f"the thread count {count} is not one of the candidates {self.candidates}")
        if count != self.threads:
            self.threads = count
            self._set(count)
            self.switches.append((self.elapsed, count))
            self._new_window()

    def _counts_to_check(self) -> tuple[int, ...]:
        return (self.threads, *(c for c in self.candidates if c != self.threads))

    def _new_window(self) -> None:
        self._steps, self._seconds, self._skip = 0, 0.0, True  # the first step after a switch is warm-up

    def tick(self) -> None:
        """`observe` the wall-clock seconds since the previous tick (the first tick only starts the clock):
        for loops where one call between units of work is simpler than timing each unit."""
        now = self._clock()
        if self._last_tick is not None:
            self.observe(now - self._last_tick)
        self._last_tick = self._clock()

    def observe(self, seconds: float) -> None:
        """Record one step of `seconds` run at the current count; may change torch's thread count."""
        if not self.adapt:
            return
        self.elapsed += seconds
        if self._probing is not None:
            self.probe_seconds += seconds
        else:
            self._since_probe += seconds
        # The first step after a switch pays the thread team's start-up: not the count's speed, unless
        # it alone outlasts a probe (a collapsed count): then it is the evidence, and the probe ends.
        long_probe = self._probing is not None and seconds >= self.probe_s
        if self._skip and not long_probe:
            self._skip = False
            return
        self._steps += 1
        self._seconds += seconds
        if self._probing is not None:
            if self._seconds >= self.probe_s:
                self._end_probe(self._steps / self._seconds)
        elif self._seconds >= self.window_s:
            self._end_window(self._steps / self._seconds)

    def _end_window(self, rate: float) -> None:
        history = self._history.setdefault(self.threads, [])
        if len(history) >= 3 and rate < self.collapse * statistics.median(history[-5:]):
            self._urgent = True
        history.append(rate)
        del history[:-5]
        self._new_window()
        due = self._urgent or self._since_probe >= self._interval
        # An allowance of two probes: the first ones come early, and a neighbour arriving then must
        # still get its probe at once.
        if due and self.probe_seconds <= self.budget * self.elapsed + 2 * self.probe_s:
            self._start_probe()

    def _start_probe(self) -> None:
        below = [c for c in self.candidates if c < self.threads][-1:]
        options = below + [c for c in self.candidates if c > self.threads][:1]
        if self._urgent and below:
            target = below[0]
        else:
            target = options[self._turn % len(options)]
            self._turn += 1
        self._probing, self._base = target, self._history[self.threads][-1]
        self.probes += 1
        self._set(target)
        self._new_window()

    def _end_probe(self, rate: float) -> None:
        target, self._probing, self._since_probe, self._urgent = self._probing, None, 0.0, False
        if rate > self._base * (1 + self.margin):
            self.threads = target
            self.switches.append((self.elapsed, target))
            self._history[target] = [rate]
            self._interval = self.probe_every_s
        else:
            self._set(self.threads)
            self._interval = min(2 * self._interval, self.probe_every_max_s)
        self._new_window()
