"""The run configuration: one typed dataclass, built from the command line, saved as run_config.json.

Each field is a flag, declared once (`train.flags.flag`): its help and `--help` group, its range, whether
`--resume` may change it and whether the model card's reproduce line names it. The parser and
`train.command_line`'s sets are made from these declarations.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vae_triton.io import write_json_atomic
from vae_triton.likelihoods import LIKELIHOODS, Gaussian
from vae_triton.model import PRESETS, VAEConfig

from . import flags
from .celeba import SOURCES as CELEBA_SOURCES
from .datasets import DATASETS, NAMES
from .flags import flag
from .imagecache import BINARIZE_CHOICES, CHANNEL_CHOICES

LIKELIHOOD_CHOICES = tuple(LIKELIHOODS)
# Grey images up to this side get the `mlp` preset by default (MNIST-like data); larger or colour
# images get the dataset's conv preset.
MLP_MAX_SIZE = 32
# ---- the run plan: what a run without --steps / --epochs does (`plan_steps`, `train.loop`) ----
# The longest planned run: data of dSprites or CelebA size (100 passes would be 10^5-10^6 steps) keep the
# length they always had.
DEFAULT_STEPS = 10_000
# Passes over the training split a planned run makes: PLAN_EPOCHS at PLAN_REFERENCE_IMAGES images or more,
# PLAN_EPOCHS·sqrt(PLAN_REFERENCE_IMAGES / N) below, at most PLAN_MAX_EPOCHS. On BENCHMARKS.md §4's binarized
# digits (`mlp`, batch 100, cosine, the best held-out model kept; test NLL at K = 200): N = 4,000: 50 epochs
# 96.1 nats, 100 90.1, 150 90.4; N = 1,000: 100 epochs 112.6, 200 108.7, 400 108.5 (its held-out ELBO
# peaks at 70-80 epochs whatever the plan; its last model at 400 epochs is 137.3). So a data set 4× smaller
# gets 2× the passes and half the steps, never 4× the passes.
PLAN_EPOCHS = 100
PLAN_REFERENCE_IMAGES = 4_000
PLAN_MAX_EPOCHS = 400
# A Gaussian decoder's learned σ converges slowly: on scikit-learn's 8×8 digits (1,438 training images,
# BENCHMARKS.md §4b) the held-out ELBO still rose at step 3,000 at a high rate, and the 167-pass data plan
# (2,330 steps) gave 7.99 bits/dim against 6.97 for the best recipe; a cosine plan of DEFAULT_STEPS with the
# best model kept gave 7.00. So small data with a Gaussian likelihood plans DEFAULT_STEPS (the best held-out
# model is kept, so the longer plan cannot over-fit what is written).
# The batch a CPU run gets on data of at most SMALL_DATA images (BENCHMARKS.md §4's recipe: batch 100);
# larger data keeps DEFAULT_BATCH_SIZE.
SMALL_DATA = 60_000
SMALL_DATA_BATCH = {"cpu": 100}
# Evaluations a planned run makes (`--eval-every` follows the run's length, between EVAL_EVERY_MIN and
# EVAL_EVERY_MAX steps): enough points to pick the best model from and to see the held-out curve turn.
EVALS_PER_RUN = 20
EVAL_EVERY_MIN, EVAL_EVERY_MAX = 50, 500
# A validation split of a folder with no test split: this fraction of its training files (seeded by
# --split-seed), at least MIN_VAL_IMAGES of them; a default split needs that many, an explicit
# --val-fraction is refused below it. A folder with a test split picks its model there instead: carving 10 %
# out of BENCHMARKS.md §4's 4,000 digits cost 1.35 nats of test NLL (91.48 vs 90.13, 100 cosine epochs, K =
# 200), and with a cosine plan of the right length the best evaluation is the last one anyway.
VAL_FRACTION = 0.1
MIN_VAL_IMAGES = 10
# --time-limit planning: steps timed before the plan (after STEP_WARMUP untimed ones: allocator, caches,
# CUDA graph capture), and the share of the remaining time the planned steps may fill (evaluations,
# checkpoints and a slower neighbour take the rest).
PLAN_TIMED_STEPS, PLAN_WARMUP_STEPS = 20, 5
PLAN_TIME_SHARE = 0.95
# KL warm-up (Sønderby et al. 2016, "Ladder VAEs"; NVAE warms up over 30 % of training): β ramps from 0
# over this share of the steps unless --kl-warmup-steps says otherwise (bench/bench_digits.py measures it).
KL_WARMUP_FRACTION = 0.1
# A CPU step is compute-bound at 64 already; a GPU needs a bigger batch to stay busy (the CUDA-graph step
# at 256 is where the H200 measurements in BENCHMARKS.md were taken).
DEFAULT_BATCH_SIZE = {"cpu": 64, "cuda": 256}
# The largest --resolution: a 1024² RGB image is 3 MiB of uint8 cache and 12 MiB as a float batch row;
# a larger side is a typo that would allocate gigabytes per image when the data is decoded.
MAX_RESOLUTION = 1024
# Seeds are used as `seed * 1_000_003 + epoch` for torch generators, which take 64-bit seeds: a 32-bit
# seed leaves room for any number of epochs.
MAX_SEED = 2**32 - 1
DATA, MODEL, OPTIMISATION, HARDWARE, OUTPUT = "data", "model", "optimisation", "hardware", "output"


def default_kl_warmup_steps(total_steps: int) -> int:
    return round(KL_WARMUP_FRACTION * total_steps)


def plan_epochs(images: int) -> float:
    """Passes over `images` training images a planned run makes (see PLAN_EPOCHS)."""
    scaled = PLAN_EPOCHS * math.sqrt(PLAN_REFERENCE_IMAGES / max(images, 1))
    return min(PLAN_MAX_EPOCHS, max(PLAN_EPOCHS, scaled))


def plan_steps(images: int, batch_size: int, likelihood: str = "bernoulli") -> int:
    """The steps of a run planned from its data: `plan_epochs(images)` passes over `images` training images
    at `batch_size` (whole batches per pass), at most DEFAULT_STEPS, at least 1; DEFAULT_STEPS for small data
    with a Gaussian `likelihood` (see PLAN_MAX_EPOCHS)."""
    if likelihood == "gaussian" and images <= SMALL_DATA:
        return DEFAULT_STEPS
    per_epoch = max(1, images // batch_size)
    return max(1, min(DEFAULT_STEPS, round(plan_epochs(images) * per_epoch)))


def default_eval_every(total_steps: int) -> int:
    """--eval-every when it is not given: EVALS_PER_RUN evaluations over the run, EVAL_EVERY_MIN to
    EVAL_EVERY_MAX steps apart (a 10,000-step run evaluates every 500 steps)."""
    return min(EVAL_EVERY_MAX, max(EVAL_EVERY_MIN, math.ceil(total_steps / EVALS_PER_RUN)))


def default_preset(dataset: str, image_shape: tuple[int, int, int]) -> str:
    """The preset `--preset` defaults to for data of shape (C, H, W): `mlp` for grey images of at most
    MLP_MAX_SIZE px a side, else the dataset's conv preset (`train.datasets`)."""
    c, h, w = image_shape
    if c == 1 and max(h, w) <= MLP_MAX_SIZE:
        return "mlp"
    return DATASETS[dataset].preset


