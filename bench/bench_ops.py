"""Benchmark the fused ELBO ops against the same loss in eager torch and under torch.compile.

    python -m bench.bench_ops                  # CUDA: B ∈ {256, 1024} × {3×64², 3×128²} × {fp32, bf16}
    python -m bench.bench_ops --quick          # small sizes (the default on a machine without CUDA)
    python -m bench.bench_ops --logits         # the model's loss: Gaussian NLL of sigmoid(logits)
    python -m bench.bench_ops --host-overhead  # CPU: host µs of the op wrappers, kernel launches stubbed
    python -m bench.bench_ops --iw 5 50        # reparameterize_iw, K = 5 and 50, latent 16 and 128

The loss is the ELBO's kernel-shaped part, as a training step sees it: (mu, logvar) = params.chunk(2, 1),
z, kl = reparameterize_kl(mu, logvar); loss = mean_b(gaussian_nll(mean, x, log σ) + kl), σ fixed (with
--logits: gaussian_nll_logits(logits, x) in the fused column, sigmoid then the NLL elsewhere);
backward gets ∂loss = 1 and a random ∂z (what the decoder would send back). Three implementations:
  eager    vae_triton.reference (plain torch ops)
  compile  torch.compile of that same function (inductor, default mode)
  fused    vae_triton.ops: Triton kernels on CUDA; on CPU the dispatch gives the torch reference unless
           TRITON_INTERPRET=1 (then the interpreter, which measures nothing useful about speed)
Reported per phase (forward / backward / full): median µs (triton.testing.do_bench on CUDA, a timeit
median on CPU), the host CPU µs to issue one call (the GPU idle at the start, no sync inside: on a
host-bound machine this, not the kernels, sets the speed), speedups, achieved GB/s for the bytes the
fused design must move (the counts in vae_triton/kernels/*.py docstrings) as a share of a large-copy
bandwidth measured in the same run, and peak memory of a full step (CUDA only). On CUDA, `graph µs` is
the whole forward + backward captured in one CUDA graph and replayed (device time, no host cost), for all
three implementations (compile: captured by hand; if that capture fails, mode="reduce-overhead", noted).
Writes <out>/bench_ops.csv and <out>/bench_ops.json.

--iw K...: the importance-weighted bound's latent step instead, z, log q − log p = reparameterize_iw(mu,
logvar, K) on (mu, logvar) = params.chunk(2, 1), backward with a random ∂z and ∂log ratio; eager =
torch.randn ε then `reference.reparameterize_iw`, compile = torch.compile of that, fused = the op (ε drawn
in the kernel). Columns as above, with D and K; bytes from vae_triton/kernels/reparameterize_iw.py.
Writes <out>/bench_iw.csv and <out>/bench_iw.json.

--host-overhead (any machine, meaningful on a CPU): tiny tensors, the Triton kernels' launches replaced by
no-ops (`kernel[grid](...)` returns at once), the Triton backend forced, so what is timed is exactly the
host work around the kernels: validation, dispatch, the autograd wrapper (the light `autograd.Function`
path and the `torch.library.custom_op` path used under torch.compile), layout planning, allocation and
the small torch ops left (sums, seeds). `torch` = the same ops on VAE_TRITON_BACKEND=torch (the CPU
path). Run it with another checkout's `vae_triton` on PYTHONPATH to compare before and after a change.
Writes <out>/host_overhead.csv and <out>/host_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import os
import pkgutil
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vae_triton import ops, reference
from vae_triton.io import write_json_atomic, write_text_atomic

LATENT = 128
PHASES = ("forward", "backward", "full")
IMPLS = ("eager", "compile", "fused")


@dataclass
class Case:
    batch: int
    channels: int
    size: int
    dtype: str

    @property
    def pixels(self) -> int:
        return self.channels * self.size * self.size


@dataclass
class Row:
    device: str
    dtype: str
    batch: int
    image: str
    latent: int
    impl: str
    phase: str
    median_us: float
    host_us: float
    graph_us: float | None  # phase "full" on CUDA: fwd+bwd captured in one CUDA graph, replayed
    graph_speedup_vs_eager: float | None
    graph_pct_of_copy: float | None
    speedup_vs_eager: float
    speedup_vs_compile: float | None
    fused_bytes: int
    gb_per_s: float
    pct_of_copy: float
    peak_mem_mb: float | None
    samples: int | None = None  # --iw: K, the samples per row of reparameterize_iw


def fused_bytes(case: Case, phase: str) -> int:
    """Bytes the fused design moves (σ fixed): latent forward 3, backward 5 B×D passes; images forward
    2 (read m, x), backward 3 (read m, x, write ∂m) B×N passes. O(B) vectors are left out."""
    size = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    latent, image = case.batch * LATENT * size, case.batch * case.pixels * size
    fwd, bwd = 3 * latent + 2 * image, 5 * latent + 3 * image
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[phase]


def eager_loss(params, mean, x, log_sigma=0.0):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = reference.reparameterize_kl(mu, logvar)
    return (reference.gaussian_nll(mean, x, log_sigma) + kl).mean(), z


def fused_loss(params, mean, x, log_sigma=0.0):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar)
    return (ops.gaussian_nll(mean, x, log_sigma) + kl).mean(), z


def eager_logits_loss(params, logits, x, log_sigma=0.0):
    return eager_loss(params, torch.sigmoid(logits), x, log_sigma)


def fused_logits_nll(logits, x, log_sigma=0.0):
    """ops.gaussian_nll_logits; a checkout without it (before the fused sigmoid) gets what its model ran."""
    if hasattr(ops, "gaussian_nll_logits"):
        return ops.gaussian_nll_logits(logits, x, log_sigma)
    return ops.gaussian_nll(torch.sigmoid(logits), x, log_sigma)


LOGITS_NAME = (
    "gaussian_nll_logits, σ float"
    if hasattr(ops, "gaussian_nll_logits")
    else "sigmoid + gaussian_nll, σ float (no fused op in this checkout)"
)


def fused_logits_loss(params, logits, x, log_sigma=0.0):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar)
    return (fused_logits_nll(logits, x, log_sigma) + kl).mean(), z


def iw_bytes(batch: int, latent: int, k: int, dtype: str, phase: str) -> int:
    """Bytes reparameterize_iw's kernels move (vae_triton/kernels/reparameterize_iw.py): forward
    (K + 2)·B·D·s + 4·K·B (read mu, logvar, write z and the log ratios), backward (K + 4)·B·D·s + 4·K·B
    (read ∂z, ∂log ratio, mu, logvar, write ∂mu, ∂logvar)."""
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    fwd = (k + 2) * batch * latent * size + 4 * k * batch
    bwd = (k + 4) * batch * latent * size + 4 * k * batch
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[phase]


def eager_iw(params, k: int):
    """The IW bound's latent step in plain torch: ε drawn with torch.randn, then the reference."""
    mu, logvar = params.chunk(2, dim=1)
    eps = torch.randn((k, *mu.shape), device=mu.device, dtype=torch.float32)
    z, log_ratio = reference.reparameterize_iw(mu, logvar, eps)
    return log_ratio, z


