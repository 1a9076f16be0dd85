"""Training-step and evaluation throughput: the reference baseline vs our default training path.

    python bench/bench_train.py --out runs/bench_train          # GPU: B=256 and 1024, full sizes
    python bench/bench_train.py --quick --out /tmp/bench-train     # CPU (automatic without CUDA)

Every configuration trains the same architecture (`--preset`, default `celeba64`) from the same
initial weights on CelebA-shaped synthetic uint8 images (162,770 × 3×64×64 on a GPU, like CelebA's
train split) fed through the real data path, `train.data.BatchSource` (the uint8 array resident on
the GPU, gathered and flipped there). Configurations (`--configs`):

- `baseline`     what most CelebA VAE repos run: eager fp32, NCHW, torch.randn_like reparameterization,
                 the Gaussian NLL sum and the KL written as plain torch ops (in our per-image nats, so the
                 losses compare), `torch.optim.Adam` with its defaults. No clipping, no skip guard.
- `cli`          exactly what `python -m train` runs: `train.step.make_train_step` with the CLI's defaults
                 (`RunConfig()`: on CUDA the whole step in one CUDA graph, β and the learning rate as
                 device tensors; fused Triton ops, bf16 autocast on CUDA, channels_last, fused AdamW,
                 clipping, the on-device skip guard and running sums), batches gathered by `BatchSource`
                 straight into the step's static input, and the loop's read of the running sums every
                 min(--log-every, --max-bad-steps) = 20 steps. This is the number users get.
- `cli-compile`  `cli` with `--compile`: the model compiled, then the step captured (CUDA only).
- `default`      the same step with `--no-cuda-graph` (eager; what the CLI ran before the graph).
- `default-fp32`, `default-nchw`, `default-cudnn-benchmark`: one knob of `default` changed (ablations).
- `compile`      `default` with `--compile` (torch.compile of the model, default mode, no graph).
- `compile-graphs` `default` with the model wrapped in torch.compile(mode="reduce-overhead") (CUDA graphs).
- `step-graph`   experimental, CUDA only: the whole `default` step (forward, backward, clipping, the
                 on-device skip guard, capturable fused AdamW) captured in one CUDA graph and replayed,
                 with β and the learning rate frozen in; not the CLI path — it shows what the per-step
                 launches cost.

GPU targets (one H200, celeba64, B=256): `cli` ≥ 4× `baseline` in the same run, ≥ 120k img/s,
a measured 162,770-image epoch ≤ 1.5 s. The command:

    python -m bench.bench_train --batch-sizes 256 --configs baseline cli cli-compile default step-graph \
        --skip-eval --time-limit 480 --out $OUT/train-graph

Reported per configuration and batch size: img/s (median, min, max over timed windows after warm-up),
the ratio to `baseline` at the same batch size, the projected time of a 162,770-image epoch, a
measured full epoch (GPU), peak memory the step adds on top of the resident data (CUDA), the final loss,
and a torch.profiler table of where the step's time goes. Then the evaluation throughput:
`vae_triton.metrics.iw_log_likelihood` with K=1000 importance samples, in images/s.

Outputs under --out (written atomically, rewritten after every configuration so a run cut short still
leaves its results): bench_train.json, bench_train.csv, bench_eval.csv, profile_<config>_B<batch>.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_train.py` from anywhere

from tqdm.auto import tqdm  # noqa: E402

from train.config import RunConfig  # noqa: E402
from train.data import BatchSource, ImageDataset  # noqa: E402
from train.step import StepResult, TrainStep, autocast_dtype, make_optimizer, make_train_step  # noqa: E402
from vae_triton import ops  # noqa: E402
from vae_triton.io import write_json_atomic, write_text_atomic  # noqa: E402
from vae_triton.model import VAE, VAEConfig  # noqa: E402

CELEBA_TRAIN_IMAGES = 162_770
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    kind: str = "train_step"  # "baseline" | "train_step" | "step_graph"; train_step with cli=True: the CLI
    precision: str = "auto"
    channels_last: bool = True
    compile_mode: str | None = None  # None, "cli" (RunConfig.compile), or a torch.compile mode
    cudnn_benchmark: bool = False
    cuda_only: bool = False
    cuda_graph: bool = False  # RunConfig.cuda_graph (the CLI's default is True)
    cli: bool = False  # run it as the CLI loop does (gather into the static input, periodic stats read)


VARIANTS = {
    v.name: v
    for v in [
        Variant(
            "baseline",
            "eager fp32 NCHW, plain-torch loss, torch.optim.Adam",
            kind="baseline",
            precision="fp32",
            channels_last=False,
        ),
        Variant(
            "cli",
            "python -m train's step: RunConfig defaults (CUDA graph on CUDA), as the CLI loop feeds it",
            cuda_graph=True,
            cli=True,
        ),
        Variant(
            "cli-compile",
            "cli + --compile: the compiled model, then the step captured",
            compile_mode="cli",
            cuda_graph=True,
            cli=True,
            cuda_only=True,
        ),
        Variant(
            "default",
            "the CLI step with --no-cuda-graph: fused ops, bf16 autocast (CUDA), channels_last, fused AdamW",
        ),
        Variant("default-fp32", "default with fp32 (no autocast)", precision="fp32"),
        Variant("default-nchw", "default without channels_last", channels_last=False),
        Variant(
            "default-cudnn-benchmark",
            "default with torch.backends.cudnn.benchmark=True",
            cudnn_benchmark=True,
            cuda_only=True,
        ),
        Variant("compile", "default + --compile (torch.compile, default mode)", compile_mode="cli"),
        Variant(
            "compile-graphs",
            "default + torch.compile(mode='reduce-overhead'): CUDA graphs",
            compile_mode="reduce-overhead",
            cuda_only=True,
        ),
        Variant(
            "step-graph",
            "experimental: the default step in one CUDA graph, β and lr frozen (not the CLI path)",
            kind="step_graph",
            cuda_only=True,
        ),
    ]
}
GPU_CONFIGS = list(VARIANTS)
CPU_CONFIGS = ["baseline", "cli", "default"]


# ---- the baseline: what most CelebA VAE repos do, in our nats convention ----------------------------
def baseline_loss(model: VAE, x: torch.Tensor, beta: float = 1.0, eps: torch.Tensor | None = None):
    """mean_b(Gaussian NLL sum + β·KL) with plain torch ops (no fused kernels), per-image nats."""
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    z = mu + std * (torch.randn_like(std) if eps is None else eps)
    mean = model.output_to_image(model.decode(z))  # the mean image, whatever the decoder outputs
    log_sigma = torch.as_tensor(model.effective_log_sigma(), device=x.device, dtype=torch.float32)
    log_sigma = log_sigma.reshape(-1, 1, 1) if log_sigma.dim() else log_sigma  # per channel or scalar
    nll = (x - mean) ** 2 / (2.0 * torch.exp(2.0 * log_sigma)) + log_sigma + HALF_LOG_2PI
    recon = nll.sum(dim=(1, 2, 3))
    kl = -0.5 * torch.sum(1.0 + logvar - mu**2 - logvar.exp(), dim=1)
    return (recon + beta * kl).mean()


def make_baseline_step(model: VAE, lr: float):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(batch: torch.Tensor, step_index: int) -> torch.Tensor:
        x = batch.float().div(255.0)
        loss = baseline_loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# ---- the experimental whole-step CUDA graph ---------------------------------------------------------
def make_graphed_step(model: VAE, cfg: RunConfig, batch_shape: tuple[int, ...], device: torch.device):
    """Capture forward + backward + clipping + the skip guard + capturable fused AdamW once; each step
    copies the batch in and replays. Warm-up runs on a side stream first, as torch.cuda.graph requires.
    β and the learning rate are frozen into the graph (no warm-up, constant schedule)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, capturable=True
    )
    params = [p for p in model.parameters() if p.requires_grad]
    amp = autocast_dtype(cfg, device)
    static_u8 = torch.zeros(batch_shape, dtype=torch.uint8, device=device)
    beta = torch.tensor(cfg.beta, device=device)

    def body():
        x = static_u8.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=amp, cache_enabled=False) if amp else contextlib.nullcontext()
        with ctx:
            loss = model(x, beta=beta).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        # The same on-device skip guard as make_train_step: fused AdamW leaves the weights alone when 1.
        bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        optimizer.found_inf = bad
        optimizer.step()
        return loss.detach(), bad == 0

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss, static_ok = body()

    def step(batch: torch.Tensor, step_index: int):
        static_u8.copy_(batch)
        graph.replay()
        return static_loss, static_ok.clone()  # the next replay overwrites static_ok

    return step


