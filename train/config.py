"""The run configuration: one typed dataclass, built from the command line, saved as run_config.json."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vae_triton.io import write_json_atomic
from vae_triton.model import PRESETS, VAEConfig

from .imagecache import BINARIZE_CHOICES, CHANNEL_CHOICES

DATASET_CHOICES = ("dsprites", "celeba", "folder")
DEFAULT_STEPS = 10_000
DEFAULT_PRESET = {"dsprites": "dsprites", "celeba": "celeba64", "folder": "celeba64"}
FLIP_BY_DEFAULT = ("celeba",)
LIKELIHOOD_CHOICES = ("gaussian", "bernoulli")
# Grey images up to this side get the `mlp` preset by default (MNIST-like data); larger or colour
# images get the dataset's conv preset.
MLP_MAX_SIZE = 32
# KL warm-up (Sønderby et al. 2016, "Ladder VAEs"; NVAE warms up over 30 % of training): β ramps from 0
# over this share of the steps unless --kl-warmup-steps says otherwise (bench/bench_digits.py measures it).
KL_WARMUP_FRACTION = 0.1


def default_kl_warmup_steps(total_steps: int) -> int:
    return round(KL_WARMUP_FRACTION * total_steps)


def default_preset(dataset: str, image_shape: tuple[int, int, int]) -> str:
    """The preset `--preset` defaults to for data of shape (C, H, W): `mlp` for grey images of at most
    MLP_MAX_SIZE px a side, else the dataset's conv preset (DEFAULT_PRESET)."""
    c, h, w = image_shape
    if dataset != "dsprites" and c == 1 and max(h, w) <= MLP_MAX_SIZE:
        return "mlp"
    return DEFAULT_PRESET[dataset]
# A CPU step is compute-bound at 64 already; a GPU needs a bigger batch to stay busy (the CUDA-graph step
# at 256 is where the H200 measurements in DESIGN §8 were taken).
DEFAULT_BATCH_SIZE = {"cpu": 64, "cuda": 256}