def fused_iw(params, k: int):
    mu, logvar = params.chunk(2, dim=1)
    z, log_ratio = ops.reparameterize_iw(mu, logvar, k)
    return log_ratio, z


class Timer:
    """Median wall time of a callable in µs: do_bench on CUDA, a timeit-style median on CPU."""

    def __init__(self, device: torch.device, reps: int):
        self.device, self.reps = device, reps

    def __call__(self, fn, grad_to_none=()) -> float:
        if self.device.type == "cuda":
            import triton.testing

            ms = triton.testing.do_bench(
                fn, warmup=25, rep=100, grad_to_none=list(grad_to_none), return_mode="median"
            )
            return ms * 1e3
        fn()  # warm-up (and compilation)
        samples = []
        for _ in range(self.reps):
            for t in grad_to_none:
                t.grad = None
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e6

    def after_setup(self, setup, fn, grad_to_none=()) -> float:
        """Median µs of fn() alone, each run preceded by an untimed setup() (backward after a fresh
        forward: a compiled backward refuses retain_graph, and a retained graph is not a training step)."""
        reps = self.reps if self.device.type != "cuda" else 50
        samples = []
        flush = (
            torch.empty(64 << 20, dtype=torch.int32, device=self.device)
            if self.device.type == "cuda"
            else None
        )
        for i in range(reps + 3):  # the first runs are warm-up
            for t in grad_to_none:
                t.grad = None
            state = setup()
            if flush is not None:
                flush.zero_()  # evict L2 as do_bench does, so fn reads from HBM
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(state)
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end) * 1e3
            else:
                begin = time.perf_counter()
                fn(state)
                elapsed = (time.perf_counter() - begin) * 1e6
            if i >= 3:
                samples.append(elapsed)
        return statistics.median(samples)


