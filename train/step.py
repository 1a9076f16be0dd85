"""The training step behind `python -m train`: uint8 batch in, one AdamW update out, no host sync.

`make_train_step(model, optimizer, run_config)` builds it (bench/bench_train.py times the same builder).
One call, `step(batch_uint8, step_index)`, does: uint8 → [0, 1] float and channels_last, forward under bf16
autocast on CUDA (`--precision`), backward, gradient clipping, the skip guard (a non-finite loss or gradient
leaves weights and AdamW moments untouched — decided on the device), the fused AdamW update, and adds the
step's numbers to running sums on the device (`StepStats`) that the loop reads only when it logs.
The loss is the run's `--objective` (train/objectives.py): the β-ELBO of the model's forward, or the
importance-weighted bound over `--iw-k` samples per image (the same body, capture-safe as well).

On CUDA (`--cuda-graph`, the default) that whole body is captured once in a CUDA graph and replayed: after
`GRAPH_WARMUP_STEPS` real steps run eagerly on a side stream (as `torch.cuda.graph` requires), the next
step is captured and every later step is one `graph.replay()`. What changes per step lives in device
tensors the graph reads: the batch (a static uint8 buffer, `step.input`, that `BatchSource.batch(out=...)`
gathers into), β of the KL warm-up and the learning rate (`fill_` before each replay: the value travels
as a kernel argument, so there is no host→device copy to race with), and the skip flag. Gradients stay
allocated (`zero_grad(set_to_none=False)`) and AdamW is fused with `capturable=True`, reading the rate
from its device tensor. So schedules keep working inside the graph.

The graphed step is built to compute bitwise what the eager step (`--no-cuda-graph`) computes: both run
the same body with the same kernels, the same RNG offsets (the CUDA generator advances by the graph's
whole increment per replay, as the eager ops would) and the same fp32 learning-rate tensor; with cuDNN's
nondeterministic backward algorithms even two eager runs differ in the last bits, so the check
(`pytest -m gpu tests/train/test_step_graph.py`) runs with `cudnn.deterministic`. The rate AdamW reads is the
schedule's value rounded to float32 (a relative change ≤ 6e-8), on every device and path alike; on the CPU
the step equals a textbook torch loop given those rates bitwise (tests/train/test_step_graph.py).

Where the graph is not used, the step runs the same body eagerly and says why in one line: on the CPU,
with `--no-cuda-graph`, with DDP (capturing NCCL all-reduces is not validated here), with a non-fused
optimizer, or when the capture itself fails (then from that step on). With `--compile` the compiled model
is warmed up (compiled) eagerly first and then captured like the eager one ("compile, then capture");
a compiled forward/backward that cannot be captured falls back to eager compiled steps with that line.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from . import distributed, objectives
from .config import RunConfig

GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before the capture (torch.cuda.graph's recipe)


@dataclass
class StepResult:
    """One step's numbers as device tensors (a step never waits for the GPU): batch means in nats, the
    global gradient norm before clipping, and `ok` (False when the loss or the gradient was non-finite and
    the update was skipped). `beta` and `lr` are the step's β and learning rate (host floats). `counted`:
    the step already added these numbers to the `StepStats` it was built with. Under a CUDA graph the
    tensors are the graph's static outputs: the next step overwrites them (clone to keep one)."""

    ok: torch.Tensor
    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    grad_norm: torch.Tensor
    beta: float
    lr: float = float("nan")
    counted: bool = False


class StepStats:
    """Running sums on the device, read only when the loop logs (no sync per step).

    `sums` (4,) float32: loss, recon, kl, grad-norm summed over good steps. `counts` (4,) float32: good
    steps, skipped steps, the current run of skipped steps, and the longest such run."""

    def __init__(self, device: torch.device | str):
        self.sums = torch.zeros(4, device=device)
        self.counts = torch.zeros(4, device=device)

    def add(self, result: StepResult) -> None:
        ok = result.ok.float()
        values = torch.stack([result.loss, result.recon, result.kl, result.grad_norm]).float()
        self.sums += torch.where(result.ok, values, torch.zeros_like(values))
        counts = self.counts
        run = (counts[2] + 1) * (1 - ok)
        counts.copy_(torch.stack([counts[0] + ok, counts[1] + 1 - ok, run, torch.maximum(counts[3], run)]))


def beta_at(cfg: RunConfig, step: int) -> float:
    """β ramps linearly from 0 to cfg.beta over the first kl_warmup_steps steps (step is 0-based)."""
    if not cfg.kl_warmup_steps:  # 0, or None before the run resolves its default
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / cfg.kl_warmup_steps)


