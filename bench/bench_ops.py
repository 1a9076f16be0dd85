"""Benchmark the fused ELBO ops against the same loss in eager torch and under torch.compile.

    python -m bench.bench_ops                  # CUDA: B ∈ {256, 1024} × {3×64², 3×128²} × {fp32, bf16}
    python -m bench.bench_ops --quick          # small sizes (the default on a machine without CUDA)

The loss is the ELBO's kernel-shaped part, as a training step sees it: (mu, logvar) = params.chunk(2, 1),
z, kl = reparameterize_kl(mu, logvar); loss = mean_b(gaussian_nll(mean, x, log σ) + kl), σ fixed;
backward gets ∂loss = 1 and a random ∂z (what the decoder would send back). Three implementations:
  eager    vae_triton.reference (plain torch ops)
  compile  torch.compile of that same function (inductor, default mode)
  fused    vae_triton.ops: Triton kernels on CUDA; on CPU the dispatch gives the torch reference unless
           TRITON_INTERPRET=1 (then the interpreter, which measures nothing useful about speed)
Reported per phase (forward / backward / full): median µs (triton.testing.do_bench on CUDA, a timeit
median on CPU), speedups, achieved GB/s for the bytes the fused design must move (the counts in
vae_triton/kernels/*.py docstrings) as a share of a large-copy bandwidth measured in the same run, and
peak memory of a full step (CUDA only). Writes <out>/bench_ops.csv and <out>/bench_ops.json.
"""

from __future__ import annotations

import argparse
import csv
import io
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
    speedup_vs_eager: float
    speedup_vs_compile: float | None
    fused_bytes: int
    gb_per_s: float
    pct_of_copy: float
    peak_mem_mb: float | None


def fused_bytes(case: Case, phase: str) -> int:
    """Bytes the fused design moves (σ fixed): latent forward 3, backward 5 B×D passes; images forward
    2 (read m, x), backward 3 (read m, x, write ∂m) B×N passes. O(B) vectors are left out."""
    size = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    latent, image = case.batch * LATENT * size, case.batch * case.pixels * size
    fwd, bwd = 3 * latent + 2 * image, 5 * latent + 3 * image
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[phase]


def eager_loss(params, mean, x):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = reference.reparameterize_kl(mu, logvar)
    return (reference.gaussian_nll(mean, x, 0.0) + kl).mean(), z


def fused_loss(params, mean, x):
    mu, logvar = params.chunk(2, dim=1)
    z, kl = ops.reparameterize_kl(mu, logvar)
    return (ops.gaussian_nll(mean, x, 0.0) + kl).mean(), z


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


