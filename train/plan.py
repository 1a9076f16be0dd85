"""The run plan: how long a run without --steps / --epochs trains, and what follows from its length.

`train.config` holds the constants (`PLAN_EPOCHS`, `DEFAULT_STEPS`, `VAL_FRACTION`, ...) and `plan_steps`,
the length planned from the data. Here: the folder's validation split checked or chosen from its file list
(`resolve_validation_split`), the schedule that spans the planned steps (`resolve_schedule`), and the
length fitted to --time-limit by timing the first steps and rewinding them (`fit_to_time_limit`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from . import config, distributed
from .checkpoint import rng_state, set_rng_state
from .config import RunConfig, default_kl_warmup_steps
from .console import Console
from .folder import has_test_split, has_valid_dir, split_files, validation_size
from .heldout import evaluate_fixed
from .step import StepStats, make_train_step


def resolve_validation_split(cfg: RunConfig, console: Console) -> None:
    """A new run on a folder: check --val-fraction against the folder, or choose the default one: for a
    folder with no test split, a VAL_FRACTION share of the training files when that is at least
    MIN_VAL_IMAGES of them and leaves a batch. From the file list alone: a refusal comes before any image
    is decoded or written.

    Raises ValueError naming --val-fraction when an explicit fraction holds out fewer than MIN_VAL_IMAGES
    files or leaves fewer than --batch-size; a default one that does is dropped with a notice."""
    if cfg.dataset != "folder" or cfg.split != "train" or cfg.data_dir is None:
        return
    root = Path(cfg.data_dir)
    if not root.is_dir() or has_valid_dir(root):
        return  # a missing folder is the loader's error; a valid/ folder is the validation split
    given = cfg.val_fraction is not None
    if not given and has_test_split(root, cfg.test_fraction):
        return  # the test split picks the model: carving one from train costs more (config.VAL_FRACTION)
    fraction = cfg.val_fraction if given else config.VAL_FRACTION
    files = len(split_files(root, "train", cfg.test_fraction, cfg.split_seed)[0])
    held = validation_size(files, fraction)
    if held >= config.MIN_VAL_IMAGES and files - held >= cfg.batch_size:
        cfg.val_fraction = fraction
        return
    why = (
        f"holds out {held} of the {files} training files, fewer than the {config.MIN_VAL_IMAGES} a "
        "validation split needs"
        if held < config.MIN_VAL_IMAGES
        else f"leaves {files - held} training files, fewer than --batch-size {cfg.batch_size}"
    )
    if given:
        raise ValueError(f"--val-fraction {fraction:g} {why}: change --val-fraction or add images")
    console.notice(
        f"no validation split: --val-fraction {fraction:g} {why}; the model is the last step's "
        "(add images to have the best one picked)"
    )


def resolve_schedule(cfg: RunConfig, total: int, planned: bool, images: int) -> None:
    """Fix the length and what follows it: a planned run's steps, the `auto` learning-rate schedule
    (cosine for a planned run on at most SMALL_DATA training images, the data that over-fits), --eval-every
    and the KL warm-up."""
    if planned:
        cfg.steps = total
    if cfg.lr_schedule == "auto":
        cfg.lr_schedule = "cosine" if planned and images <= config.SMALL_DATA else "constant"
    if cfg.eval_every is None:
        cfg.eval_every = config.default_eval_every(total)
    if cfg.kl_warmup_steps is None:
        cfg.kl_warmup_steps = default_kl_warmup_steps(total)


def plan_words(cfg: RunConfig, images: int, by_time: bool, likelihood: str) -> str:
    """The start block's words for a length planned from `images` training images."""
    steps = config.plan_steps(images, cfg.batch_size, likelihood)
    if steps < config.DEFAULT_STEPS:
        words = (
            f"planned from the data: {config.plan_epochs(images):.3g} passes over {images:,} images at batch "
            f"{cfg.batch_size}"
        )
    elif likelihood == "gaussian" and images <= config.SMALL_DATA:
        words = f"planned: {steps:,} steps, as for all small data with a Gaussian decoder (σ learns slowly)"
    else:
        words = f"planned: {config.DEFAULT_STEPS:,} steps, the most a planned run takes ({images:,} images)"
    if by_time:
        words += f"; fitted to --time-limit {cfg.time_limit:g} s on the first steps"
    return words


def fit_to_time_limit(
    model,
    optimizer,
    cfg: RunConfig,
    batches,
    total: int,
    x_eval: torch.Tensor,
    info,
    deadline: float,
    threads,
) -> tuple[int, float]:
    """The steps (at most `total`) that end a run by `deadline` (a `time.perf_counter()` time), and the
    seconds per step they were planned with.

    Times PLAN_TIMED_STEPS training steps (after PLAN_WARMUP_STEPS untimed ones) at each thread count an
    adaptive `threads` (`vae_triton.cpu_threads.AdaptiveThreads`) may use, keeps the fastest count (the
    run's speed, not the start's guess, sets the plan), and times one evaluation of `x_eval`; then rewinds
    the weights, AdamW state and noise streams to where they were: the run is then the one `--steps N`
    trains from scratch (its reproduce line), bit for bit (an adaptive count never changes the bits). The
    steps fill PLAN_TIME_SHARE of the time left, less EVALS_PER_RUN evaluations. Host syncs: only those
    around the timed steps (and under DDP one all-reduce, so that every rank plans the same steps)."""
    device = info.device
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments, noise = copy.deepcopy(optimizer.state_dict()), rng_state(device)
    step = make_train_step(
        model, optimizer, cfg, dist_info=info, total_steps=total, stats=StepStats(device), note=lambda _: None
    )
    counts = threads.candidates if threads.adapt else (threads.threads,)
    per_count, i = {}, 0
    for count in counts:
        threads.use(count)
        for j in range(config.PLAN_WARMUP_STEPS + config.PLAN_TIMED_STEPS):
            if j == config.PLAN_WARMUP_STEPS:
                _sync(device)
                t0 = time.perf_counter()
            step(batches.batch(i, out=getattr(step, "input", None)), i)
            i += 1
        _sync(device)
        per_count[count] = (time.perf_counter() - t0) / config.PLAN_TIMED_STEPS
    best = min(per_count, key=per_count.get)
    threads.use(best)
    per_step = per_count[best]
    del step
    model.load_state_dict(weights)
    optimizer.load_state_dict(moments)
    set_rng_state(noise, device)
    t0 = time.perf_counter()
    evaluate_fixed(model, x_eval)
    evaluation = 2 * (time.perf_counter() - t0)  # the held-out numbers, then those on training images
    budget = config.PLAN_TIME_SHARE * (deadline - time.perf_counter()) - config.EVALS_PER_RUN * evaluation
    fit = max(1, int(budget / per_step))
    if info.enabled:  # the slowest rank's plan
        fit = -int(distributed.all_max(torch.tensor(-float(fit), device=device), info).item())
    return min(total, fit), per_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
