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
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from vae_triton.io import write_text_atomic
from vae_triton.metrics import bits_per_dim
from vae_triton.model import VAE, VAEConfig, kl_per_dim

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .command_line import explicit_fields, reproduce_command, resume_config
from .config import RunConfig, default_kl_warmup_steps, default_preset
from .console import Console, cache_summary
from .data import DEFAULT_CACHE, BatchSource, DataUnavailableError, ImageDataset, dataset_for_split
from .paths import check_output_dir
from .report import failure_card, heldout_trend, interleave_rows, read_metrics, save_grid, write_model_card
from .step import (  # noqa: F401 — StepResult, autocast_dtype, beta_at, lr_at: names train.loop always had
    StepResult,
    StepStats,
    autocast_dtype,
    beta_at,
    lr_at,
    make_optimizer,
    make_train_step,
)
from .threads import set_num_threads

EVAL_IMAGES = 512
GRID = 64


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the last good checkpoint is kept."""


# ---- evaluation on a fixed batch --------------------------------------------------------------
@torch.no_grad()
def evaluate_fixed(model: VAE, x: torch.Tensor, *, seed: int = 0) -> dict:
    """ELBO terms, per-dim KL and active units on fixed images with fixed noise (no global RNG use)."""
    was_training = model.training
    model.eval()
    g = torch.Generator(device="cpu").manual_seed(seed)
    recon, kl, mus, lvs = [], [], [], []
    for chunk in x.split(256):
        eps = torch.randn(chunk.shape[0], model.config.latent_dim, generator=g).to(chunk.device)
        out = model(chunk, eps=eps)
        recon.append(out.recon_nll)
        kl.append(out.kl)
        mus.append(out.mu.float())
        lvs.append(out.logvar.float())
    model.train(was_training)
    mu, logvar = torch.cat(mus), torch.cat(lvs)
    recon_m, kl_m = torch.cat(recon).mean().item(), torch.cat(kl).mean().item()
    result = {
        "eval_recon": recon_m,
        "eval_kl": kl_m,
        "eval_elbo": -(recon_m + kl_m),
        "kl_per_dim": [round(v, 4) for v in kl_per_dim(mu, logvar, model.config.logvar_clamp).tolist()],
        # Active units (Burda et al.): Cov_x(E_q[z|x]) > 0.01 per dimension.
        "active_units": int((mu.var(dim=0) > 0.01).sum().item()),
        "eval_images": int(x.shape[0]),
    }
    # bits/dim with D = C·H·W of the data: dequantized for a density (Gaussian), discrete for a pmf over
    # binary pixels (Bernoulli); metrics.bits_per_dim states both conventions.
    # A Bernoulli decoder on grey pixels is no likelihood of the data: no bits/dim then.
    dequantized = model.config.likelihood == "gaussian"
    if dequantized or bool(((x == 0) | (x == 1)).all()):
        result["eval_bpd"] = bits_per_dim(recon_m + kl_m, model.config.num_pixels, dequantized=dequantized)
        result["eval_bpd_convention"] = "dequantized 8-bit" if dequantized else "binary pixels, a pmf"
    return result


@torch.no_grad()
def save_grids(model: VAE, x: torch.Tensor, out: Path, step: int | None) -> None:
    """Reconstructions of fixed images and prior samples at a fixed seed."""
    was_training = model.training
    model.eval()
    cols = min(8, len(x))
    half = x[: min(GRID // 2, len(x)) // cols * cols]  # whole rows only (tiny datasets)
    recon = interleave_rows(half.cpu(), model.reconstruct(half).cpu(), cols=cols)
    samples = model.sample(GRID, generator=torch.Generator(device="cpu").manual_seed(0))
    model.train(was_training)
    scale = 2 if model.config.image_size <= 32 else 1
    if step is None:
        save_grid(recon, out / "reconstructions.png", cols=cols, scale=scale)
        save_grid(samples, out / "samples.png", scale=scale)
    else:
        save_grid(recon, out / "grids" / f"recon-{step:07d}.png", cols=cols, scale=scale)
        save_grid(samples, out / "grids" / f"samples-{step:07d}.png", scale=scale)


# ---- the run ------------------------------------------------------------------------------------
def non_binary_share(ds: ImageDataset, max_images: int = 2000) -> float:
    """Share of pixels that are neither 0 nor 255 among the first `max_images` images."""
    x = np.asarray(ds.images[: min(len(ds), max_images)])
    return float(np.count_nonzero((x != 0) & (x != 255)) / max(x.size, 1))


def warn_if_not_binary(ds: ImageDataset, model_cfg: VAEConfig, cfg: RunConfig) -> None:
    """A Bernoulli likelihood on grey pixels is not a normalised likelihood of the data: say so."""
    if model_cfg.likelihood != "bernoulli" or getattr(cfg, "binarize", "none") not in (None, "none"):
        return
    share = non_binary_share(ds)
    if share > 0:
        print(
            f"warning: --likelihood bernoulli on data whose pixels are not binary ({share:.1%} of the pixels "
            "are neither 0 nor 255): the NLL is then a cross-entropy, not a likelihood of the data. Add "
            "--binarize threshold (or stochastic), or use --likelihood gaussian",
            file=sys.stderr,
        )


class HeldOutTracker:
    """The held-out ELBO during training (`--eval-every`), and the best model by it (`--keep-best`).

    Evaluates the first `eval_images` images of the run's test split in batches, without gradients,
    with a fixed noise seed (`evaluate_fixed`), outside the training step. With no test split it
    tracks nothing (a training-split number is not held out).
    """

    def __init__(self, cfg: RunConfig, model: VAE, out: Path, device):
        self.cfg, self.model, self.out = cfg, model, out
        split, ds = held_out_dataset(cfg, cfg.eval_images)
        self.split = split
        self.x = ds.tensor(range(len(ds)), device) if split != cfg.split else None
        self.best: dict | None = None
        self.last: dict | None = None

    def evaluate(self, step: int, metadata: dict) -> dict | None:
        if self.x is None:
            return None
        r = evaluate_fixed(self.model, self.x)
        record = {
            "step": step,
            "heldout_split": self.split,
            "heldout_images": r["eval_images"],
            "heldout_elbo": r["eval_elbo"],
            "heldout_recon": r["eval_recon"],
            "heldout_kl": r["eval_kl"],
        }
        self.last = record
        if self.best is None or record["heldout_elbo"] > self.best["heldout_elbo"]:
            self.best = record
            if self.cfg.keep_best:
                self.model.save_pretrained(
                    self.out / "best", metadata={**metadata, "selected_by": f"{self.split} ELBO", **record}
                )
        return record

    def describe(self, record: dict) -> str:
        return (
            f"held-out ELBO {record['heldout_elbo']:.2f} nats on {record['heldout_images']} {self.split} "
            f"images (recon {record['heldout_recon']:.2f}, KL {record['heldout_kl']:.2f})"
        )

    def summary(self) -> dict:
        """Numbers for the final metadata and model card (empty when nothing was tracked)."""
        if self.best is None:
            return {}
        best = {f"best_{k}": v for k, v in self.best.items() if k not in ("heldout_split", "heldout_images")}
        return {"heldout_split": self.split, **best, "best_saved": self.cfg.keep_best}


class MetricsLog:
    """metrics.jsonl, appended line by line; on resume, lines past the checkpoint step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
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