def host_us(device: torch.device, fn, reps: int, setup=None, grad_to_none=()) -> float:
    """Median host (CPU) µs to issue fn() once: the device idle at the start, no sync inside."""
    samples = []
    for i in range(reps + 3):  # the first runs are warm-up
        for t in grad_to_none:
            t.grad = None
        state = setup() if setup is not None else None
        sync(device)
        begin = time.perf_counter()
        fn() if setup is None else fn(state)
        elapsed = (time.perf_counter() - begin) * 1e6
        sync(device)
        if i >= 3:
            samples.append(elapsed)
    return statistics.median(samples)


def graph_us(fn, inputs, leaves, grad_z, one) -> float:
    """µs per replay of fn's forward + backward (torch.autograd.grad, so no .grad accumulation) captured
    in one CUDA graph: device time with no host cost (triton.testing.do_bench median)."""
    import triton.testing

    def step():
        loss, z = fn(*inputs)
        return torch.autograd.grad([loss, z], leaves, [one, grad_z])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median") * 1e3


def copy_ceiling_gbps(device: torch.device, timer: Timer, quick: bool) -> float:
    """Read + write bandwidth of a large tensor copy (1 GiB on CUDA, 64 MiB on CPU)."""
    nbytes = (64 << 20) if device.type != "cuda" or quick else (1 << 30)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (us * 1e-6) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(impls: dict, inputs: tuple, leaves: tuple, grads: tuple, device, timer: Timer, notes: list):
    """Times of each implementation fn(*inputs) -> (a, b), backward with ∂a, ∂b = `grads`: medians and
    host µs per (impl, phase), and per impl the CUDA-graph µs and the peak MB of a full step (CUDA)."""
    times: dict[tuple[str, str], float] = {}
    hosts: dict[tuple[str, str], float] = {}
    graphs: dict[str, float | None] = {}
    peaks: dict[str, float | None] = {}
    for name, fn in impls.items():

        def forward(fn=fn):
            return fn(*inputs)

        def backward(out):
            torch.autograd.backward([out[0], out[1]], list(grads))

        def full(fn=fn):
            a, b = fn(*inputs)
            torch.autograd.backward([a, b], list(grads))

        full()  # compile / warm up before any timing
        times[name, "forward"] = timer(forward)
        times[name, "backward"] = timer.after_setup(forward, backward, leaves)
        times[name, "full"] = timer(full, leaves)
        reps = timer.reps if device.type != "cuda" else 50
        hosts[name, "forward"] = host_us(device, forward, reps)
        hosts[name, "backward"] = host_us(device, backward, reps, setup=forward, grad_to_none=leaves)
        hosts[name, "full"] = host_us(device, full, reps, grad_to_none=leaves)
        peaks[name] = graphs[name] = None
        if device.type == "cuda":
            for t in leaves:
                t.grad = None
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            full()
            sync(device)
            peaks[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            graphs[name] = graph_column(
                name, fn, impls["eager"], inputs, leaves, grads[1], grads[0], timer, notes
            )
    return times, hosts, graphs, peaks


def bench_case(
    case: Case,
    device: torch.device,
    timer: Timer,
    impls: dict,
    copy_gbps: float,
    notes: list[str],
    sigma: str = "fixed",
    channels_last: bool = False,
) -> list[Row]:
    dtype = getattr(torch, case.dtype)
    params = torch.randn(case.batch, 2 * LATENT, device=device, dtype=dtype, requires_grad=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    mean = torch.rand(case.batch, case.channels, case.size, case.size, device=device, dtype=dtype)
    mean = mean.contiguous(memory_format=fmt).requires_grad_()
    x = torch.rand_like(mean, requires_grad=False)
    log_sigma = 0.0 if sigma == "fixed" else torch.zeros(case.channels, device=device, requires_grad=True)
    grad_z = torch.randn(case.batch, LATENT, device=device, dtype=dtype)
    one = torch.ones((), device=device, dtype=torch.float32)
    leaves = (params, mean) if sigma == "fixed" else (params, mean, log_sigma)
    inputs = (params, mean, x, log_sigma)

    measured = measure(impls, inputs, leaves, (one, grad_z), device, timer, notes)
    label = dict(device=device.type, dtype=case.dtype, batch=case.batch, latent=LATENT)
    label["image"] = f"{case.channels}x{case.size}x{case.size}"
    return build_rows(impls, measured, lambda phase: fused_bytes(case, phase), copy_gbps, label)


def build_rows(impls, measured, nbytes_of, copy_gbps: float, label: dict) -> list[Row]:
    """One Row per (impl, phase) from `measure`'s results; `label` holds the case's fields."""
    times, hosts, graphs, peaks = measured
    rows = []
    for name in impls:
        for phase in PHASES:
            us = times[name, phase]
            nbytes = nbytes_of(phase)
            gbps = nbytes / (us * 1e-6) / 1e9
            vs_compile = times["compile", phase] / us if ("compile", phase) in times else None
            g_us = graphs[name] if phase == "full" else None
            g_eager = graphs.get("eager") if phase == "full" else None
            rows.append(
                Row(
                    **label,
                    impl=name,
                    phase=phase,
                    median_us=round(us, 2),
                    host_us=round(hosts[name, phase], 2),
                    graph_us=None if g_us is None else round(g_us, 2),
                    graph_speedup_vs_eager=None
                    if g_us is None or g_eager is None
                    else round(g_eager / g_us, 3),
                    graph_pct_of_copy=None
                    if g_us is None
                    else round(100 * nbytes / (g_us * 1e-6) / 1e9 / copy_gbps, 1),
                    speedup_vs_eager=round(times["eager", phase] / us, 3),
                    speedup_vs_compile=None if vs_compile is None else round(vs_compile, 3),
                    fused_bytes=nbytes,
                    gb_per_s=round(gbps, 2),
                    pct_of_copy=round(100 * gbps / copy_gbps, 1),
                    peak_mem_mb=None if peaks[name] is None else round(peaks[name], 1),
                )
            )
    return rows


def bench_iw_case(
    batch: int, latent: int, k: int, dtype: str, device, timer: Timer, impls: dict, copy_gbps: float, notes
) -> list[Row]:
    """reparameterize_iw on params.chunk(2, 1) of a (B, 2D) encoder output, K samples; backward gets a
    random ∂z (what the decoder of the K·B samples sends back) and a random ∂log ratio."""
    params = torch.randn(batch, 2 * latent, device=device, dtype=getattr(torch, dtype), requires_grad=True)
    grad_z = torch.randn(k, batch, latent, device=device, dtype=params.dtype)
    grad_ratio = torch.randn(k, batch, device=device, dtype=torch.float32)
    measured = measure(impls, (params, k), (params,), (grad_ratio, grad_z), device, timer, notes)
    label = dict(device=device.type, dtype=dtype, batch=batch, image="-", latent=latent, samples=k)
    nbytes_of = lambda phase: iw_bytes(batch, latent, k, dtype, phase)  # noqa: E731
    return build_rows(impls, measured, nbytes_of, copy_gbps, label)


def graph_column(name, fn, eager, inputs, leaves, grad_z, one, timer, notes) -> float | None:
    """The CUDA-graph µs of one implementation; compile falls back to mode="reduce-overhead" when a hand
    capture of its compiled forward + backward fails (on an H100 it did, with cudaErrorStreamCaptureImplicit:
    capture the eager step, or compile with mode="reduce-overhead")."""
    try:
        return graph_us(fn, inputs, leaves, grad_z, one)
    except Exception as err:  # noqa: BLE001 — any capture failure is recorded, the run goes on
        torch.cuda.synchronize()
        if name != "compile":
            notes.append(f"{name}: CUDA-graph capture failed: {type(err).__name__}: {str(err)[:200]}")
            return None
    notes.append('compile: hand capture failed, graph column = torch.compile(mode="reduce-overhead")')
    graphed = torch.compile(eager, mode="reduce-overhead")

    def full():
        loss, z = graphed(*inputs)
        torch.autograd.backward([loss, z], [one, grad_z])

    try:
        for _ in range(3):
            full()
        return timer(full, leaves)
    except Exception as err:  # noqa: BLE001
        notes.append(f"compile reduce-overhead failed too: {type(err).__name__}: {str(err)[:200]}")
        return None


def format_table(rows: list[Row]) -> str:
    with_k = any(r.samples is not None for r in rows)
    header = (
        "dtype",
        "B",
        *(("D", "K") if with_k else ("image",)),
        "impl",
        "phase",
        "µs",
        "host µs",
        "×eager",
        "×compile",
        "GB/s",
        "%copy",
        "graph µs",
        "graph ×eager",
        "graph %copy",
        "peak MB",
    )

    def opt(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [header]
    for r in rows:
        lines.append(
            (
                r.dtype,
                str(r.batch),
                *((str(r.latent), str(r.samples)) if with_k else (r.image,)),
                r.impl,
                r.phase,
                f"{r.median_us:.1f}",
                f"{r.host_us:.1f}",
                f"{r.speedup_vs_eager:.2f}",
                opt(r.speedup_vs_compile, ".2f"),
                f"{r.gb_per_s:.1f}",
                f"{r.pct_of_copy:.1f}",
                opt(r.graph_us, ".1f"),
                opt(r.graph_speedup_vs_eager, ".2f"),
                opt(r.graph_pct_of_copy, ".1f"),
                opt(r.peak_mem_mb, ".1f"),
            )
        )
    return render(lines)


def render(lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


# ------------------------------------------------------------------------ host overhead (any machine)


@dataclass
class HostRow:
    op: str
    path: str
    phase: str
    host_us: float
    vs_torch: float | None


class _NoLaunch:
    """Stands in for a @triton.jit kernel: `kernel[grid](...)` returns at once."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def launches_stubbed():
    """Every vae_triton kernel's launch replaced by a no-op and the Triton backend forced, even on CPU."""
    from triton.runtime.jit import JITFunction

    import vae_triton.kernels as kernels

    saved = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, obj in list(vars(module).items()):
            if isinstance(obj, JITFunction):
                saved.append((module, name, obj))
                setattr(module, name, _NoLaunch())
    dispatch = getattr(ops, "_common", ops)  # the module whose INTERPRETED backend_for reads
    old_env, old_interp = os.environ.get(ops.BACKEND_ENV), dispatch.INTERPRETED
    dispatch.INTERPRETED = True  # lets backend_for pick Triton for CPU tensors
    try:
        yield
    finally:
        dispatch.INTERPRETED = old_interp
        for module, name, obj in saved:
            setattr(module, name, obj)
        if old_env is None:
            os.environ.pop(ops.BACKEND_ENV, None)
        else:
            os.environ[ops.BACKEND_ENV] = old_env


def host_overhead(reps: int, batch: int = 8, size: int = 8, latent: int = 16) -> list[HostRow]:
    """Host µs per call of each op (forward, and forward + backward) on tiny CPU tensors, per path."""
    params = torch.randn(batch, 2 * latent, requires_grad=True)
    images = torch.randn(batch, 3, size, size, requires_grad=True)
    x = torch.rand(batch, 3, size, size)
    log_sigma = torch.zeros(3, requires_grad=True)
    cases = {
        "elbo loss (reparameterize_kl + gaussian_nll, σ float)": lambda: fused_loss(params, images, x)[0],
        "elbo loss, Gaussian from logits, σ float": lambda: fused_logits_loss(params, images, x)[0],
        "elbo loss as celeba64 trains it (logits, σ per channel)": lambda: fused_logits_loss(
            params, images, x, log_sigma
        )[0],
        "reparameterize_kl": lambda: ops.reparameterize_kl(*params.chunk(2, dim=1))[1].sum(),
        **(
            {"reparameterize_iw, K=5": lambda: fused_iw(params, 5)[0].sum()}  # as reparameterize_kl's
            if hasattr(ops, "reparameterize_iw")
            else {}
        ),
        "gaussian_nll, σ float": lambda: ops.gaussian_nll(images, x, 0.0).sum(),
        "gaussian_nll, σ per channel": lambda: ops.gaussian_nll(images, x, log_sigma).sum(),
        LOGITS_NAME: lambda: fused_logits_nll(images, x, 0.0).sum(),
        "bernoulli_nll": lambda: ops.bernoulli_nll(images, x).sum(),
    }
    paths = {"torch": ("torch", None)}
    if hasattr(ops, "eager_wrapper") or hasattr(ops, "LIGHT_EAGER"):
        paths["function (eager)"] = ("triton", "function")
        paths["custom_op"] = ("triton", "custom_op")
    else:  # a checkout before the light path: every eager call went through the custom ops
        paths["custom_op"] = ("triton", None)
    rows: list[HostRow] = []
    cpu = torch.device("cpu")
    with launches_stubbed():
        for op_name, fn in cases.items():
            base: dict[str, float] = {}
            for path, (backend, wrapper) in paths.items():
                os.environ[ops.BACKEND_ENV] = backend
                with eager_wrapper(wrapper):
                    leaves = (params, images, log_sigma)
                    fwd = host_us(cpu, fn, reps)
                    full = host_us(cpu, lambda fn=fn: fn().backward(), reps, grad_to_none=leaves)
                for phase, us in (("forward", fwd), ("full", full)):
                    base.setdefault(phase, us)
                    rows.append(HostRow(op_name, path, phase, round(us, 1), round(base[phase] / us, 2)))
    return rows


@contextlib.contextmanager
def eager_wrapper(kind: str | None):
    """`ops.eager_wrapper(kind)`; in an older checkout, its module-level LIGHT_EAGER switch instead."""
    if kind is None:
        yield
    elif hasattr(ops, "eager_wrapper"):
        with ops.eager_wrapper(kind):
            yield
    else:
        ops.LIGHT_EAGER = kind == "function"
        try:
            yield
        finally:
            ops.LIGHT_EAGER = True


def format_host_table(rows: list[HostRow]) -> str:
    lines = [("op", "path", "phase", "host µs", "torch µs / this")]
    lines += [(r.op, r.path, r.phase, f"{r.host_us:.1f}", f"{r.vs_torch:.2f}") for r in rows]
    return render(lines)


def launch_overhead(reps: int) -> list[dict]:
    """CUDA: host µs of one launch of the Bernoulli forward kernel (B=1024, 3×64², bf16) through
    `kernel[grid](...)` (Triton's JIT: binds and specialises the arguments on every call) against calling
    the CompiledKernel that launch returned (`compiled[grid](...)`: no binding). Identical arguments,
    so the compiled kernel's specialisation is valid; whether a cache of compiled kernels is worth its
    key (the specialisation must be recomputed for other arguments) is what these numbers decide."""
    from vae_triton.kernels import bernoulli_nll as kernels
    from vae_triton.kernels.common import grid, row_tiles

    device = torch.device("cuda")
    logits = torch.randn(1024, 3 * 64 * 64, device=device, dtype=torch.bfloat16)
    x = torch.rand_like(logits)
    tiles = row_tiles(1024, logits.shape[1])
    partials = torch.empty((1024, tiles.chunks), dtype=torch.float32, device=device)
    args = (logits, x, partials, 1024, logits.shape[1], logits.stride(0), 1, x.stride(0), 1)
    meta = dict(BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters)
    launch_grid = grid(tiles, 1024)
    jit = kernels._bernoulli_nll_fwd
    compiled = jit[launch_grid](*args, **meta, num_warps=tiles.num_warps)
    rows = []
    for name, fn in (
        ("kernel[grid](...)", lambda: jit[launch_grid](*args, **meta, num_warps=tiles.num_warps)),
        ("compiled[grid](...)", lambda: compiled[(*launch_grid, 1)](*args, *meta.values())),
    ):
        try:
            fn()
            rows.append({"launch": name, "host_us": round(host_us(device, fn, reps), 2), "error": None})
        except Exception as err:  # noqa: BLE001 — an API mismatch is a result too
            rows.append({"launch": name, "host_us": None, "error": f"{type(err).__name__}: {err}"[:300]})
    return rows


def write_rows(out: Path, stem: str, rows: list, meta: dict) -> None:
    buf = io.StringIO()
    dicts = [r if isinstance(r, dict) else asdict(r) for r in rows]
    writer = csv.DictWriter(buf, fieldnames=list(dicts[0]))
    writer.writeheader()
    writer.writerows(dicts)
    write_text_atomic(out / f"{stem}.csv", buf.getvalue())
    write_json_atomic(out / f"{stem}.json", {"meta": meta, "rows": dicts}, indent=1)
    print(f"wrote {out / (stem + '.csv')} and {out / (stem + '.json')}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (always on for CPU)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 256 1024; quick: 16 64)")
    p.add_argument("--size", type=int, nargs="+", help="image sides, 3 channels (default 64 128; quick: 32)")
    p.add_argument(
        "--dtype", nargs="+", choices=["float32", "bfloat16"], help="default float32 bfloat16; CPU: float32"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument(
        "--logits",
        action="store_true",
        help="the model's Gaussian loss: NLL of sigmoid(logits) (fused: gaussian_nll_logits)",
    )
    p.add_argument(
        "--sigma",
        choices=["fixed", "channel"],
        default="fixed",
        help="σ of the Gaussian NLL: a fixed float (default), or learned, one per channel (as celeba64)",
    )
    p.add_argument("--channels-last", action="store_true", help="images in channels_last (as training)")
    p.add_argument(
        "--iw",
        type=int,
        nargs="+",
        metavar="K",
        help="bench reparameterize_iw (the IW bound's latent step) with these K instead of the ELBO loss",
    )
    p.add_argument("--latent", type=int, nargs="+", default=[16, 128], help="--iw: latent sizes D")
    p.add_argument(
        "--host-overhead",
        action="store_true",
        help="time the ops' host work on tiny CPU tensors, kernel launches stubbed (see the docstring)",
    )
    p.add_argument("--reps", type=int, default=20, help="timing repetitions on CPU (host overhead: 10×)")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (1 gives steadier numbers on a shared machine)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench_ops"), help="folder for bench_ops.csv/.json")
    return p.parse_args(argv)


def cpu_name() -> str:
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def run_host_overhead(args) -> list[HostRow]:
    import triton

    rows = host_overhead(10 * args.reps)
    print(f"host overhead | {cpu_name()} | vae_triton from {Path(ops.__file__).parent}")
    print(format_host_table(rows))
    meta = {
        "device": cpu_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "vae_triton": str(Path(ops.__file__).parent),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timer": f"median of {10 * args.reps} calls, host perf_counter, kernel launches stubbed",
        "shapes": "B=8, images 3x8x8, latent 16",
    }
    write_rows(args.out, "host_overhead", rows, meta)
    if torch.cuda.is_available():  # the launch itself, which the stubbed table leaves out
        try:
            launches = launch_overhead(10 * args.reps)
        except Exception as err:  # noqa: BLE001 — record it; the table above is already written
            launches = [{"launch": "setup", "host_us": None, "error": f"{type(err).__name__}: {err}"[:300]}]
        for r in launches:
            print(f"launch {r['launch']}: {r['host_us']} µs host", r["error"] or "")
        write_rows(args.out, "launch_overhead", launches, {"device": torch.cuda.get_device_name()})
    return rows


def main(argv=None) -> list:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.host_overhead:
        return run_host_overhead(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    quick = args.quick or device.type != "cuda"
    batches = args.batch or ([16, 64] if quick else [256, 1024])
    sizes = args.size or ([32] if quick else [64, 128])
    dtypes = args.dtype or (["float32"] if device.type != "cuda" else ["float32", "bfloat16"])
    cases = [Case(b, 3, s, d) for d in dtypes for s in sizes for b in batches]
    if args.iw:
        if not hasattr(ops, "reparameterize_iw"):
            raise SystemExit("--iw: this checkout's vae_triton.ops has no reparameterize_iw")
        cases = [(b, lat, k, d) for d in dtypes for lat in args.latent for b in batches for k in args.iw]

    fused_backend = ops.backend_for(torch.empty(0, device=device))
    notes = [f"fused = vae_triton.ops with backend '{fused_backend}'"]
    if args.sigma != "fixed" or args.channels_last:
        notes.append(f"σ {args.sigma}" + (", channels_last images" if args.channels_last else ""))
    if args.logits:
        notes.append("loss: Gaussian NLL of sigmoid(logits); fused = gaussian_nll_logits (sigmoid in kernel)")
    if device.type != "cuda":
        notes.append(
            "CPU: the fused column is the torch reference (no Triton on CPU)"
            if fused_backend == "torch"
            else "CPU: the fused column runs Triton's interpreter — correctness only, its times mean nothing"
        )
    eager, fused = (eager_logits_loss, fused_logits_loss) if args.logits else (eager_loss, fused_loss)
    if args.iw:
        eager, fused = eager_iw, fused_iw
        notes.append("the IW bound's latent step: reparameterize_iw (z and log q − log p for K samples)")
    impls = {"eager": eager}
    if not args.no_compile:
        impls["compile"] = torch.compile(eager)
    impls["fused"] = fused

    timer = Timer(device, args.reps)
    copy_gbps = copy_ceiling_gbps(device, timer, quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {name} | copy ceiling {copy_gbps:.1f} GB/s (read + write) | " + "; ".join(notes))

    rows: list[Row] = []
    for case in tqdm(cases, desc="bench_ops", unit="case"):
        torch._dynamo.reset()  # each shape compiles on its own, not as a dynamic-shape graph
        if args.iw:
            rows += bench_iw_case(*case, device, timer, impls, copy_gbps, notes)
        else:
            rows += bench_case(case, device, timer, impls, copy_gbps, notes, args.sigma, args.channels_last)
    print(format_table(rows))
    for note in notes[1:]:
        print("note:", note)

    meta = {
        "device": name,
        "torch": torch.__version__,
        "copy_ceiling_gbps": round(copy_gbps, 2),
        "notes": notes,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "latent": args.latent if args.iw else LATENT,
        "loss": "iw" if args.iw else "logits" if args.logits else "mean",
        "sigma": args.sigma,
        "channels_last": args.channels_last,
        "timer": "triton.testing.do_bench median" if device.type == "cuda" else f"median of {args.reps} runs",
        "host_timer": "median host perf_counter µs to issue one call, device synced before and after",
    }
    write_rows(args.out, "bench_iw" if args.iw else "bench_ops", rows, meta)
    return rows


if __name__ == "__main__":
    main()