def default_batch_size(device: str) -> int:
    """The batch size a run on `device` ("auto", "cpu", "cuda", "cuda:1", ...) gets when none is given."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return DEFAULT_BATCH_SIZE.get(device.split(":")[0], DEFAULT_BATCH_SIZE["cpu"])


@dataclass
class RunConfig:
    dataset: str = "dsprites"
    data_dir: str | None = None
    split: str = "train"
    limit: int | None = None
    cache_dir: str | None = None
    celeba_source: str = "flwrlabs/celeba"
    out: str = "runs/dsprites"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None  # None: default_batch_size(device), resolved on construction
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    beta: float = 1.0
    kl_warmup_steps: int | None = None
    free_bits: float = 0.0
    latent_dim: int | None = None
    resolution: int | None = None
    channels: str = "auto"
    binarize: str = "none"
    test_fraction: float | None = None
    split_seed: int = 0
    preset: str | None = None
    sigma: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    cuda_graph: bool = True  # capture the training step in a CUDA graph (CUDA only; see train/step.py)
    channels_last: bool = True
    grad_clip: float = 200.0
    max_bad_steps: int = 20
    hflip: bool | None = None
    seed: int = 0
    resume: str | None = None
    checkpoint_every: int = 1000
    log_every: int = 50
    eval_every: int = 500
    eval_images: int = 2048
    num_threads: int | None = None
    push_to_hub: str | None = None
    progress: bool = True
    # Likelihood, budget and held-out tracking (None = decided from the preset / data / run length).
    likelihood: str | None = None
    time_limit: float | None = None
    keep_best: bool = False
    quiet: bool = False

    def __post_init__(self):
        if self.preset is None and self.dataset != "folder":
            self.preset = DEFAULT_PRESET[self.dataset]
        if self.resolution is None and self.dataset != "folder":
            self.resolution = 64
        # folder: the resolution follows the images (their own size), set once the data is loaded.
        # folder: the preset follows the images' shape (`default_preset`), set once the data is loaded.
        if self.steps is None and self.epochs is None:
            self.steps = DEFAULT_STEPS
        if self.batch_size is None:
            self.batch_size = default_batch_size(self.device)
        if self.hflip is None:
            # Faces are left-right symmetric; elsewhere a flip can change what an image is (a mirrored
            # digit, dSprites' labelled posX), so flips are on for face data only.
            self.hflip = self.dataset in FLIP_BY_DEFAULT
        self.channels = str(self.channels)
        if self.data_dir is not None:
            # Absolute, so run_config.json finds the data from any working directory (train.evaluate).
            self.data_dir = os.path.abspath(os.path.expanduser(self.data_dir))
        self.validate()

    def validate(self) -> None:
        def bad(flag, value, fix):
            raise ValueError(f"--{flag.replace('_', '-')} {value!r}: {fix}")

        if self.dataset not in DATASET_CHOICES:
            bad("dataset", self.dataset, f"use one of {DATASET_CHOICES}")
        if self.preset is not None and self.preset not in PRESETS:
            bad("preset", self.preset, f"use one of {sorted(PRESETS)}")
        if self.likelihood is not None and self.likelihood not in LIKELIHOOD_CHOICES:
            bad("likelihood", self.likelihood, f"use one of {LIKELIHOOD_CHOICES}")
        if self.time_limit is not None and not self.time_limit > 0:
            bad("time_limit", self.time_limit, "must be a positive number of seconds")
        if self.num_threads is not None and self.num_threads < 1:
            bad("num_threads", self.num_threads, "must be a positive number of CPU threads")
        if (self.steps is None) == (self.epochs is None):
            bad("epochs", self.epochs, "give --steps or --epochs, not both")
        if self.steps is not None and self.steps < 1:
            bad("steps", self.steps, "must be a positive number of optimizer steps")
        if self.epochs is not None and self.epochs <= 0:
            bad("epochs", self.epochs, "must be positive")
        for name in (
            "batch_size",
            "checkpoint_every",
            "log_every",
            "eval_every",
            "eval_images",
            "max_bad_steps",
        ):
            if getattr(self, name) < 1:
                bad(name, getattr(self, name), "must be a positive integer")
        if not self.lr > 0:
            bad("lr", self.lr, "must be positive")
        if self.beta < 0:
            bad("beta", self.beta, "must be >= 0 (β multiplies the KL term)")
        if self.kl_warmup_steps is not None and self.kl_warmup_steps < 0:
            bad("kl_warmup_steps", self.kl_warmup_steps, "must be >= 0")
        if self.free_bits < 0:
            bad("free_bits", self.free_bits, "must be >= 0 nats per latent dimension")
        if self.grad_clip <= 0:
            bad("grad_clip", self.grad_clip, "must be positive")
        if self.precision not in ("auto", "fp32", "bf16"):
            bad("precision", self.precision, "use auto, fp32 or bf16")
        if self.lr_schedule not in ("constant", "cosine"):
            bad("lr_schedule", self.lr_schedule, "use constant or cosine")
        if self.limit is not None and self.limit < 1:
            bad("limit", self.limit, "must be a positive number of images")
        if self.sigma is not None and self.sigma not in ("fixed", "scalar", "channel"):
            bad("sigma", self.sigma, "use fixed, scalar or channel")
        if self.channels not in CHANNEL_CHOICES:
            bad("channels", self.channels, f"use one of {', '.join(CHANNEL_CHOICES)}")
        if self.binarize not in BINARIZE_CHOICES:
            bad("binarize", self.binarize, f"use one of {', '.join(BINARIZE_CHOICES)}")
        if self.dataset == "dsprites" and self.channels == "3":
            bad("channels", self.channels, "dsprites images are grey: use --channels auto or 1")
        if self.test_fraction is not None:
            if self.dataset != "folder":
                bad("test_fraction", self.test_fraction, "applies to --dataset folder only")
            if not 0.0 < self.test_fraction < 1.0:
                bad("test_fraction", self.test_fraction, "must lie strictly between 0 and 1 (e.g. 0.2)")
        self.check_resolution()

    def check_resolution(self) -> None:
        """The preset (when already known: a folder's follows its data) must take --resolution."""
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"--resolution {self.resolution}: must be at least 8 px")
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