def train(cfg: RunConfig, *, argv: list[str] | None = None, stop_at: int | None = None) -> dict:
    """Run training as configured; return the final evaluation. `stop_at` ends early like Ctrl-C."""
    info = distributed.init(cfg.device)
    try:
        return _train(cfg, info, argv, stop_at)
    finally:
        distributed.shutdown(info)


def _train(cfg: RunConfig, info: distributed.DistInfo, argv, stop_at) -> dict:
    out = Path(cfg.out)
    device = info.device
    num_threads = set_num_threads(cfg.num_threads)
    console = Console(quiet=cfg.quiet, is_main=info.is_main)
    if info.is_main:
        check_output_dir(out)  # before any work: a bad --out fails now, not after training

    resume = None
    if cfg.resume:
        resume = load_checkpoint(out if cfg.resume == "auto" else Path(cfg.resume), map_location="cpu")
        # The saved run defines the experiment; only the length, logging and hardware may change.
        given = explicit_fields(argv) if argv is not None else _non_default_fields(cfg)
        cfg, notices = resume_config(cfg, resume["run_config"], given)
        for line in notices:
            console.notice(line)

    ds = _load_dataset(cfg, info)
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

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = VAE(model_cfg).to(device)
    model.check_inputs = False  # uint8 / 255 is in [0, 1] by construction; no host sync per step
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    batches = BatchSource(
        ds, cfg.batch_size, device, seed=cfg.seed, hflip=cfg.hflip, rank=info.rank, world=info.world
    )
    total = cfg.steps if cfg.steps is not None else math.ceil(cfg.epochs * batches.steps_per_epoch)
    if cfg.kl_warmup_steps is None:
        cfg.kl_warmup_steps = default_kl_warmup_steps(total)
    command = reproduce_command(cfg)
    if resume is not None and resume["step"] >= total:
        longer = replace(cfg, steps=2 * resume["step"], epochs=None)
        how = (  # a cosine schedule spans the planned steps: a longer one is another run
            f"start a new run with more --steps: {reproduce_command(replace(longer, out=f'{out}-longer'))}"
            if cfg.lr_schedule == "cosine"
            else f"raise --steps: {reproduce_command(longer)} --resume"
        )
        console.notice(
            f"{out} already finished: its checkpoint is at step {resume['step']} of {total}, so there is "
            f"nothing to train. To train longer, {how}"
        )
        return {"step": resume["step"], "already_finished": True}

    start = 0
    torch.manual_seed(cfg.seed + 1 + info.rank)  # the reparameterization noise differs between ranks
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"the checkpoint does not fit this model/optimizer: {str(e).splitlines()[0]}"
            ) from None
        start = resume["step"]
        rng = resume["rng"]
        if rng.shape[0] == info.world:
            set_rng_state(rng[info.rank], device)  # each rank continues its own noise stream
        else:
            if info.is_main:
                print(
                    f"warning: the checkpoint was written by {rng.shape[0]} process(es), this run has "
                    f"{info.world}: the noise streams restart (not a bit-exact continuation)",
                    file=sys.stderr,
                )
            torch.manual_seed(cfg.seed + 1 + info.rank + 7919 * start)

    if info.is_main:
        if resume is None and (out / "checkpoints" / "latest.json").exists():
            print(
                f"warning: {out} holds a checkpoint; starting a fresh run that will replace it "
                "(use --resume to continue it instead)",
                file=sys.stderr,
            )
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "run_config.json")
    log = MetricsLog(out / "metrics.jsonl", info.is_main, start if resume is not None else None)
    console.start_block(
        cfg=cfg, dataset=ds, model=model, device=_device_name(device), total=total, start=start,
        cache=cache_summary(ds.images, Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE),
    )  # fmt: skip
    # Running sums on the device, added by the step itself (inside its CUDA graph) and read back only when
    # logging: loss, recon, kl, grad-norm (good steps), then good steps, skipped steps, the current run of
    # skipped steps and the longest such run.
    stats = StepStats(device)
    step_fn = make_train_step(
        model, optimizer, cfg, dist_info=info, total_steps=total, stats=stats, note=console.say
    )
    fixed = _fixed_images(ds, min(EVAL_IMAGES, cfg.eval_images), device)
    tracker = HeldOutTracker(cfg, model, out, device) if info.is_main else None
    run_t0 = time.perf_counter()

    def checkpoint(step):
        distributed.check_in_sync(model, info)
        rng = distributed.all_gather_rows(rng_state(device), info)
        if info.is_main:
            save_checkpoint(out, model, optimizer, step, cfg.to_dict(), rng=rng)

    progress = None
    if info.is_main and cfg.progress and not cfg.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    step, last_good = start, start
    has_checkpoint, total_skipped, window_step0 = resume is not None, 0, start
    sums, counts = stats.sums, stats.counts
    window_t0, img_per_s = time.perf_counter(), float("nan")
    end = total if stop_at is None else min(total, stop_at)
    interrupted = out_of_time = False
    loop_t0 = time.perf_counter()
    deadline = None if cfg.time_limit is None else loop_t0 + cfg.time_limit
    model.train()
    try:
        while step < end:
            if deadline is not None and _past(deadline, info, device):
                out_of_time = True
                break
            # The batch is gathered straight into the step's static input (its CUDA graph reads it there).
            result = step_fn(batches.batch(step, out=getattr(step_fn, "input", None)), step)
            step += 1
            if not result.counted:  # a step that does not keep the running sums itself
                stats.add(result)
            log_now = step % cfg.log_every == 0 or step == end
            # The device counters are read (a host sync) only when logging, and before a checkpoint (which
            # syncs anyway): a diverged run stops at the next of these, its skipped steps left the weights
            # untouched.
            if log_now or step % cfg.checkpoint_every == 0:
                good, skipped, _, longest = counts.tolist()
                total_skipped += int(skipped)
                if skipped:
                    console.warn(
                        f"{int(skipped)} step(s) with a non-finite loss or gradient skipped "
                        f"before step {step}"
                    )
                if longest >= cfg.max_bad_steps or total_skipped > cfg.max_bad_steps:
                    what = (
                        f"{int(longest)} non-finite steps in a row"
                        if longest >= cfg.max_bad_steps
                        else f"{total_skipped} non-finite steps in all (more than --max-bad-steps)"
                    )
                    raise TrainingDiverged(
                        _failed(cfg, command, info, f"{what}, up to step {step}; stopped.", has_checkpoint,
                                last_good)  # fmt: skip
                    )
                counts[1] = 0
                counts[3] = counts[2]
            if log_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - window_t0
                good = counts[0].item()
                img_per_s = good * cfg.batch_size / max(elapsed, 1e-9)
                if good:
                    loss, recon, kl, gn = (sums / good).tolist()
                    record = {
                        "step": step,
                        "epoch": round(step / batches.steps_per_epoch, 4),
                        "loss": loss,
                        "recon": recon,
                        "kl": kl,
                        "beta": result.beta,
                        "grad_norm": gn,
                        "lr": result.lr,
                        "img_per_s": img_per_s,
                    }
                    log.write(record)
                    if progress is not None:
                        progress.set_postfix(loss=f"{loss:.1f}", kl=f"{kl:.1f}", img_s=f"{img_per_s:.0f}")
                    else:
                        console.log_line(record, end, elapsed / max(step - window_step0, 1))
                sums.zero_()
                counts[0] = 0
                window_t0, window_step0 = time.perf_counter(), step
            paused = time.perf_counter()  # evaluation, grids and checkpoints stay out of img/s
            if info.is_main and (step % cfg.eval_every == 0 or step == total):
                log.write({"step": step, "eval_split": cfg.split, **evaluate_fixed(model, fixed)})
                held_out = tracker.evaluate(step, _metadata(cfg, model_cfg, step, {}, partial=True))
                if held_out:
                    log.write(held_out)
                    if progress is not None:
                        progress.set_postfix_str(f"{tracker.split} ELBO {held_out['heldout_elbo']:.1f}")
                    else:
                        console.say(f"step {step:>{len(str(end))}}/{end}  {tracker.describe(held_out)}")
                save_grids(model, fixed, out, step)
            if step % cfg.checkpoint_every == 0 and step != total:
                checkpoint(step)
                last_good, has_checkpoint = step, True
            window_t0 += time.perf_counter() - paused
            if progress is not None:
                progress.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()

    loop_seconds = time.perf_counter() - loop_t0
    if out_of_time:
        distributed.barrier(info)
        if info.is_main:
            print(f"--time-limit {cfg.time_limit:g} s reached at step {step}/{total}", file=sys.stderr)
        total = step  # finish like a complete run: final checkpoint, evaluation and model card
    checkpoint(step)
    if interrupted or step < total:
        if info.is_main:
            model.save_pretrained(
                out, metadata=_metadata(cfg, model_cfg, step, {"img_per_s": img_per_s}, partial=True)
            )
            console.notice(
                f"stopped at step {step}/{total}; checkpoint saved. Continue with: {command} --resume"
            )
        if interrupted:
            raise KeyboardInterrupt
        distributed.barrier(info)
        return {"step": step}

    if 2 * total_skipped > step - start:  # most steps skipped: the weights are not a result
        raise TrainingDiverged(
            _failed(cfg, command, info, f"{total_skipped} of its {step - start} steps were skipped "
                    "(non-finite loss or gradient).", True, step)  # fmt: skip
        )
    final = {}
    if info.is_main:
        extra = {"num_threads": num_threads, "train_seconds": round(loop_seconds, 2)}
        extra.update(tracker.summary() if tracker else {})
        extra.update(heldout_trend(read_metrics(out / "metrics.jsonl")))
        if out_of_time:
            extra.update(time_limit_s=cfg.time_limit, planned_steps=end)
        final = final_report(model, cfg, model_cfg, step, img_per_s, device, command, out, extra=extra)
        stale = out / "eval.json"  # it measured the weights this run just replaced
        if stale.exists():
            stale.unlink()
            console.notice(f"removed {stale}: it evaluated the previous weights; run train.evaluate again")
        console.final_block(final=final, out=out, elapsed=time.perf_counter() - run_t0, reproduce=command,
                            likelihood=model_cfg.likelihood, lr_schedule=cfg.lr_schedule)  # fmt: skip
        if cfg.push_to_hub:
            url = model.push_to_hub(cfg.push_to_hub, extra_files=[str(out / "README.md")])
            console.say(f"pushed to {url}")
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


def held_out_dataset(cfg: RunConfig, limit: int | None = None) -> tuple[str, ImageDataset]:
    """The run's test split (first `limit` images), or its training split when the data has no test
    split (e.g. a local CelebA copy without one): returns (split name, dataset)."""

    def load(split: str) -> ImageDataset:
        return dataset_for_split(cfg.to_dict(), split, limit=limit, progress=cfg.progress and not cfg.quiet)

    try:
        ds = load("test")
        if ds.split == "test":  # a loader without splits hands back everything under its own name
            return "test", ds
    except (DataUnavailableError, ValueError):
        pass
    return cfg.split, load(cfg.split)


def final_report(model, cfg, model_cfg, step, img_per_s, device, command, out: Path, extra=None) -> dict:
    """Evaluate on held-out images, save weights + metadata, grids and the model card."""
    eval_split, held_out = held_out_dataset(cfg, cfg.eval_images)
    x = held_out.tensor(range(len(held_out)), device)
    final = {"step": step, "eval_split": eval_split, **evaluate_fixed(model, x), **(extra or {})}
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