# ---- building a configuration -----------------------------------------------------------------------
def run_config_for(variant: Variant, preset: str, batch_size: int) -> RunConfig:
    resolution = VAEConfig.preset(preset).image_size
    return RunConfig(
        dataset="celeba",
        preset=preset,
        resolution=resolution,
        batch_size=batch_size,
        precision=variant.precision,
        channels_last=variant.channels_last,
        compile=variant.compile_mode == "cli",
        cuda_graph=variant.cuda_graph,
        progress=False,
    )


def build_step(variant: Variant, cfg: RunConfig, device: torch.device, batch_shape):
    """(step, model) for one configuration, from seed-0 weights: step(batch_uint8, i) returns a loss tensor,
    (loss, ok), or for the train_step kinds the `TrainStep`'s `StepResult`."""
    torch.manual_seed(0)
    model = VAE(cfg.model_config(batch_shape[1])).to(device)
    if variant.kind == "baseline":
        return make_baseline_step(model, cfg.lr), model
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if variant.kind == "step_graph":
        return make_graphed_step(model, cfg, batch_shape, device), model
    net = model
    if variant.compile_mode not in (None, "cli"):
        # make_train_step compiles with the default mode; hand it a model compiled with another mode.
        net = torch.compile(model, mode=variant.compile_mode)
    notes = []  # the step's one line on the CUDA graph (why it is off, or that its capture failed)
    step = make_train_step(net, make_optimizer(model, cfg), cfg, total_steps=cfg.steps, note=notes.append)
    step.notes = notes
    return step, model