def default_batch_size(device: str, images: int | None = None) -> int:
    """The batch size a run on `device` ("auto", "cpu", "cuda", "cuda:1", ...) gets when none is given;
    `images`: the training split's size, when known (small data on a CPU gets SMALL_DATA_BATCH)."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    batch = DEFAULT_BATCH_SIZE.get(kind, DEFAULT_BATCH_SIZE["cpu"])
    if images is None:
        return batch
    if images <= SMALL_DATA and kind in SMALL_DATA_BATCH:
        batch = SMALL_DATA_BATCH[kind]
    return max(1, min(batch, images))  # a folder smaller than the batch trains on all of it at once


def _device_problem(name: str) -> str | None:
    import torch

    if name == "auto":
        return None
    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return "use auto, cpu, cuda or cuda:N (a GPU index)"
    return None


def _by_dataset(words) -> str:
    return "; ".join(f"{spec.name}: {words(spec)}" for spec in DATASETS.values())


_FLIPPED = ", ".join(spec.name for spec in DATASETS.values() if spec.hflip)
_POSITIVE = dict(above=0)
_COUNT = dict(at_least=1)  # a positive integer


@dataclass
class RunConfig:
    # ---- data ----
    dataset: str = flag(
        "dsprites",
        ". ".join(f"{spec.name}: {spec.summary}" for spec in DATASETS.values()),
        group=DATA,
        recipe="always",
        choices=NAMES,
    )
    data_dir: str | None = flag(
        None,
        "celeba: a local copy (a `save_to_disk` folder or a folder of parquet files in the flwrlabs/celeba "
        "schema); folder: the image directory",
        group=DATA,
        resumable=True,
    )
    split: str = flag("train", f"dataset split ({_by_dataset(lambda s: s.splits)})", group=DATA)
    test_fraction: float | None = flag(
        None,
        "folder without train/ and test/ subfolders: hold out this fraction of its files as the test split, "
        "chosen by a fixed seed (--split-seed), the same on every run",
        group=DATA,
        above=0,
        below=1,
        why="e.g. 0.2",
    )
    val_fraction: float | None = flag(
        None,
        "folder: hold out this fraction of the training files as the validation split, chosen by a fixed "
        "seed (--split-seed); the evaluations at --eval-every pick the model on it, and the test split stays "
        f"for the reported numbers. Default: {VAL_FRACTION:g} for a folder with neither a test split nor a "
        f"valid/ subfolder, when that is at least {MIN_VAL_IMAGES} images; a folder with a test split picks "
        "its model on the test split",
        group=DATA,
        above=0,
        at_most=0.5,
        why="e.g. 0.1",
    )
    split_seed: int = flag(
        0,
        "seed of the --test-fraction and --val-fraction splits (independent of --seed)",
        group=DATA,
        at_least=0,
        at_most=MAX_SEED,
    )
    limit: int | None = flag(
        None, "use only the first N images of the split (quick runs)", group=DATA, **_COUNT, unit="of images"
    )
    cache_dir: str | None = flag(
        None,
        "where decoded uint8 caches live (default: $VAE_TRITON_CACHE, else ~/.cache/vae-triton)",
        group=DATA,
        resumable=True,
        recipe="never",
    )
    celeba_source: str = flag(
        "flwrlabs/celeba",
        "Hub dataset for --dataset celeba: flwrlabs/celeba has the official train/valid/test splits "
        "(~11.7 GB); nielsr/CelebA-faces is one 1.4 GB train split",
        group=DATA,
        choices=tuple(CELEBA_SOURCES),
    )
    resolution: int | None = flag(
        None,
        "image side in pixels; images are resized only when their centered square crop is another size. "
        "Conv presets need a multiple of 2^(number of stride-2 layers). Default: 64; for a folder, the "
        "images' own size when they are square and at most 128 px",
        group=DATA,
        at_least=8,
        at_most=MAX_RESOLUTION,
        why="the image side in px",
    )
    channels: str = flag(
        "auto",
        "1: grey, 3: RGB, auto: grey when every image is grey, else RGB (CelebA: RGB, dsprites: grey)",
        group=DATA,
        choices=CHANNEL_CHOICES,
    )
    binarize: str = flag(
        "none",
        "for binary (Bernoulli) likelihoods: threshold at 0.5, or stochastic: a fresh Bernoulli(x) draw for "
        "each image in every epoch (dynamic binarization, as in the IWAE paper); held-out images use one "
        "fixed draw",
        group=DATA,
        choices=BINARIZE_CHOICES,
    )
    hflip: bool | None = flag(
        None,
        "random horizontal flips on the device",
        group=DATA,
        default_text=f"on for {_FLIPPED}, off otherwise",
    )
    # ---- model ----
    preset: str | None = flag(
        None,
        "architecture. Default from the data: dsprites for dsprites; for other data, mlp (two fully "
        f"connected hidden layers) for grey images of at most {MLP_MAX_SIZE} px a side (MNIST-like "
        "digits), else celeba64 (conv)",
        group=MODEL,
        recipe="always",
        choices=tuple(sorted(PRESETS)),
    )
    likelihood: str | None = flag(
        None,
        "decoder likelihood p(x|z): gaussian (mean = sigmoid of the decoder output, σ per --sigma) or "
        "bernoulli (logits; for binary images, see --binarize). Default: the preset's (bernoulli for mlp "
        "and dsprites, gaussian for celeba64 and small)",
        group=MODEL,
        choices=LIKELIHOOD_CHOICES,
    )
    latent_dim: int | None = flag(None, "latent size (default: the preset's)", group=MODEL, **_COUNT)
    sigma: str | None = flag(
        None,
        "Gaussian decoder σ: fixed at 1, or learned (scalar / per channel). Default: the preset's; scalar "
        "when --likelihood gaussian replaces a Bernoulli preset's likelihood (BENCHMARKS.md, 8×8 digits: a "
        "fixed σ = 1 collapses the posterior)",
        group=MODEL,
        choices=Gaussian.SIGMA_MODES,
    )
    # ---- optimisation ----
    steps: int | None = flag(
        None,
        f"optimizer steps to train for. Default: planned from the data, {PLAN_EPOCHS} passes over a "
        f"training split of {PLAN_REFERENCE_IMAGES:,} images or more (more passes, fewer steps on smaller "
        f"data, at most {PLAN_MAX_EPOCHS}) and at most {DEFAULT_STEPS} steps, planned to end at --time-limit "
        "when that comes first (timed on the first steps); the plan is written to run_config.json",
        group=OPTIMISATION,
        resumable=True,
        **_COUNT,
        unit="of optimizer steps",
    )
    epochs: float | None = flag(
        None,
        "passes over the split (alternative to --steps)",
        group=OPTIMISATION,
        resumable=True,
        finite=True,
        **_POSITIVE,
        unit="of passes over the split",
    )
    batch_size: int | None = flag(
        None,  # None: default_batch_size(device), resolved on construction
        f"global batch (split over processes); default {DEFAULT_BATCH_SIZE['cpu']} on CPU, "
        f"{DEFAULT_BATCH_SIZE['cuda']} on CUDA",
        group=OPTIMISATION,
        **_COUNT,
    )
    lr: float = flag(1e-3, "AdamW learning rate", group=OPTIMISATION, finite=True, **_POSITIVE)
    weight_decay: float = flag(0.0, "AdamW weight decay", group=OPTIMISATION, finite=True, at_least=0)
    lr_schedule: str = flag(
        "auto",
        "cosine decays the rate to 0 over the run. auto: cosine for a planned run (no --steps / --epochs) on "
        f"at most {SMALL_DATA:,} training images, the data that over-fits (BENCHMARKS.md §4), else constant",
        group=OPTIMISATION,
        choices=("auto", "constant", "cosine"),
    )
    beta: float = flag(
        1.0,
        "β: weight of the KL term (β=1 is the ELBO)",
        group=OPTIMISATION,
        recipe="always",
        finite=True,
        at_least=0,
        why="β multiplies the KL term",
    )
    kl_warmup_steps: int | None = flag(
        None,
        "ramp β linearly from 0 over this many steps (avoids early posterior collapse); 0 = off. Default: "
        f"the first {round(100 * KL_WARMUP_FRACTION)} %% of the run's steps (measured to help on the digits "
        "benchmark, BENCHMARKS.md)",
        group=OPTIMISATION,
        at_least=0,
    )
    free_bits: float = flag(
        0.0,
        "λ nats: each latent dim's batch-mean KL below λ is not penalised (0 = off)",
        group=OPTIMISATION,
        finite=True,
        at_least=0,
        why="nats per latent dimension",
    )
    objective: str = flag(
        "elbo",
        "what the step maximises: elbo, the β-ELBO with one posterior sample per image, or iwae, the "
        "importance-weighted bound with --iw-k samples per image (Burda et al. 2016; the decoder sees K·B "
        "samples a step). With iwae, β tempers log q(z|x) − log p(z) in every importance weight (β = 1 is "
        "the IW bound; the KL warm-up ramps it as for the elbo); --free-bits is elbo-only",
        group=OPTIMISATION,
        choices=("elbo", "iwae"),
    )
    iw_k: int | None = flag(
        None,
        "--objective iwae: importance samples K per image (K = 1 is the one-sample ELBO with a Monte Carlo "
        "KL). Default: 5 with --objective iwae",
        group=OPTIMISATION,
        **_COUNT,
        unit="of importance samples",
    )
    grad_clip: float = flag(  # inf: no clipping
        200.0, "clip the global gradient norm", group=OPTIMISATION, **_POSITIVE
    )
    max_bad_steps: int = flag(
        20,
        "a non-finite loss or gradient skips the step (on the device); stop after this many skipped in a "
        "row, or more than this many in all (checked when logging and before checkpoints)",
        group=OPTIMISATION,
        resumable=True,
        **_COUNT,
    )
    seed: int = flag(
        0,
        "seeds weights, noise and data order",
        group=OPTIMISATION,
        recipe="always",
        at_least=0,
        at_most=MAX_SEED,
    )
    time_limit: float | None = flag(
        None,
        "stop training after this many seconds of the training loop (data loading and the final evaluation "
        "not counted), then finish like a complete run: checkpoint, evaluation, model card",
        group=OPTIMISATION,
        resumable=True,
        metavar="SECONDS",
        **_POSITIVE,
        unit="of seconds",
    )
    # ---- hardware ----
    device: str = flag(
        "auto",
        "auto (cuda if available), cpu, cuda, cuda:1, ...",
        group=HARDWARE,
        resumable=True,
        check=_device_problem,
    )
    precision: str = flag(
        "auto", "auto: bf16 autocast on CUDA, fp32 on CPU", group=HARDWARE, choices=("auto", "fp32", "bf16")
    )
    compile: bool = flag(
        False, "torch.compile the model (the CUDA graph then captures it)", group=HARDWARE, resumable=True
    )
    channels_last: bool = flag(True, "NHWC memory format (faster convs on GPUs and on CPU)", group=HARDWARE)
    cuda_graph: bool = flag(
        True,  # capture the training step in a CUDA graph (CUDA only; see train/step.py)
        "CUDA: capture the whole training step (forward, backward, clipping, skip guard, AdamW) in one CUDA "
        "graph and replay it; β and the learning rate stay scheduled. Ignored on CPU and with DDP",
        group=HARDWARE,
        resumable=True,
    )
    num_threads: int | None = flag(
        None,
        "torch CPU threads, fixed. Default: adaptive on a one-process CPU run: start at the cores not busy "
        "now (round(cores − 1-min load average), at least 1), then time the steps and now and then try the "
        "other count (≤ 5 %% of the time), switching when it is > 10 %% faster, so a process that starts or "
        "stops on the same cores is followed; fixed where the count would change the model's gradient bits "
        "(runs stay reproducible), and with --compile, DDP or CUDA (train/threads.py)",
        group=HARDWARE,
        resumable=True,
        **_COUNT,
        unit="of CPU threads",
    )
    # ---- output ----
    out: str = flag(
        "runs/dsprites", "output directory", group=OUTPUT, resumable=True, recipe="always", own=True
    )
    resume: str | None = flag(
        None,
        "continue bit-for-bit from the latest checkpoint in --out (or from the given checkpoints "
        "directory); --steps may be raised to train longer",
        group=OUTPUT,
        resumable=True,
        recipe="never",
        own=True,
        const="auto",
    )
    checkpoint_every: int = flag(1000, "steps between checkpoints", group=OUTPUT, resumable=True, **_COUNT)
    log_every: int = flag(50, "steps between metrics.jsonl lines", group=OUTPUT, resumable=True, **_COUNT)
    eval_every: int | None = flag(
        None,
        "steps between evaluations: held-out ELBO on the validation split (else the test split; no "
        "gradient, fixed noise), per-dim KL and active units on training images, and PNG grids. Default: "
        f"{EVALS_PER_RUN} per run, {EVAL_EVERY_MIN} to {EVAL_EVERY_MAX} steps apart",
        group=OUTPUT,
        resumable=True,
        **_COUNT,
    )
    keep_best: bool | None = flag(
        None,
        "the model written to OUT/ is the one with the best held-out ELBO at the --eval-every evaluations "
        "(on the validation split; without one, on the test split, whose numbers are then optimistic), "
        "not the last step's; the card says which step was kept and why",
        group=OUTPUT,
        default_text="on when the data has a validation split (CelebA, a folder) or has at most "
        f"{SMALL_DATA:,} training images and a test split; off for dSprites",
    )
    eval_images: int = flag(
        2048,
        "held-out images for the final numbers (periodic evaluations use up to 512)",
        group=OUTPUT,
        resumable=True,
        **_COUNT,
    )
    push_to_hub: str | None = flag(
        None,
        "upload the final model and model card to this Hub model repo",
        group=OUTPUT,
        resumable=True,
        recipe="never",
        metavar="REPO_ID",
    )
    progress: bool = flag(
        True,
        "progress bars (training and cache building); --no-progress prints a log line every --log-every "
        "steps instead",
        group=OUTPUT,
        resumable=True,
        recipe="never",
        own=True,
    )
    quiet: bool = flag(
        False,
        "print only warnings and errors: no bars, start block, log lines or final block (scripts)",
        group=OUTPUT,
        resumable=True,
        recipe="never",
        own=True,
        negatable=False,
    )

    def __post_init__(self):
        spec = DATASETS.get(self.dataset)
        if spec is not None:  # an unknown name is refused by validate()
            # A folder's resolution and preset follow its images (`default_preset`): set once it is loaded.
            if self.preset is None and spec.resolution is not None:
                self.preset = spec.preset
            if self.resolution is None:
                self.resolution = spec.resolution
            if self.hflip is None:
                # Faces are left-right symmetric; elsewhere a flip can change what an image is (a mirrored
                # digit, dSprites' labelled posX), so flips are on by the dataset's spec only.
                self.hflip = spec.hflip
        # No --steps / --epochs: `train.loop` plans the length from the data (`plan_steps`) and writes it.
        # A defaulted batch may still follow the data's size there (`default_batch_size`).
        self.batch_defaulted = self.batch_size is None
        if self.batch_size is None:
            self.batch_size = default_batch_size(self.device)
        self.channels = str(self.channels)
        if self.data_dir is not None:
            # Absolute, so run_config.json finds the data from any working directory (train.evaluate).
            self.data_dir = os.path.abspath(os.path.expanduser(self.data_dir))
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the flag for the first value that cannot be used: each flag's own
        range (its declaration), then the rules between flags. Nothing is loaded or written."""

        def bad(name, value, fix):
            raise ValueError(f"{flags.option(name)} {value!r}: {fix}")

        flags.check_fields(self, bad)
        if self.steps is not None and self.epochs is not None:
            bad("epochs", self.epochs, f"give --steps or --epochs, not both (--steps {self.steps} was given)")
        spec = DATASETS[self.dataset]
        if spec.channels_problem(self.channels):
            bad("channels", self.channels, spec.channels_problem(self.channels))
        if spec.resolution_problem(self.resolution):
            bad("resolution", self.resolution, spec.resolution_problem(self.resolution))
        for name in ("test_fraction", "val_fraction"):
            if getattr(self, name) is not None and self.dataset != "folder":
                bad(name, getattr(self, name), "applies to --dataset folder only")
        if self.val_fraction is not None and self.split != "train":
            bad("val_fraction", self.val_fraction, "carves the validation split out of --split train only")
        self.check_resolution()

    def check_resolution(self) -> None:
        """The preset (when already known: a folder's follows its data) must take --resolution."""
        problem = _RESOLUTION.problem(self.resolution, int)
        if problem:
            raise ValueError(f"--resolution {self.resolution}: {problem}")
        if self.preset is not None and self.resolution is not None:
            self.model_config(1)

    def model_config(self, image_channels: int) -> VAEConfig:
        """The preset, with the image shape, latent size and likelihood this run asks for. A preset whose
        size rule refuses --resolution raises a ValueError that names the flag and the sizes that work."""
        if self.preset is None or self.resolution is None:
            raise ValueError("the preset and resolution are decided from the data: set them first")
        overrides = dict(image_channels=image_channels, image_size=self.resolution)
        if self.latent_dim is not None:
            overrides["latent_dim"] = self.latent_dim
        if self.sigma is not None:
            overrides["sigma"] = self.sigma
        elif self.likelihood == "gaussian" and VAEConfig.preset(self.preset).likelihood != "gaussian":
            # A Bernoulli preset's σ is a placeholder (fixed at 1): on real pixels it is far too wide, the
            # KL is not worth paying and the posterior collapses (sklearn's 8×8 digits: 9.38 → 7.20 bits/dim
            # with a learned scalar σ).
            overrides["sigma"] = "scalar"
        if self.likelihood is not None:
            overrides["likelihood"] = self.likelihood
        try:
            return VAEConfig.preset(self.preset, **overrides)
        except ValueError as e:
            if "image_size" not in str(e):
                raise
            works = [s for s in range(8, 257) if _preset_takes(self.preset, s)]
            shown = ", ".join(map(str, works[:12])) + (", ..." if len(works) > 12 else "")
            raise ValueError(
                f"--resolution {self.resolution}: the {self.preset!r} preset cannot take {self.resolution}×"
                f"{self.resolution} images. Sizes that work: {shown}. Change --resolution, or pick another "
                f"--preset"
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict(), indent=2)


_RESOLUTION = next(spec for f, spec in flags.declared(RunConfig) if f.name == "resolution")


def _preset_takes(preset: str, size: int) -> bool:
    try:
        VAEConfig.preset(preset, image_size=size)
    except ValueError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """The `python -m train` parser, made from RunConfig's flag declarations."""
    return flags.build_parser(
        RunConfig,
        prog="python -m train",
        description=(
            "Train a VAE (conv or MLP). Losses are per-image sums in nats: loss = mean(recon + β·KL). "
            "Output: model.safetensors + config.json (load with VAE.from_pretrained), run_config.json, "
            "metrics.jsonl, PNG grids, checkpoints/ and a README model card."
        ),
    )


def parse_args(argv=None) -> RunConfig:
    args = build_parser().parse_args(argv)
    return RunConfig(**vars(args))
