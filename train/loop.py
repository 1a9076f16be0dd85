"""The training loop behind `python -m train`.

`train.step.make_train_step(model, optimizer, run_config)` is the training step (also what
bench/bench_train.py times): uint8 batch in, one AdamW step out, a CUDA graph on CUDA. `train(run_config)`
wraps it with data, checkpoints, metrics, grids and the model card.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_triton.io import write_json_atomic, write_text_atomic
from vae_triton.likelihoods import likelihood_for
from vae_triton.model import VAE, VAEConfig

from . import config, distributed, objectives, plan
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .command_line import explicit_fields, reproduce_command, resume_config
from .config import RunConfig, default_preset
from .console import Console, cache_summary
from .data import DEFAULT_CACHE, BatchSource, ImageDataset, dataset_for_split
from .heldout import GRID, HeldOutTracker, evaluate_fixed, held_out_dataset, save_grids, selection_split
from .paths import check_output_dir, lock_run_folder
from .report import after_kept, failure_card, heldout_trend, read_metrics, write_model_card
from .step import (
    StepResult,
    StepStats,
    autocast_dtype,
    make_optimizer,
    make_train_step,
)
from .stop import Interrupted, StopRequest, signal_name, stop_signals, stopped
from .threads import AdaptiveThreads, model_check, thread_controller

EVAL_IMAGES = 512


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


# ---- the run ------------------------------------------------------------------------------------
def non_binary_share(ds: ImageDataset, max_images: int = 2000) -> float:
    """Share of pixels that are neither 0 nor 255 among the first `max_images` images."""
    x = np.asarray(ds.images[: min(len(ds), max_images)])
    return float(np.count_nonzero((x != 0) & (x != 255)) / max(x.size, 1))


def warn_if_not_binary(ds: ImageDataset, model_cfg: VAEConfig, cfg: RunConfig) -> None:
    """A Bernoulli likelihood on grey pixels is not a normalised likelihood of the data: say so."""
    if not likelihood_for(model_cfg).binary_only or cfg.binarize not in (None, "none"):
        return
    share = non_binary_share(ds)
    if share > 0:
        print(
            f"warning: --likelihood bernoulli on data whose pixels are not binary ({share:.1%} of the pixels "
            "are neither 0 nor 255): the NLL is then a cross-entropy, not a likelihood of the data. Add "
            "--binarize threshold (or stochastic), or use --likelihood gaussian",
            file=sys.stderr,
        )


class MetricsLog:
    """metrics.jsonl, appended line by line; on resume, lines past the checkpoint step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step and not r.get("final")]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif enabled and resume_step is None:
            write_text_atomic(path, "")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _load_dataset(cfg: RunConfig, info: distributed.DistInfo) -> ImageDataset:
    # Rank 0 builds the cache; the others wait, then open the finished file.
    def load():
        bars = cfg.progress and not cfg.quiet
        return dataset_for_split(cfg.to_dict(), cfg.split, limit=cfg.limit, progress=bars)

    ds = load() if info.is_main else None
    distributed.barrier(info)
    return ds if ds is not None else load()