def _preset_takes(preset: str, size: int) -> bool:
    try:
        VAEConfig.preset(preset, image_size=size)
    except ValueError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description=(
            "Train a VAE (conv or MLP). Losses are per-image sums in nats: loss = mean(recon + β·KL). "
            "Output: model.safetensors + config.json (load with VAE.from_pretrained), run_config.json, "
            "metrics.jsonl, PNG grids, checkpoints/ and a README model card."
        ),
        formatter_class=OneDefaultHelpFormatter,
    )
    d = RunConfig()
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASET_CHOICES,
        default=d.dataset,
        help="dsprites: procedural 64×64 sprites with factor labels (offline). celeba: Hugging Face "
        "`datasets` (or --data-dir), center crop 148 → resize to --resolution. folder: any "
        "directory of images (--data-dir), largest centered square → resize; unreadable files "
        "are skipped and counted",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="celeba: a local copy (a `save_to_disk` folder or a folder of parquet files in the "
        "flwrlabs/celeba schema); folder: the image directory",
    )
    g.add_argument(
        "--split",
        default=d.split,
        help="dataset split (dsprites: train/test/all; celeba: train/valid/test; folder: train/valid/test/"
        "all from train/, valid/, test/ subfolders or --test-fraction; a folder without them is all train)",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="folder without train/ and test/ subfolders: hold out this fraction of its files as the test "
        "split, chosen by a fixed seed (--split-seed), the same on every run",
    )
    g.add_argument(
        "--split-seed",
        type=int,
        default=d.split_seed,
        help="seed of the --test-fraction split (independent of --seed)",
    )
    g.add_argument(
        "--limit", type=int, default=None, help="use only the first N images of the split (quick runs)"
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        help="where decoded uint8 caches live (default: $VAE_TRITON_CACHE, else ~/.cache/vae-triton)",
    )
    g.add_argument(
        "--celeba-source",
        default=d.celeba_source,
        choices=("flwrlabs/celeba", "nielsr/CelebA-faces"),
        help="Hub dataset for --dataset celeba: flwrlabs/celeba has the official train/valid/test "
        "splits (~11.7 GB); nielsr/CelebA-faces is one 1.4 GB train split",
    )
    g.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image side in pixels; images are resized only when their centered square crop is another "
        "size. Conv presets need a multiple of 2^(number of stride-2 layers). Default: 64; for a "
        "folder, the images' own size when they are square and at most 128 px",
    )
    g.add_argument(
        "--channels",
        choices=CHANNEL_CHOICES,
        default=d.channels,
        help="1: grey, 3: RGB, auto: grey when every image is grey, else RGB (CelebA: RGB, dsprites: grey)",
    )
    g.add_argument(
        "--binarize",
        choices=BINARIZE_CHOICES,
        default=d.binarize,
        help="for binary (Bernoulli) likelihoods: threshold at 0.5, or stochastic: a fresh Bernoulli(x) "
        "draw for each image in every epoch (dynamic binarization, as in the IWAE paper); held-out "
        "images use one fixed draw",
    )
    switch(g, "hflip", None, "random horizontal flips on the device", "on for celeba, off otherwise")

    g = p.add_argument_group("model")
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="architecture. Default from the data: dsprites for dsprites; for other data, mlp (two "
        f"fully connected hidden layers) for grey images of at most {MLP_MAX_SIZE} px a side (MNIST-like "
        "digits), else celeba64 (conv)",
    )
    g.add_argument(
        "--likelihood",
        choices=LIKELIHOOD_CHOICES,
        default=None,
        help="decoder likelihood p(x|z): gaussian (mean = sigmoid of the decoder output, σ per --sigma) "
        "or bernoulli (logits; for binary images, see --binarize). Default: the preset's (bernoulli "
        "for mlp and dsprites, gaussian for celeba64 and small)",
    )
    g.add_argument("--latent-dim", type=int, default=None, help="latent size (default: the preset's)")
    g.add_argument(
        "--sigma",
        choices=("fixed", "scalar", "channel"),
        default=None,
        help="Gaussian decoder σ: fixed at 1, or learned (scalar / per channel) (default: the preset's)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps to train for (default: {DEFAULT_STEPS}, unless --epochs is given)",
    )
    g.add_argument(
        "--epochs", type=float, default=None, help="passes over the split (alternative to --steps)"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"global batch (split over processes); default {DEFAULT_BATCH_SIZE['cpu']} on CPU, "
        f"{DEFAULT_BATCH_SIZE['cuda']} on CUDA",
    )
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default=d.lr_schedule,
        help="cosine decays the rate to 0 over the run",
    )
    g.add_argument("--beta", type=float, default=d.beta, help="β: weight of the KL term (β=1 is the ELBO)")
    g.add_argument(
        "--kl-warmup-steps",
        type=int,
        default=None,
        help="ramp β linearly from 0 over this many steps (avoids early posterior collapse); 0 = off. "
        f"Default: the first {round(100 * KL_WARMUP_FRACTION)} %% of the run's steps (measured to help on "
        "the digits benchmark, BENCHMARKS.md)",
    )
    g.add_argument(
        "--free-bits",
        type=float,
        default=d.free_bits,
        help="λ nats: each latent dim's batch-mean KL below λ is not penalised (0 = off)",
    )
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the global gradient norm")
    g.add_argument(
        "--max-bad-steps",
        type=int,
        default=d.max_bad_steps,
        help="a non-finite loss or gradient skips the step (on the device); stop after this many skipped "
        "in a row, or more than this many in all (checked when logging and before checkpoints)",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seeds weights, noise and data order")
    g.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop training after this many seconds of the training loop (data loading and the final "
        "evaluation not counted), then finish like a complete run: checkpoint, evaluation, model card",
    )

    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=d.precision,
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    switch(g, "compile", d.compile, "torch.compile the model (the CUDA graph then captures it)")
    switch(g, "channels-last", d.channels_last, "NHWC memory format (faster convs on GPUs and on CPU)")
    switch(
        g,
        "cuda-graph",
        d.cuda_graph,
        "CUDA: capture the whole training step (forward, backward, clipping, skip guard, AdamW) in one "
        "CUDA graph and replay it; β and the learning rate stay scheduled. Ignored on CPU and with DDP",
    )
    g.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch CPU threads. Default: the cores not busy now, round(cores − 1-min load average), at "
        "least 1 (measured on a shared 2-core machine: 2 threads are 1.3× faster than 1 when idle, "
        "25–60× slower when a neighbour keeps a core busy; train/threads.py)",
    )

    g = p.add_argument_group("output")
    g.add_argument("--out", default=d.out, help="output directory")
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue bit-for-bit from the latest checkpoint in --out (or from the given "
        "checkpoints directory); --steps may be raised to train longer",
    )
    g.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints"
    )
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics.jsonl lines")
    g.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="steps between evaluations: held-out ELBO on the test split (no gradient, fixed noise), "
        "per-dim KL and active units on training images, and PNG grids",
    )
    g.add_argument(
        "--keep-best",
        action="store_true",
        help="also save the model with the best held-out (test split) ELBO seen at the --eval-every "
        "evaluations to OUT/best/ (selected on the test split: its test numbers are optimistic)",
    )
    g.add_argument(
        "--eval-images",
        type=int,
        default=d.eval_images,
        help="held-out images for the final numbers (periodic evaluations use up to 512)",
    )
    g.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO_ID",
        help="upload the final model and model card to this Hub model repo",
    )
    switch(
        g,
        "progress",
        d.progress,
        "progress bars (training and cache building); --no-progress prints a log line every "
        "--log-every steps instead",
    )
    g.add_argument(
        "--quiet",
        action="store_true",
        help="print only warnings and errors: no bars, start block, log lines or final block (scripts)",
    )
    return p


class OneDefaultHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already states its default or there is
    none to state (None: the help says what happens; store_true flags: off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def switch(group, name: str, default: bool | None, text: str, default_text: str | None = None):
    """A --name / --no-name flag whose help states its default once, on any Python version."""
    action = group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default)
    shown = default_text or ("on" if default else "off")
    action.help = f"{text} (default: {shown})"
    return action


def parse_args(argv=None) -> RunConfig:
    args = build_parser().parse_args(argv)
    return RunConfig(**vars(args))