def bench_case(case: Case, device: torch.device, timer: Timer, impls: dict, copy_gbps: float) -> list[Row]:
    dtype = getattr(torch, case.dtype)
    params = torch.randn(case.batch, 2 * LATENT, device=device, dtype=dtype, requires_grad=True)
    mean = torch.rand(case.batch, case.channels, case.size, case.size, device=device, dtype=dtype)
    mean.requires_grad_()
    x = torch.rand_like(mean, requires_grad=False)
    grad_z = torch.randn(case.batch, LATENT, device=device, dtype=dtype)
    one = torch.ones((), device=device, dtype=torch.float32)
    leaves = (params, mean)

    times: dict[tuple[str, str], float] = {}
    peaks: dict[str, float | None] = {}
    for name, fn in impls.items():

        def forward(fn=fn):
            return fn(params, mean, x)

        def full(fn=fn):
            loss, z = fn(params, mean, x)
            torch.autograd.backward([loss, z], [one, grad_z])

        full()  # compile / warm up before any timing
        times[name, "forward"] = timer(forward)
        times[name, "backward"] = timer.after_setup(
            forward, lambda out: torch.autograd.backward([out[0], out[1]], [one, grad_z]), leaves
        )
        times[name, "full"] = timer(full, leaves)
        peaks[name] = None
        if device.type == "cuda":
            for t in leaves:
                t.grad = None
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            full()
            sync(device)
            peaks[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20

    rows = []
    for name in impls:
        for phase in PHASES:
            us = times[name, phase]
            nbytes = fused_bytes(case, phase)
            gbps = nbytes / (us * 1e-6) / 1e9
            vs_compile = times["compile", phase] / us if ("compile", phase) in times else None
            rows.append(Row(
                device=device.type, dtype=case.dtype, batch=case.batch,
                image=f"{case.channels}x{case.size}x{case.size}", latent=LATENT, impl=name, phase=phase,
                median_us=round(us, 2), speedup_vs_eager=round(times["eager", phase] / us, 3),
                speedup_vs_compile=None if vs_compile is None else round(vs_compile, 3),
                fused_bytes=nbytes, gb_per_s=round(gbps, 2), pct_of_copy=round(100 * gbps / copy_gbps, 1),
                peak_mem_mb=None if peaks[name] is None else round(peaks[name], 1),
            ))  # fmt: skip
    return rows


def format_table(rows: list[Row]) -> str:
    header = ("dtype", "B", "image", "impl", "phase", "µs", "×eager", "×compile", "GB/s", "%copy", "peak MB")
    lines = [header]
    for r in rows:
        lines.append((
            r.dtype, str(r.batch), r.image, r.impl, r.phase,
            f"{r.median_us:.1f}", f"{r.speedup_vs_eager:.2f}",
            "-" if r.speedup_vs_compile is None else f"{r.speedup_vs_compile:.2f}", f"{r.gb_per_s:.1f}",
            f"{r.pct_of_copy:.1f}", "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.1f}",
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


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
    p.add_argument("--reps", type=int, default=20, help="timing repetitions on CPU")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (1 gives steadier numbers on a shared machine)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench_ops"), help="folder for bench_ops.csv/.json")
    return p.parse_args(argv)


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    quick = args.quick or device.type != "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batch or ([16, 64] if quick else [256, 1024])
    sizes = args.size or ([32] if quick else [64, 128])
    dtypes = args.dtype or (["float32"] if device.type != "cuda" else ["float32", "bfloat16"])
    cases = [Case(b, 3, s, d) for d in dtypes for s in sizes for b in batches]

    fused_backend = ops.backend_for(torch.empty(0, device=device))
    notes = [f"fused = vae_triton.ops with backend '{fused_backend}'"]
    if device.type != "cuda":
        notes.append(
            "CPU: the fused column is the torch reference (no Triton on CPU)" if fused_backend == "torch"
            else "CPU: the fused column runs Triton's interpreter — correctness only, its times mean nothing"
        )  # fmt: skip
    impls = {"eager": eager_loss}
    if not args.no_compile:
        impls["compile"] = torch.compile(eager_loss)
    impls["fused"] = fused_loss

    timer = Timer(device, args.reps)
    copy_gbps = copy_ceiling_gbps(device, timer, quick)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {name} | copy ceiling {copy_gbps:.1f} GB/s (read + write) | " + "; ".join(notes))

    rows: list[Row] = []
    for case in tqdm(cases, desc="bench_ops", unit="case"):
        torch._dynamo.reset()  # each shape compiles on its own, not as a dynamic-shape graph
        rows += bench_case(case, device, timer, impls, copy_gbps)
    print(format_table(rows))

    meta = {
        "device": name, "torch": torch.__version__, "copy_ceiling_gbps": round(copy_gbps, 2), "notes": notes,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "latent": LATENT,
        "timer": "triton.testing.do_bench median" if device.type == "cuda" else f"median of {args.reps} runs",
    }  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    write_text_atomic(args.out / "bench_ops.csv", buf.getvalue())
    report = {"meta": meta, "rows": [asdict(r) for r in rows]}
    write_json_atomic(args.out / "bench_ops.json", report, indent=1)
    print(f"wrote {args.out / 'bench_ops.csv'} and {args.out / 'bench_ops.json'}")
    return rows


if __name__ == "__main__":
    main()