def lr_at(cfg: RunConfig, step: int, total_steps: int) -> float:
    """The learning rate of step `step` (0-based): constant, or cosine from cfg.lr to 0 over the run."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return cfg.lr


def autocast_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CUDA and CPU): one launch per step, and it can skip a non-finite
    update on the device (`found_inf`) without a host sync. The training step replaces the rate with a
    device tensor (and sets `capturable` when it captures a CUDA graph)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class TrainStep:
    """`step(batch_uint8, step_index) -> StepResult`; see the module docstring. Build with `make_train_step`.

    Attributes: `input` — the static uint8 batch buffer (None until the first call; pass it to
    `BatchSource.batch(step, out=...)` so batches land in it directly), `stats` — the `StepStats`,
    `module` — what the forward runs (the model, DDP- or torch.compile-wrapped), `graph_status` — one line
    on whether the step is a CUDA graph and, if not, why.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: RunConfig,
        *,
        dist_info: distributed.DistInfo | None = None,
        total_steps: int | None = None,
        stats: StepStats | None = None,
        note: Callable[[str], None] | None = None,
    ):
        self.device = next(model.parameters()).device
        self.cfg, self.optimizer = cfg, optimizer
        self.dist_info = dist_info or distributed.DistInfo(0, 1, 0, self.device)
        self.total_steps = total_steps or cfg.steps or 1
        self.note = note or _stderr
        # The step feeds uint8/255 images, in [0, 1] by construction: the model's input range check
        # (a host sync) has nothing to catch here.
        getattr(model, "_orig_mod", model).check_inputs = False
        # The ELBO is the model's own forward; --objective iwae wraps it (train/objectives.py).
        net: torch.nn.Module = objectives.training_module(model, cfg)
        if self.dist_info.enabled:
            net = DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            net = torch.compile(net)
        self.module = net
        self.amp = autocast_dtype(cfg, self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.stats = stats if stats is not None else StepStats(self.device)
        self.input: torch.Tensor | None = None
        # β and the learning rate live in device scalars refilled before every step: the graph (or a
        # compiled model) reads them there, so the schedules move without recapture or recompilation.
        self.beta_t = torch.zeros((), device=self.device)
        self.lr_t = torch.zeros((), device=self.device)
        # The fused AdamW skips the update on the device when found_inf is 1; other optimizers need the
        # host to decide (a sync per step) and cannot be captured.
        self.on_device_skip = bool(optimizer.defaults.get("fused"))
        if self.on_device_skip:
            for group in optimizer.param_groups:
                group["lr"] = self.lr_t  # after any load_state_dict, which would bring its own value
        blocker = self._graph_blocker()
        self.graph_wanted = blocker is None
        self._set_capturable(self.graph_wanted)
        if self.graph_wanted:
            self.graph_status = f"CUDA graph: on (captured after {GRAPH_WARMUP_STEPS} eager warm-up steps)"
        else:
            self.graph_status = f"CUDA graph: off — {blocker}; the step runs eagerly"
            if cfg.cuda_graph:  # asked for (the default) but not possible: say why, once
                self.note(self.graph_status)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, ...] | None = None
        self._eager_calls = 0

    def _set_capturable(self, on: bool) -> None:
        # Fused AdamW runs the same kernel either way; the flag only allows (or forbids) the capture.
        if self.on_device_skip:
            for group in self.optimizer.param_groups:
                group["capturable"] = on

    def _graph_blocker(self) -> str | None:
        if not self.cfg.cuda_graph:
            return "--no-cuda-graph"
        if self.device.type != "cuda":
            return f"this run is on {self.device.type} (CUDA graphs need a CUDA device)"
        if self.dist_info.enabled:
            return (
                f"not captured with DDP ({self.dist_info.world} processes): capturing NCCL all-reduces is "
                "not validated in this project"
            )
        if not self.on_device_skip:
            return f"{type(self.optimizer).__name__} is not a fused optimizer (the skip guard would sync)"
        return None

    # ---- the body: everything one step does on the device -------------------------------------------
    def _body(self) -> tuple[torch.Tensor, ...]:
        x = self.input.float().div_(255.0).contiguous(memory_format=self.memory_format)
        self.optimizer.zero_grad(set_to_none=False)  # a graph needs the .grad tensors to stay put
        ctx = (
            torch.autocast(self.device.type, dtype=self.amp, cache_enabled=False)  # no cache under capture
            if self.amp is not None
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.module(x, beta=self.beta_t, free_bits=self.cfg.free_bits)
        loss = out.loss.detach()
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        bad = distributed.all_max(bad, self.dist_info)  # every rank takes the same decision
        if self.on_device_skip:
            self.optimizer.found_inf = bad  # the fused kernel leaves weights and moments untouched when 1
            self.optimizer.step()
        elif not bad.item():  # host decision: only for optimizers without found_inf (never captured)
            self.optimizer.step()
        ok = bad == 0
        result = (ok, loss, out.recon_nll.detach().mean(), out.kl.detach().mean(), grad_norm)
        self.stats.add(StepResult(*result, beta=0.0))
        return result

    # ---- one call ---------------------------------------------------------------------------------
    def __call__(self, batch: torch.Tensor, step_index: int) -> StepResult:
        if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8 or batch.dim() != 4:
            got = f"{batch.dtype} {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch)
            raise ValueError(f"batch must be uint8 images (B, C, H, W), got {got}")
        if self.input is None:
            self.input = torch.empty(batch.shape, dtype=torch.uint8, device=self.device)
        if batch is not self.input:
            if batch.shape != self.input.shape:
                raise ValueError(
                    f"batch has shape {tuple(batch.shape)}, but this step runs on {tuple(self.input.shape)} "
                    "batches (its static input buffer): keep the batch size fixed"
                )
            self.input.copy_(batch, non_blocking=True)
        beta, lr = beta_at(self.cfg, step_index), lr_at(self.cfg, step_index, self.total_steps)
        self.beta_t.fill_(beta)  # a kernel argument, not a copy: nothing to race with the previous replay
        if self.on_device_skip:
            self.lr_t.fill_(lr)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self.graph is not None:
            self.graph.replay()
            outputs = self._static
        elif self.graph_wanted and self._eager_calls >= GRAPH_WARMUP_STEPS:
            outputs = self._capture_and_replay(step_index)
        elif self.graph_wanted:
            outputs = self._warm_up()
        else:
            outputs = self._body()
        self._eager_calls += self.graph is None
        return StepResult(*outputs, beta=beta, lr=lr, counted=True)

    def _warm_up(self) -> tuple[torch.Tensor, ...]:
        """A real step, run eagerly on a side stream (lazy initialisation — cuBLAS/cuDNN handles, AdamW
        state, torch.compile — happens here, outside the capture)."""
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # yes: captured later
            outputs = self._body()
        main.wait_stream(side)
        return outputs

    def _capture_and_replay(self, step_index: int) -> tuple[torch.Tensor, ...]:
        generator = torch.cuda.default_generators[self.device.index or 0]
        rng_before = generator.clone_state()
        graph = torch.cuda.CUDAGraph()
        try:
            # The outer stream context restores the current stream even if the capture raises.
            with torch.cuda.stream(torch.cuda.current_stream(self.device)), torch.cuda.graph(graph):
                static = self._body()
        except Exception as e:  # noqa: BLE001 — any capture failure: run eagerly, say why once
            # Nothing captured has run; put back the RNG state the capture had switched into graph mode.
            generator.graphsafe_set_state(rng_before)
            torch.cuda.synchronize(self.device)
            self.graph_wanted = False
            self._set_capturable(False)
            self.graph_status = (
                f"CUDA graph: off — the capture failed at step {step_index} ({_first_line(e)}); the step "
                "runs eagerly from here (--no-cuda-graph skips the attempt)"
            )
            self.note(self.graph_status)
            return self._body()
        self.graph, self._static = graph, static
        self.graph_status = f"CUDA graph: on — the training step was captured at step {step_index}"
        self.note(self.graph_status)
        graph.replay()  # the capture recorded this step without running it
        return static


def make_train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: RunConfig,
    *,
    dist_info: distributed.DistInfo | None = None,
    total_steps: int | None = None,
    stats: StepStats | None = None,
    note: Callable[[str], None] | None = None,
) -> TrainStep:
    """Build the training step: `step(batch_uint8, step_index) -> StepResult` (see `TrainStep`).

    `batch_uint8`: (B, C, H, W) uint8 on the model's device, the same shape every call (e.g.
    `train.data.BatchSource.batch(step, out=step.input)`); `step_index` (0-based) sets the KL warm-up β
    and the learning rate. `optimizer`: a fused AdamW (`make_optimizer`) for the on-device skip and the
    CUDA graph; its param groups' `lr` becomes the step's device tensor. `stats`: running sums to add to
    (default: a new `StepStats`, at `step.stats`). `note`: where the one line about the CUDA graph goes
    (default stderr). Raises ValueError for a batch that is not uint8 (B, C, H, W) or changes shape.
    """
    return TrainStep(
        model, optimizer, cfg, dist_info=dist_info, total_steps=total_steps, stats=stats, note=note
    )