# ---- timing -----------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepRunner:
    """Feeds batches from the BatchSource to a step function with a running step counter.

    A step returns its loss, (loss, ok) where `ok` says the update was applied, or a `StepResult` (a
    `TrainStep`, which counts skipped updates itself, on the device). Skipped updates are checked once at
    the end (`skipped_steps`), never per step. `read_every`: read the step's running sums back every this
    many steps, as the CLI loop does (0: never)."""

    def __init__(self, step_fn, batches: BatchSource, read_every: int = 0):
        self.step_fn, self.batches, self.i, self.loss = step_fn, batches, 0, None
        self.read_every = read_every
        self._skipped = 0

    def run(self, n: int) -> None:
        buffer_of = self.step_fn if isinstance(self.step_fn, TrainStep) else None
        for _ in range(n):
            batch = self.batches.batch(self.i, out=buffer_of.input if buffer_of is not None else None)
            out = self.step_fn(batch, self.i)
            self.i += 1
            if isinstance(out, StepResult):
                out = out.loss
                if self.read_every and self.i % self.read_every == 0:
                    self.step_fn.stats.counts.tolist()  # the loop's bad-step check (a sync)
            elif isinstance(out, tuple):
                out, ok = out
                self._skipped = self._skipped + (~torch.as_tensor(ok, device=out.device)).int()
            self.loss = out

    def skipped_steps(self) -> int:
        if isinstance(self.step_fn, TrainStep):
            return int(self.step_fn.stats.counts[1])
        return int(self._skipped)


def time_windows(runner: StepRunner, device, batch_size: int, warmup: int, windows: int, steps: int) -> dict:
    runner.run(warmup)
    synchronize(device)
    seconds = []
    for _ in range(windows):
        t0 = time.perf_counter()
        runner.run(steps)
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    img_s = [steps * batch_size / s for s in seconds]
    median = statistics.median(img_s)
    return {
        "img_s_median": median,
        "img_s_min": min(img_s),
        "img_s_max": max(img_s),
        "step_ms_median": 1e3 * batch_size / median,
        "epoch_s_projected": CELEBA_TRAIN_IMAGES / median,
        "windows": windows,
        "steps_per_window": steps,
        "warmup_steps": warmup,
    }