def _fixed_images(ds: ImageDataset, n: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    idx = torch.randperm(len(ds), generator=g)[: min(n, len(ds))]
    return ds.tensor(idx.numpy(), device)


@dataclass
class RunState:
    """What a run holds between its phases: `_prepare` builds it, `_restore` continues a checkpoint,
    `_loop` trains, `_finish` writes the final report."""

    cfg: RunConfig
    info: distributed.DistInfo
    console: Console
    threads: AdaptiveThreads  # torch's CPU thread count: adaptive unless --num-threads (train.threads)
    resume: dict | None  # the checkpoint being continued (train.checkpoint.load_checkpoint), or None
    ds: ImageDataset
    model_cfg: VAEConfig
    model: VAE
    optimizer: torch.optim.Optimizer
    batches: BatchSource
    total: int  # the planned number of steps
    command: str  # the command line that reproduces the run
    plan: str = ""  # how the length was chosen, for the start block (empty: given by --steps / --epochs)
    plan_by_time: bool = False  # the length is planned from the data and still to be fitted to --time-limit
    # "data" or "time-limit" when the run planned its --steps (run_config.json's `length_plan`), else None
    length_plan: str | None = None
    start: int = 0  # the step this process started from (the checkpoint's step on resume)
    step: int = 0  # steps completed
    end: int = 0  # the step this process stops at (`stop_at` or `total`)
    # Built when the loop begins.
    log: MetricsLog | None = None
    stats: StepStats | None = None
    step_fn: Callable | None = None
    fixed: torch.Tensor | None = None  # fixed training images for the per-eval numbers and grids
    tracker: HeldOutTracker | None = None
    progress: Any = None  # the tqdm bar, or None
    stop: StopRequest | None = None
    # Bookkeeping of the loop.
    saved_step: int | None = None  # the step of the newest checkpoint on disk
    last_good: int = 0  # the newest checkpoint written by the loop, for the divergence message
    total_skipped: int = 0
    result: StepResult | None = None  # the last step's numbers (β and lr for the log line)
    window_t0: float = 0.0
    window_step0: int = 0
    img_per_s: float = float("nan")
    run_t0: float = 0.0
    loop_seconds: float = 0.0
    out_of_time: bool = False
    planned_steps: int = 0  # the steps planned before --time-limit cut the run short
    last_eval: int | None = None  # the step of the latest --eval-every evaluation

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def device(self) -> torch.device:
        return self.info.device


def train(cfg: RunConfig, *, argv: list[str] | None = None, stop_at: int | None = None) -> dict:
    """Run training as configured; return the final evaluation. `stop_at` ends early like Ctrl-C.

    SIGINT and SIGTERM stop the run after the step in progress, with a checkpoint of it, and raise
    `train.stop.Interrupted` (a KeyboardInterrupt) or `train.stop.Terminated` (SystemExit(143));
    a second signal raises at once. The previous signal handlers are back when this returns.
    """
    info = distributed.init(cfg.device)
    try:
        # One run per --out (the second one is refused, naming the first one's PID); refuses an empty --out.
        with lock_run_folder(cfg.out, enabled=info.is_main):
            run = _prepare(cfg, info, argv)
            done = _already_finished(run)
            if done is not None:
                return done
            _restore(run)
            with stop_signals(announce=info.is_main) as run.stop:
                stopped_early = _loop(run, stop_at)
                if stopped_early is not None:
                    return stopped_early
                run.stop.until = "the final report (seconds)"  # the model is worth the wait
                return _finish(run)
    finally:
        distributed.shutdown(info)


def _prepare(cfg: RunConfig, info: distributed.DistInfo, argv) -> RunState:
    """Settings (the checkpoint's on --resume), data, model, optimizer and the step count."""
    console = Console(quiet=cfg.quiet, is_main=info.is_main)
    if info.is_main:
        check_output_dir(Path(cfg.out))  # before any work: a bad --out fails now, not after training
    resume = None
    if cfg.resume:
        out = Path(cfg.out)
        resume = load_checkpoint(out if cfg.resume == "auto" else Path(cfg.resume), map_location="cpu")
        # The saved run defines the experiment; only the length, logging and hardware may change.
        given = explicit_fields(argv) if argv is not None else _non_default_fields(cfg)
        cfg, notices = resume_config(cfg, resume["run_config"], given)
        for line in notices:
            console.notice(line)
    objectives.prepare(cfg)  # --objective iwae: its flags checked, --iw-k's default filled in
    threads = thread_controller(cfg.num_threads, info.device, compiled=cfg.compile, world=info.world)

    if resume is None:
        plan.resolve_validation_split(cfg, console)
    ds = _load_dataset(cfg, info)
    if resume is None and cfg.batch_defaulted:
        cfg.batch_size = config.default_batch_size(cfg.device, len(ds))
    if cfg.resolution is None:  # a folder's own image size (train.folder)
        cfg.resolution = ds.image_shape[1]
    if cfg.preset is None:
        cfg.preset = default_preset(cfg.dataset, ds.image_shape)
        cfg.check_resolution()
    model_cfg: VAEConfig = cfg.model_config(ds.image_shape[0])
    if info.is_main:
        warn_if_not_binary(ds, model_cfg, cfg)
    if ds.image_shape[1:] != (cfg.resolution, cfg.resolution):
        raise ValueError(f"dataset images are {ds.image_shape}, expected {cfg.resolution}×{cfg.resolution}")
    _refuse_batchnorm_of_one(cfg, model_cfg, info)
    objectives.check_fits(cfg, model_cfg, info.world, info.device)  # K·B decoder rows fit the device

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = VAE(model_cfg).to(info.device)
    model.check_inputs = False  # uint8 / 255 is in [0, 1] by construction; no host sync per step
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Adapt the CPU thread count only where it cannot change this model's gradients (train.threads).
    threads.require_exact(
        model_check(
            model,
            (cfg.batch_size, *ds.image_shape),
            channels_last=cfg.channels_last,
            amp=autocast_dtype(cfg, info.device),
        )
    )
    optimizer = make_optimizer(model, cfg)
    batches = BatchSource(
        ds, cfg.batch_size, info.device, seed=cfg.seed, hflip=cfg.hflip, rank=info.rank, world=info.world
    )
    planned = cfg.steps is None and cfg.epochs is None
    if planned:  # no --steps / --epochs: the length follows the data (and --time-limit, once timed)
        cfg.steps = config.plan_steps(len(ds), cfg.batch_size, model_cfg.likelihood)
    total = cfg.steps if cfg.steps is not None else math.ceil(cfg.epochs * batches.steps_per_epoch)
    # Rank 0 alone evaluates and keeps the model (the other ranks need not open the held-out splits).
    found = selection_split(cfg, limit=1) if info.is_main else ("valid", None)
    if cfg.keep_best is None:  # a validation split picks without bias; small data over-fits, so there
        # the test split picks (BENCHMARKS.md §4: carving a validation split out of 4,000 digits cost more)
        cfg.keep_best = found is not None and (found[0] == "valid" or len(ds) <= config.SMALL_DATA)
    if cfg.keep_best and found is None:
        raise ValueError(
            "--keep-best: the data has no held-out split to pick the model on; add a valid/ or test/ "
            "subfolder, pass --val-fraction 0.1, or drop --keep-best"
        )
    plan_by_time = (
        planned and cfg.time_limit is not None and total > config.PLAN_WARMUP_STEPS + config.PLAN_TIMED_STEPS
    )
    if not plan_by_time:
        plan.resolve_schedule(cfg, total, planned, len(ds))
    run = RunState(
        cfg,
        info,
        console,
        threads,
        resume,
        ds,
        model_cfg,
        model,
        optimizer,
        batches,
        total,
        command="",
        plan_by_time=plan_by_time,
        length_plan="data" if planned else resume and resume["run_config"].get("length_plan"),
    )
    run.command = _reproduce(cfg, run.length_plan)
    if planned:
        run.plan = plan.plan_words(cfg, len(ds), plan_by_time, model_cfg.likelihood)
    return run


def _run_record(run: RunState) -> dict:
    """run_config.json (and the checkpoint's copy): every flag's value, and how a planned length was
    planned (`length_plan`: "data" or "time-limit")."""
    record = run.cfg.to_dict()
    if run.length_plan:
        record["length_plan"] = run.length_plan
    return record


def _reproduce(cfg: RunConfig, length_plan: str | None) -> str:
    """The command that trains this run again. A length fitted to --time-limit is in its --steps: the
    limit is left out, so that a slower machine trains the same steps instead of stopping earlier."""
    return reproduce_command(replace(cfg, time_limit=None) if length_plan == "time-limit" else cfg)


def _already_finished(run: RunState) -> dict | None:
    """On --resume of a run whose checkpoint is at its last step: say so and return, unless the final
    report (model.safetensors, card, final metrics) is incomplete: then the run goes on to write it."""
    if run.resume is None or run.resume["step"] < run.total:
        return None
    cfg, step, out = run.cfg, run.resume["step"], run.out
    failure = run.resume["extra"].get("failed")
    if failure:  # the run ended by skipping most of its steps: its weights are no result to report
        raise TrainingDiverged(_failed(cfg, run.command, run.info, failure, True, step))
    missing = _report_missing(out, step)
    if missing:
        run.console.notice(
            f"{out} finished training at step {step}, but {' and '.join(missing)} "
            "of its final report are missing: writing them now"
        )
        return None
    longer = replace(cfg, steps=2 * step, epochs=None)
    how = (  # a cosine schedule spans the planned steps: a longer one is another run
        f"start a new run with more --steps: {reproduce_command(replace(longer, out=f'{out}-longer'))}"
        if cfg.lr_schedule == "cosine"
        else f"raise --steps: {reproduce_command(longer)} --resume"
    )
    run.console.notice(
        f"{out} already finished: its checkpoint is at step {step} of {run.total}, so there is "
        f"nothing to train. To train longer, {how}"
    )
    return {"step": step, "already_finished": True}


def _report_missing(out: Path, step: int) -> list[str]:
    """The parts of a finished run's final report at `step` that are not in `out`."""
    missing = []
    try:
        meta = json.loads((out / "config.json").read_text()).get("metadata") or {}
    except (OSError, ValueError, AttributeError):
        meta = {}
    final_model = meta.get("finished") is True and meta.get("steps") == step
    if not (out / "model.safetensors").is_file() or not final_model:
        missing.append("the final model.safetensors")
    if not (out / "README.md").is_file():
        missing.append("the model card README.md")
    if not any(r.get("final") and r.get("step") == step for r in read_metrics(out / "metrics.jsonl")):
        missing.append("the final metrics.jsonl line")
    return missing


def _restore(run: RunState) -> None:
    """Seed the noise streams and, on --resume, load the checkpoint's weights, optimizer and RNG state;
    then write run_config.json and open metrics.jsonl."""
    cfg, info, out = run.cfg, run.info, run.out
    torch.manual_seed(cfg.seed + 1 + info.rank)  # the reparameterization noise differs between ranks
    if run.resume is not None:
        try:
            run.model.load_state_dict(run.resume["model"])
            run.optimizer.load_state_dict(run.resume["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"the checkpoint does not fit this model/optimizer: {str(e).splitlines()[0]}"
            ) from None
        run.start = run.saved_step = run.last_good = run.resume["step"]
        rng = run.resume["rng"]
        if rng.shape[0] == info.world:
            set_rng_state(rng[info.rank], run.device)  # each rank continues its own noise stream
        else:
            if info.is_main:
                print(
                    f"warning: the checkpoint was written by {rng.shape[0]} process(es), this run has "
                    f"{info.world}: the noise streams restart (not a bit-exact continuation)",
                    file=sys.stderr,
                )
            torch.manual_seed(cfg.seed + 1 + info.rank + 7919 * run.start)
    run.step = run.start
    if info.is_main:
        if run.resume is None and (out / "checkpoints" / "latest.json").exists():
            print(
                f"warning: {out} holds a checkpoint; starting a fresh run that will replace it "
                "(use --resume to continue it instead)",
                file=sys.stderr,
            )
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run_config.json", _run_record(run), indent=2)
    run.log = MetricsLog(out / "metrics.jsonl", info.is_main, run.start if run.resume is not None else None)


def _begin_loop(run: RunState, stop_at: int | None) -> None:
    """The start block, the training step, the trackers and the progress bar."""
    cfg, info, device = run.cfg, run.info, run.device
    cache = cache_summary(run.ds.images, Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE)
    run.console.start_block(
        cfg=cfg,
        dataset=run.ds,
        model=run.model,
        device=_device_name(device),
        total=run.total,
        start=run.start,
        cache=cache,
        plan=run.plan,
        selection=_selection_words(run),
    )
    # Running sums on the device, added by the step itself (inside its CUDA graph) and read back only when
    # logging: loss, recon, kl, grad-norm (good steps), then good steps, skipped steps, the current run of
    # skipped steps and the longest such run.
    run.stats = StepStats(device)
    run.step_fn = make_train_step(
        run.model,
        run.optimizer,
        cfg,
        dist_info=info,
        total_steps=run.total,
        stats=run.stats,
        note=run.console.say,
    )
    run.fixed = _fixed_images(run.ds, min(EVAL_IMAGES, cfg.eval_images), device)
    run.run_t0 = time.perf_counter()
    if info.is_main and cfg.progress and not cfg.quiet:
        from tqdm.auto import tqdm

        run.progress = tqdm(total=run.total, initial=run.start, desc="train", unit="step", dynamic_ncols=True)
    run.window_step0 = run.start
    run.window_t0 = time.perf_counter()
    run.end = run.total if stop_at is None else min(run.total, stop_at)


def _loop(run: RunState, stop_at: int | None) -> dict | None:
    """Train from `run.step` to the end; stop between steps on a signal, `stop_at` or --time-limit.

    Returns None when the run reached its planned steps (or its time limit), {"step": n} when it stopped
    at `stop_at`; raises `train.stop.Interrupted`/`Terminated` after the checkpoint on a signal."""
    _make_tracker(run)
    planned_t0 = time.perf_counter()  # a length fitted to --time-limit: timing the steps counts in it
    if run.plan_by_time:
        _plan_to_time_limit(run, planned_t0 + run.cfg.time_limit)
    _begin_loop(run, stop_at)
    interrupted, signum = False, None
    loop_t0 = planned_t0 if run.plan_by_time else time.perf_counter()
    deadline = None if run.cfg.time_limit is None else loop_t0 + run.cfg.time_limit
    run.model.train()
    try:
        while run.step < run.end:
            if deadline is not None and _past(deadline, run.info, run.device):
                run.out_of_time = True
                break
            step_t0 = time.perf_counter()
            synced = _train_step(run)
            run.threads.observe(time.perf_counter() - step_t0)  # may change the CPU thread count
            _between_steps(run)
            if run.progress is not None:
                run.progress.update(1)
            signum = _stop_signal(run, synced) if run.step < run.end else None
            if signum:
                break
    except Interrupted:  # the second signal: no checkpoint of the step it cut short
        raise
    except KeyboardInterrupt:  # raised by code, or with train() off the main thread (no handler there)
        interrupted = True
    finally:
        if run.progress is not None:
            run.progress.close()
    run.loop_seconds = time.perf_counter() - loop_t0
    return _end_loop(run, interrupted, signum)


def _make_tracker(run: RunState) -> None:
    """The held-out tracker on rank 0, continuing the checkpoint's best evaluation on --resume."""
    if not run.info.is_main:
        return
    run.tracker = HeldOutTracker(run.cfg, run.model, run.device)
    if run.resume is not None:
        extra = run.resume["extra"]
        run.tracker.restore(
            extra.get("best"), run.resume.get("best_model"), extra.get("evaluations", 0), run.device
        )
        run.last_eval = extra.get("last_eval")


def _selection_words(run: RunState) -> str:
    """The start block's line on which model is kept."""
    tracker, cfg = run.tracker, run.cfg
    if tracker is None or tracker.split is None:
        return "the last step's (no held-out split)"
    every = f"every {cfg.eval_every:,} steps"
    if tracker.select:
        return f"the one with the best ELBO on the {tracker.split} split, evaluated {every}"
    return f"the last step's; the ELBO on the {tracker.split} split is evaluated {every}"


def _plan_to_time_limit(run: RunState, deadline: float) -> None:
    """Fit the planned length to --time-limit (`train.plan.fit_to_time_limit`) and write the plan."""
    cfg, device = run.cfg, run.device
    tracked = run.tracker is not None and run.tracker.x is not None
    x = run.tracker.x if tracked else _fixed_images(run.ds, min(EVAL_IMAGES, cfg.eval_images), device)
    args = (run.model, run.optimizer, cfg, run.batches, run.total, x, run.info, deadline, run.threads)
    total, per_step = plan.fit_to_time_limit(*args)
    plan.resolve_schedule(cfg, total, planned=True, images=len(run.ds))
    run.total, run.length_plan = total, "time-limit"
    words = plan.plan_words(cfg, len(run.ds), True, run.model_cfg.likelihood)
    run.plan = words + f" ({1000 * per_step:.1f} ms/step → {total:,} steps)"
    run.command = _reproduce(cfg, run.length_plan)
    if run.info.is_main:
        write_json_atomic(run.out / "run_config.json", _run_record(run), indent=2)


def _train_step(run: RunState) -> bool:
    """One step, its running sums and, at a logging or checkpoint step, the host-side checks and the log
    line. Returns whether this step read the device counters (a host sync)."""
    cfg = run.cfg
    # The batch is gathered straight into the step's static input (its CUDA graph reads it there).
    run.result = run.step_fn(run.batches.batch(run.step, out=getattr(run.step_fn, "input", None)), run.step)
    run.step += 1
    if not run.result.counted:  # a step that does not keep the running sums itself
        run.stats.add(run.result)
    log_now = run.step % cfg.log_every == 0 or run.step == run.end
    # The device counters are read (a host sync) only when logging, and before a checkpoint (which syncs
    # anyway): a diverged run stops at the next of these, its skipped steps left the weights untouched.
    synced = log_now or run.step % cfg.checkpoint_every == 0
    if synced:
        _check_skipped(run)
    if log_now:
        _log_window(run)
    return synced


def _check_skipped(run: RunState) -> None:
    """Warn about skipped (non-finite) steps; stop a run with too many of them."""
    counts, cfg = run.stats.counts, run.cfg
    good, skipped, _, longest = counts.tolist()
    run.total_skipped += int(skipped)
    if skipped:
        run.console.warn(
            f"{int(skipped)} step(s) with a non-finite loss or gradient skipped before step {run.step}"
        )
    if longest >= cfg.max_bad_steps or run.total_skipped > cfg.max_bad_steps:
        what = (
            f"{int(longest)} non-finite steps in a row"
            if longest >= cfg.max_bad_steps
            else f"{run.total_skipped} non-finite steps in all (more than --max-bad-steps)"
        )
        raise TrainingDiverged(
            _failed(
                cfg,
                run.command,
                run.info,
                f"{what}, up to step {run.step}; stopped.",
                run.saved_step is not None,
                run.last_good,
            )
        )
    counts[1] = 0
    counts[3] = counts[2]


def _log_window(run: RunState) -> None:
    """The metrics line of the logging window that ends at this step (means over its good steps)."""
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    elapsed = time.perf_counter() - run.window_t0
    sums, counts = run.stats.sums, run.stats.counts
    good = counts[0].item()
    run.img_per_s = good * run.cfg.batch_size / max(elapsed, 1e-9)
    if good:
        loss, recon, kl, gn = (sums / good).tolist()
        record = {
            "step": run.step,
            "epoch": round(run.step / run.batches.steps_per_epoch, 4),
            "loss": loss,
            "recon": recon,
            "kl": kl,
            "beta": run.result.beta,
            "grad_norm": gn,
            "lr": run.result.lr,
            "img_per_s": run.img_per_s,
        }
        run.log.write(record)
        if run.progress is not None:
            run.progress.set_postfix(loss=f"{loss:.1f}", kl=f"{kl:.1f}", img_s=f"{run.img_per_s:.0f}")
        else:
            run.console.log_line(record, run.end, elapsed / max(run.step - run.window_step0, 1))
    sums.zero_()
    counts[0] = 0
    run.window_t0, run.window_step0 = time.perf_counter(), run.step


def _between_steps(run: RunState) -> None:
    """--eval-every numbers and grids, and --checkpoint-every checkpoints (all kept out of img/s)."""
    cfg, step = run.cfg, run.step
    paused = time.perf_counter()
    if run.info.is_main and (step % cfg.eval_every == 0 or step == run.total):
        _evaluate(run, step)
    if step % cfg.checkpoint_every == 0 and step != run.total:
        _checkpoint(run)
        run.last_good = step
    run.window_t0 += time.perf_counter() - paused


def _evaluate(run: RunState, step: int) -> None:
    """The --eval-every numbers (training images, the held-out split) and grids of `step` (rank 0)."""
    run.log.write({"step": step, "eval_split": run.cfg.split, **evaluate_fixed(run.model, run.fixed)})
    held_out = run.tracker.evaluate(step)
    if held_out:
        run.log.write(held_out)
        if run.progress is not None:
            run.progress.set_postfix_str(f"{run.tracker.split} ELBO {held_out['heldout_elbo']:.1f}")
        else:
            where = f"step {step:>{len(str(run.end))}}/{run.end}"
            run.console.say(f"{where}  {run.tracker.describe(held_out)}")
    save_grids(run.model, run.fixed, run.out, step)
    run.last_eval = step


def _stop_signal(run: RunState, synced: bool) -> int | None:
    """The stop signal to act on now, or None. One process acts on its own request at once; under DDP
    the ranks agree (the largest signal number any rank got) at the steps where they read the device
    counters anyway (--log-every and --checkpoint-every), so all stop after the same step."""
    signum = run.stop.signum or 0
    if run.info.enabled:
        if not synced:
            return None
        signum = int(distributed.all_max(torch.tensor(float(signum), device=run.device), run.info).item())
    return signum or None


def _checkpoint(run: RunState, extra: dict | None = None) -> None:
    """A checkpoint of the completed step `run.step` (every rank takes part; rank 0 writes)."""
    distributed.check_in_sync(run.model, run.info)
    rng = distributed.all_gather_rows(rng_state(run.device), run.info)
    if run.info.is_main:
        tracker, best = run.tracker, None
        if tracker is not None:  # the selection so far, so that --resume continues it
            extra = {**(extra or {}), "best": tracker.best, "evaluations": tracker.evaluations}
            extra["last_eval"] = run.last_eval
            best = tracker.best_state if tracker.select else None
        save_checkpoint(
            run.out,
            run.model,
            run.optimizer,
            run.step,
            _run_record(run),
            rng=rng,
            extra=extra,
            best_model=best,
        )
    run.saved_step = run.step


def _end_loop(run: RunState, interrupted: bool, signum: int | None) -> dict | None:
    """The checkpoint of the last step; for a run that stopped early, its partial model and how to go on."""
    cfg, info, step = run.cfg, run.info, run.step
    if run.out_of_time:
        distributed.barrier(info)
        if info.is_main:
            print(f"--time-limit {cfg.time_limit:g} s reached at step {step}/{run.total}", file=sys.stderr)
            if run.last_eval != step:  # the last step is a candidate for the kept model too
                _evaluate(run, step)
        run.planned_steps, run.total = run.end, step  # finish like a complete run
    finished = not interrupted and signum is None and step >= run.total
    failure = None
    if finished and 2 * run.total_skipped > step - run.start:  # most steps skipped: the weights are no result
        failure = (
            f"{run.total_skipped} of its {step - run.start} steps were skipped (non-finite loss or gradient)."
        )
    if run.saved_step != step or failure:
        _checkpoint(run, extra={"failed": failure} if failure else None)
    if failure:
        raise TrainingDiverged(_failed(cfg, run.command, info, failure, True, step))
    if finished:
        return None
    if info.is_main:
        metadata = _metadata(cfg, run.model_cfg, step, {"img_per_s": run.img_per_s}, partial=True)
        run.model.save_pretrained(run.out, metadata=metadata)
        _remove_stale_evaluation(run)
        why = f"{signal_name(signum)} received: " if signum else ""
        run.console.notice(
            f"{why}stopped at step {step}/{run.total}; checkpoint saved. "
            f"Continue with: {run.command} --resume"
        )
    if signum:
        raise stopped(signum)
    if interrupted:
        raise KeyboardInterrupt
    distributed.barrier(info)
    return {"step": step}


def _remove_stale_evaluation(run: RunState) -> None:
    """eval.json measured the weights that model.safetensors held before this run replaced them."""
    stale = run.out / "eval.json"
    if stale.exists():
        stale.unlink()
        run.console.notice(f"removed {stale}: it evaluated the previous weights; run train.evaluate again")


def _finish(run: RunState) -> dict:
    """The final report on rank 0: held-out evaluation, model.safetensors, grids, the card, the summary."""
    cfg, info, out = run.cfg, run.info, run.out
    final = {}
    if info.is_main:
        extra = {"num_threads": run.threads.threads, "num_threads_adaptive": run.threads.adapt}
        if run.step > run.start:  # this process trained (not only finishing a stopped report)
            extra["train_seconds"] = round(run.loop_seconds, 2)
        if run.tracker is not None:
            run.tracker.keep_best_weights()  # OUT/ gets the kept model: the best held-out one, or the last
            extra.update(run.tracker.summary(run.step))
        records = read_metrics(out / "metrics.jsonl")
        extra.update(heldout_trend(records))
        if "kept_step" in extra:
            extra.update(after_kept(records, extra["kept_step"]))
        if run.out_of_time:
            extra.update(time_limit_s=cfg.time_limit, planned_steps=run.planned_steps)
        if run.length_plan:
            extra.update(length_plan=run.length_plan, plan=run.plan or f"planned ({run.length_plan})")
        final = final_report(
            run.model, cfg, run.model_cfg, run.step, run.img_per_s, run.device, run.command, out, extra=extra
        )
        _remove_stale_evaluation(run)
        run.console.final_block(
            final=final,
            out=out,
            elapsed=time.perf_counter() - run.run_t0,
            reproduce=run.command,
            likelihood=run.model_cfg.likelihood,
            lr_schedule=cfg.lr_schedule,
        )
        if cfg.push_to_hub:
            url = run.model.push_to_hub(cfg.push_to_hub, extra_files=[str(out / "README.md")])
            run.console.say(f"pushed to {url}")
    distributed.barrier(info)  # the other ranks wait for rank 0's report, then all shut down together
    return final


def _past(deadline: float, info: distributed.DistInfo, device) -> bool:
    """Whether the --time-limit deadline has passed; every rank takes the same decision."""
    over = time.perf_counter() >= deadline
    if info.enabled:
        over = bool(distributed.all_max(torch.tensor(float(over), device=device), info).item())
    return over


def _non_default_fields(cfg: RunConfig) -> set[str]:
    """For `train(cfg)` called from Python: the fields set to something other than the default."""
    default = RunConfig(dataset=cfg.dataset)
    return {f.name for f in fields(RunConfig) if getattr(cfg, f.name) != getattr(default, f.name)}


def _refuse_batchnorm_of_one(cfg: RunConfig, model_cfg: VAEConfig, info: distributed.DistInfo) -> None:
    """BatchNorm cannot train on one image per batch (and fails outright on a 1×1 feature map): refuse
    before anything is written, with the fix."""
    per_rank = cfg.batch_size // info.world
    if model_cfg.norm == "batch" and per_rank < 2:
        raise ValueError(
            f"--batch-size {cfg.batch_size} gives {per_rank} image per process, and the {cfg.preset} preset "
            "uses BatchNorm, which needs at least 2 images per batch to train: use --batch-size "
            f"{2 * info.world} or more"
        )


def _failed(cfg, command, info, what: str, has_checkpoint: bool, last_good: int) -> str:
    """Write the failed run's card (no numbers) and return the message for the user."""
    kept = (
        f"The last good checkpoint (step {last_good}) is kept in {Path(cfg.out) / 'checkpoints'}"
        if has_checkpoint
        else "No checkpoint was written (the run failed before its first --checkpoint-every)"
    )
    advice = "lower --lr or --beta, or raise --kl-warmup-steps"
    if info.is_main:
        card = failure_card(cfg.to_dict(), command, f"{what} {kept}.")
        write_text_atomic(Path(cfg.out) / "README.md", card)
    return f"{what} {kept}; no model was saved. Try again with a fix: {advice}"


def _metadata(cfg: RunConfig, model_cfg: VAEConfig, step: int, numbers: dict, partial: bool = False) -> dict:
    return {
        "beta": cfg.beta,
        "dataset": cfg.dataset,
        "split": cfg.split,
        "steps": step,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "kl_warmup_steps": cfg.kl_warmup_steps,
        "free_bits": cfg.free_bits,
        "seed": cfg.seed,
        "finished": not partial,
        **{k: v for k, v in numbers.items() if not (isinstance(v, float) and math.isnan(v))},
    }


def final_report(model, cfg, model_cfg, step, img_per_s, device, command, out: Path, extra=None) -> dict:
    """Evaluate on held-out images, save weights + metadata, grids and the model card."""
    eval_split, held_out = held_out_dataset(cfg, cfg.eval_images)
    x = held_out.tensor(range(len(held_out)), device)
    final = {"step": step, "eval_split": eval_split, **evaluate_fixed(model, x)}
    final.update(objectives.final_numbers(model, cfg, x), **(extra or {}))  # iwae: its held-out IW bound
    final.update(img_per_s=_median_img_per_s(out / "metrics.jsonl", img_per_s), device=_device_name(device))
    model.save_pretrained(
        out,
        metadata=_metadata(
            cfg, model_cfg, step, {k: v for k, v in final.items() if k not in ("kl_per_dim", "step")}
        ),
    )
    save_grids(model, _fixed_images(held_out, GRID, device), out, None)
    write_model_card(out, cfg.to_dict(), final, command, model_cfg.to_dict())
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"final": True, **final}) + "\n")
    return final


def _median_img_per_s(metrics: Path, fallback: float) -> float:
    """Throughput over the whole run: the median of the logging windows (one window can hold an
    evaluation or a busy neighbour; the median ignores both)."""
    rates = [r["img_per_s"] for r in read_metrics(metrics) if "img_per_s" in r and not r.get("final")]
    return float(statistics.median(rates)) if rates else fallback


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    threads = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"