def time_full_epoch(runner: StepRunner, device, batches: BatchSource) -> float:
    """Seconds for one pass over the whole synthetic train split (steps_per_epoch steps)."""
    synchronize(device)
    t0 = time.perf_counter()
    runner.run(batches.steps_per_epoch)
    synchronize(device)
    return time.perf_counter() - t0


def profile_steps(runner: StepRunner, device, steps: int, path: Path, rows: int = 25) -> list[dict]:
    """torch.profiler over `steps` steps: the table goes to `path`, the top ops are returned."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        runner.run(steps)
        synchronize(device)
    averages = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    write_text_atomic(path, averages.table(sort_by=key, row_limit=rows) + "\n")
    total = sum(getattr(e, key) for e in averages) or 1.0
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:10]
    return [
        {
            "op": e.key,
            "self_us_per_step": getattr(e, key) / steps,
            "share": getattr(e, key) / total,
            "calls_per_step": e.count / steps,
        }
        for e in top
    ]


def peak_step_memory_mb(device, base_bytes: int) -> float | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) - base_bytes) / 2**20


def check_losses_agree(preset: str, device: torch.device, n: int = 8) -> dict:
    """The baseline's loss and our model's loss are the same number (fp32, same ε, same weights)."""
    torch.manual_seed(0)
    cfg = VAEConfig.preset(preset)
    model = VAE(cfg).to(device)
    x = torch.rand(n, cfg.image_channels, cfg.image_size, cfg.image_size, device=device)
    eps = torch.randn(n, cfg.latent_dim, device=device)
    with torch.no_grad():
        ours = model(x, eps=eps).loss.item()
        base = baseline_loss(model, x, eps=eps).item()
    rel = abs(ours - base) / max(abs(base), 1e-12)
    return {"ours": ours, "baseline": base, "relative_difference": rel, "agree": rel < 1e-4}


# ---- evaluation throughput --------------------------------------------------------------------------
def bench_eval(
    preset: str, device, images: int, num_samples: int, chunks: list[int | None], repeats: int
) -> list[dict]:
    """images/s of iw_log_likelihood with K=num_samples, per precision and per `chunk` (None: its default)."""
    try:
        from vae_triton.metrics import iw_log_likelihood
    except ImportError as e:
        return [{"error": f"vae_triton.metrics.iw_log_likelihood is not available: {e}"}]
    torch.manual_seed(0)
    cfg = VAEConfig.preset(preset)
    model = VAE(cfg).to(device).eval()
    x = torch.randint(0, 256, (images, cfg.image_channels, cfg.image_size, cfg.image_size), device=device)
    x = x.float().div_(255.0)
    precisions = ["fp32"] + (["bf16"] if device.type == "cuda" else [])
    rows = []
    for precision in precisions:
        for chunk in chunks:
            rows.append(_time_iw(iw_log_likelihood, model, x, num_samples, chunk, precision, repeats, device))
            rows[-1]["preset"] = preset
    return rows


def _time_iw(iw_log_likelihood, model, x, num_samples, chunk, precision, repeats, device) -> dict:
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    row = {"precision": precision, "images": len(x), "num_samples": num_samples, "chunk": chunk or "default"}
    try:
        with torch.no_grad(), amp:
            # Warm-up on the timed shapes (a few decoder passes), so cuDNN/allocator setup is not timed.
            iw_log_likelihood(model, x, min(num_samples, 64), chunk)
            seconds = []
            for _ in range(repeats):
                synchronize(device)
                t0 = time.perf_counter()
                ll = iw_log_likelihood(model, x, num_samples, chunk)
                synchronize(device)
                seconds.append(time.perf_counter() - t0)
        median = statistics.median(seconds)
        row.update(
            images_per_s=len(x) / median,
            seconds_median=median,
            decoded_samples_per_s=len(x) * num_samples / median,
            mean_log_likelihood_nats=float(ll.float().mean()),
            finite=bool(torch.isfinite(ll).all()),
        )
    except Exception as e:  # noqa: BLE001 — record and go on: GPU time is scarce
        row["error"] = f"{type(e).__name__}: {e}"
    return row


# ---- environment and output -------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    import triton

    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} cores",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "ops_backend": ops.backend_for(torch.empty(1, device=device)),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cpu":
        env["note"] = "CPU timings on a shared machine; only the relative numbers at CPU sizes mean anything"
    return env


def csv_text(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (list, dict))))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def save(out: Path, report: dict) -> None:
    write_json_atomic(out / "bench_train.json", report, indent=2)
    write_text_atomic(out / "bench_train.csv", csv_text(report["train"]))
    if report.get("eval"):
        write_text_atomic(out / "bench_eval.csv", csv_text(report["eval"]))


def goal_summary(rows: list[dict]) -> list[dict]:
    """Per batch size: the baseline, `cli` (the CLI's default) and the fastest configuration against issue
    10's goals (`cli` ≥ 4× the baseline's img/s, ≥ 120k img/s at B=256 on an H200, a 162,770-image epoch
    ≤ 1.5 s)."""
    summary = []
    for batch_size in sorted({r["batch_size"] for r in rows}):
        ok = [r for r in rows if r["batch_size"] == batch_size and "img_s_median" in r]
        if not ok:
            continue
        best = max(ok, key=lambda r: r["img_s_median"])
        cli = next((r for r in ok if r["config"] == "cli"), None)
        base = next((r for r in ok if r["config"] == "baseline"), None)
        epoch = best.get("epoch_s_measured", best["epoch_s_projected"])
        cli_epoch = cli and cli.get("epoch_s_measured", cli["epoch_s_projected"])
        summary.append(
            {
                "batch_size": batch_size,
                "baseline_img_s": base and base["img_s_median"],
                "cli_img_s": cli and cli["img_s_median"],
                "cli_ratio": cli and cli.get("ratio_vs_baseline"),
                "cli_epoch_s": cli_epoch,
                "cli_goal_4x_met": bool(cli and (cli.get("ratio_vs_baseline") or 0) >= 4.0),
                "cli_goal_120k_met": bool(cli and cli["img_s_median"] >= 120_000),
                "cli_goal_epoch_1_5s_met": bool(cli_epoch is not None and cli_epoch <= 1.5),
                "best_config": best["config"],
                "best_img_s": best["img_s_median"],
                "best_ratio": best.get("ratio_vs_baseline"),
                "best_epoch_s": epoch,
            }
        )
    return summary


def print_summary(report: dict) -> None:
    print(
        f"\ndevice: {report['environment']['device']} | torch {report['environment']['torch']} | "
        f"triton {report['environment']['triton']} | ops backend {report['environment']['ops_backend']}"
    )
    print(f"{'config':<26}{'B':>6}{'img/s':>12}{'×base':>8}{'epoch s':>10}{'peak MB':>10}")
    for r in report["train"]:
        if "error" in r:
            print(f"{r['config']:<26}{r['batch_size']:>6}  error: {r['error'][:80]}")
            continue
        ratio = r.get("ratio_vs_baseline")
        peak = r.get("peak_step_mb")
        print(
            f"{r['config']:<26}{r['batch_size']:>6}{r['img_s_median']:>12.1f}"
            f"{(f'{ratio:.2f}' if ratio else '-'):>8}{r['epoch_s_projected']:>10.2f}"
            f"{(f'{peak:.0f}' if peak is not None else '-'):>10}"
        )
    for g in report.get("goals", []):
        nan = float("nan")
        print(
            f"B={g['batch_size']}: best {g['best_config']} {g['best_img_s']:.0f} img/s, "
            f"×baseline {g['best_ratio'] or nan:.2f}, epoch {g['best_epoch_s']:.2f} s"
        )
        if g["cli_img_s"]:
            print(
                f"  cli (python -m train): {g['cli_img_s']:.0f} img/s (goal ≥ 120k on an H200), "
                f"×baseline {g['cli_ratio'] or nan:.2f} (goal ≥ 4), "
                f"epoch {g['cli_epoch_s']:.2f} s (goal ≤ 1.5 s)"
            )
    for r in report["train"]:
        if r.get("cuda_graph"):
            print(f"{r['config']} B={r['batch_size']}: {r['cuda_graph']}")
    for r in report.get("eval", []):
        if "error" in r:
            print(f"eval: error: {r['error']}")
        else:
            print(
                f"eval IW log-likelihood K={r['num_samples']} {r['precision']} chunk={r['chunk']}: "
                f"{r['images_per_s']:.2f} images/s ({r['decoded_samples_per_s']:.0f} decoded samples/s)"
            )


# ---- main -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default="runs/bench_train", help="directory for JSON/CSV/profiler tables")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU-sized run (tiny batches, few steps); default: on without CUDA",
    )
    p.add_argument("--preset", default="celeba64", help="VAEConfig preset to train")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 256 1024 (quick: 4 8)")
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        help=f"default: all on CUDA ({' '.join(GPU_CONFIGS)}); {' '.join(CPU_CONFIGS)} on CPU",
    )
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"synthetic train-split size (default {CELEBA_TRAIN_IMAGES}; quick: 4× the largest batch)",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 15; quick 2)")
    p.add_argument("--windows", type=int, default=None, help="timed windows (default 8; quick 5)")
    p.add_argument(
        "--window-steps", type=int, default=None, help="steps per timed window (default 25; quick 2)"
    )
    p.add_argument(
        "--full-epoch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time one full pass over --images (default: on unless quick)",
    )
    p.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="steps under torch.profiler (default 5; quick 1; 0 = off)",
    )
    p.add_argument(
        "--eval-images", type=int, default=None, help="images for the IW throughput (default 256; quick 4)"
    )
    p.add_argument(
        "--eval-samples", type=int, default=None, help="K importance samples (default 1000; quick 16)"
    )
    p.add_argument(
        "--eval-chunks",
        nargs="+",
        default=None,
        help="chunk= values for iw_log_likelihood ('default' = its own; default: default 16; quick: default)",
    )
    p.add_argument("--skip-eval", action="store_true", help="no evaluation throughput")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=540.0,
        help="seconds: start no new configuration past this (results so far are kept)",
    )
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    quick = device.type != "cuda" if args.quick is None else args.quick
    defaults = (
        dict(
            batch_sizes=[4, 8],
            warmup=2,
            windows=5,
            window_steps=2,
            full_epoch=False,
            profile_steps=1,
            eval_images=4,
            eval_samples=16,
            eval_chunks=["default"],
        )
        if quick
        else dict(
            batch_sizes=[256, 1024],
            warmup=15,
            windows=8,
            window_steps=25,
            full_epoch=True,
            profile_steps=5,
            eval_images=256,
            eval_samples=1000,
            eval_chunks=["default", "16"],
        )
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.configs is None:
        args.configs = GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS
    if args.images is None:
        args.images = 4 * max(args.batch_sizes) if quick else CELEBA_TRAIN_IMAGES
    for name in ("warmup", "windows", "window_steps", "images", "eval_images", "eval_samples"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if min(args.batch_sizes) < 1 or args.images < max(args.batch_sizes):
        raise ValueError(
            f"--images {args.images} must be at least the largest --batch-sizes {max(args.batch_sizes)}"
        )
    if args.preset not in ("celeba64", "small"):
        raise ValueError(f"--preset {args.preset!r}: use celeba64 or small (Gaussian RGB presets)")
    try:
        args.eval_chunks = [None if c == "default" else int(c) for c in args.eval_chunks]
    except ValueError:
        raise ValueError(f"--eval-chunks {args.eval_chunks}: give positive integers or 'default'") from None
    if any(c is not None and c < 1 for c in args.eval_chunks):
        raise ValueError(f"--eval-chunks {args.eval_chunks}: chunks must be positive")
    args.quick = quick
    return args


def synthetic_dataset(preset: str, n: int) -> ImageDataset:
    cfg = VAEConfig.preset(preset)
    shape = (n, cfg.image_channels, cfg.image_size, cfg.image_size)
    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return ImageDataset(images, name=f"synthetic-{preset}", split="train")


def main(argv=None) -> dict:
    args = parse_args(argv)
    from train.distributed import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args = resolve(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = environment(device)
    print(
        f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | cuda {env['cuda']} | "
        f"ops backend: {env['ops_backend']} | quick: {args.quick}"
    )
    if device.type == "cpu" and env["triton_interpret"] == "1":
        print(
            "warning: TRITON_INTERPRET=1 — the fused ops run in Triton's interpreter, "
            "not the torch reference",
            file=sys.stderr,
        )
    configs = [VARIANTS[c] for c in args.configs if device.type == "cuda" or not VARIANTS[c].cuda_only]
    skipped = [c for c in args.configs if VARIANTS[c] not in configs]
    report = {
        "environment": env,
        "args": vars(args),
        "skipped_cuda_only": skipped,
        "loss_check": check_losses_agree(args.preset, device),
        "train": [],
        "eval": [],
    }
    print(f"loss check (baseline vs ours, fp32, same ε): {report['loss_check']}")
    dataset = synthetic_dataset(args.preset, args.images)
    report["dataset"] = {
        "images": len(dataset),
        "shape": list(dataset.image_shape),
        "bytes": dataset.images.nbytes,
    }

    for batch_size in args.batch_sizes:
        batches = BatchSource(dataset, batch_size, device, seed=0, hflip=True)
        baseline_img_s = None
        for variant in tqdm(configs, desc=f"B={batch_size}", unit="config"):
            row = {
                "config": variant.name,
                "batch_size": batch_size,
                "preset": args.preset,
                "description": variant.description,
                "data_on_device": batches.on_device,
            }
            if time.perf_counter() - t_start > args.time_limit:
                row["error"] = f"skipped: past --time-limit {args.time_limit:.0f} s"
                report["train"].append(row)
                continue
            torch.backends.cudnn.benchmark = variant.cudnn_benchmark
            base_bytes = 0
            if device.type == "cuda":  # what the step adds on top of the resident data and leftovers
                synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base_bytes = torch.cuda.memory_allocated(device)
            try:
                t0 = time.perf_counter()
                cfg = run_config_for(variant, args.preset, batch_size)
                step_fn, _model = build_step(variant, cfg, device, (batch_size, *dataset.image_shape))
                read_every = min(cfg.log_every, cfg.max_bad_steps) if variant.cli else 0
                runner = StepRunner(step_fn, batches, read_every)
                runner.run(1)  # the first step (compilation, graph recording) is timed apart
                synchronize(device)
                row["first_step_s"] = time.perf_counter() - t0
                row.update(
                    time_windows(runner, device, batch_size, args.warmup, args.windows, args.window_steps)
                )
                if args.full_epoch:
                    row["epoch_s_measured"] = time_full_epoch(runner, device, batches)
                row["peak_step_mb"] = peak_step_memory_mb(device, base_bytes)
                row["loss_last"] = float(runner.loss)
                row["skipped_steps"] = runner.skipped_steps()
                if isinstance(step_fn, TrainStep):  # captured within the first steps (inside --warmup)
                    row["cuda_graph"] = step_fn.graph_status
                if not math.isfinite(row["loss_last"]) or row["skipped_steps"]:
                    raise RuntimeError(
                        f"last loss {row['loss_last']}, {row['skipped_steps']} non-finite steps skipped: "
                        "the benchmark is invalid"
                    )
                if variant.name == "baseline":
                    baseline_img_s = row["img_s_median"]
                if baseline_img_s:
                    row["ratio_vs_baseline"] = row["img_s_median"] / baseline_img_s
                if args.profile_steps:
                    path = out / f"profile_{variant.name}_B{batch_size}.txt"
                    try:  # a profiler failure must not discard the timing above
                        row["profile_top"] = profile_steps(runner, device, args.profile_steps, path)
                        row["profile_table"] = path.name
                    except Exception as e:  # noqa: BLE001
                        row["profile_error"] = f"{type(e).__name__}: {e}"
            except Exception as e:  # noqa: BLE001 — record and go on: GPU time is scarce
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            finally:
                torch.backends.cudnn.benchmark = False
                step_fn = runner = _model = None
                torch._dynamo.reset()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            report["train"].append(row)
            save(out, report)
        del batches
        gc.collect()

    if not args.skip_eval:
        report["eval"] = bench_eval(
            args.preset,
            device,
            args.eval_images,
            args.eval_samples,
            args.eval_chunks,
            repeats=3 if not args.quick else 1,
        )
    report["goals"] = goal_summary(report["train"])
    report["wall_s"] = time.perf_counter() - t_start
    save(out, report)
    print_summary(report)
    print(
        f"\nwrote {out}/bench_train.json, bench_train.csv, bench_eval.csv and profile_*.txt "
        f"({report['wall_s']:.0f} s)"
    )
    return report


if __name__ == "__main__":
    main()
