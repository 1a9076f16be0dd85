"""Datasets as uint8 arrays, and the batch source that feeds training from them.

CelebA and folders are decoded once into a uint8 N×C×H×W cache (`train.imagecache`: `.npy`, memory-mapped,
keyed by dataset, split, resolution, channels and crop, written atomically), so an epoch never waits on
image decoding. dSprites needs no cache: each batch is rendered from its factors on the training device.
Batches are gathered from the array — from a copy on the GPU when it fits — then flipped and binarized on
the device.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from vae_triton.io import remove_stale_temps

from . import dsprites as _dsprites
from .datasets import LoadRequest, dataset_spec
from .imagecache import (  # noqa: F401  (DataUnavailableError is also this module's API)
    BINARIZE_CHOICES,
    CHANNEL_CHOICES,
    SPLIT_ALIASES,
    DataUnavailableError,
    ImageDataset,
    binarize,
)

DEFAULT_CACHE = Path(os.environ.get("VAE_TRITON_CACHE", Path.home() / ".cache" / "vae-triton"))


def dsprites_images(factors) -> np.ndarray:
    """dSprites images for factor index rows (shape, scale, orientation, posX, posY): uint8 N×1×64×64."""
    return _dsprites.render(np.asarray(factors))


def get_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    resolution: int | None = 64,
    cache_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    crop: int | None = None,
    source: str | None = None,
    channels: str = "auto",
    binarize: str = "none",
    test_fraction: float | None = None,
    split_seed: int = 0,
    val_fraction: float | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Load a dataset as uint8 images, building its memory-mapped cache on first use.

    - `dsprites`: procedural (offline), rendered on demand. Splits: `train` (95 %), `test` (5 %, fixed),
      `all` (737,280). Grey 64×64 only.
    - `celeba`: Hugging Face `datasets` parquet (`source` = `flwrlabs/celeba`, official train/valid/test,
      or `nielsr/CelebA-faces`, train only), or a local copy in `data_dir`. Center crop (or `crop` px;
      default `vae_triton.images.CELEBA_PIXELS`) → resize. RGB unless `channels` is "1".
    - `folder`: every readable image under `data_dir` (recursively); splits from `train/`, `test/`,
      `valid/` subfolders or `test_fraction` (see `train.folder`); largest centered square (or `crop` px)
      → resize unless already `resolution` (None: the images' own size when square and ≤ 128 px, else
      64). Unreadable files are skipped and counted. `val_fraction` carves a seeded `valid` split out of
      `train`.
    channels: "auto" (grey data stays grey), "1" or "3". binarize: "none", "threshold" or "stochastic"
    (see `ImageDataset`). `limit` keeps only the first N images of the split (quick runs, tests).
    `split` may also be "validation" or "val" (both mean "valid").
    Stale temp files of crashed cache writes in the cache folder are removed first.
    """
    spec = dataset_spec(name)
    if resolution is None:
        resolution = spec.resolution
    if resolution is not None and resolution < 8:
        raise ValueError(f"resolution must be at least 8 px, got {resolution}")
    if str(channels) not in CHANNEL_CHOICES:
        raise ValueError(f"channels must be one of {CHANNEL_CHOICES}, got {channels!r}")
    if binarize not in BINARIZE_CHOICES:
        raise ValueError(f"binarize must be one of {BINARIZE_CHOICES}, got {binarize!r}")
    problem = spec.resolution_problem(resolution) or spec.channels_problem(str(channels))
    if problem:
        raise ValueError(problem)
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    remove_stale_temps(cache)
    split = SPLIT_ALIASES.get(split, split)  # "validation" and "val" are "valid" for every dataset
    request = LoadRequest(
        split,
        data_dir,
        resolution,
        cache,
        limit,
        crop,
        source,
        str(channels),
        test_fraction,
        split_seed,
        progress,
        val_fraction,
    )
    ds = spec.load(request)
    if limit is not None and limit < len(ds):
        ds = ds.head(limit)
    ds.binarize = binarize
    return ds


def dataset_for_split(run_config: dict, split: str, *, limit: int | None = None, **overrides) -> ImageDataset:
    """The `split` of the data a run trained on, from its run_config.json (a dict): same folder (an
    absolute path), split rule (subfolders, or test and validation fractions and their seed), resolution,
    channels, crop, binarization and cache. `overrides` replace get_dataset arguments (e.g. cache_dir,
    progress)."""
    rc = run_config
    kwargs = dict(
        data_dir=rc.get("data_dir"),
        resolution=rc.get("resolution"),
        cache_dir=rc.get("cache_dir"),
        limit=limit,
        source=rc.get("celeba_source"),
        channels=str(rc.get("channels", "auto")),
        binarize=rc.get("binarize", "none"),
        test_fraction=rc.get("test_fraction"),
        split_seed=rc.get("split_seed", 0),
        val_fraction=rc.get("val_fraction"),
    )
    kwargs.update(overrides)
    return get_dataset(rc.get("dataset", "dsprites"), split, **kwargs)


# ---- batches ----------------------------------------------------------------------------------
class BatchSource:
    """uint8 batches for step t, a pure function of (seed, t): resuming at step t replays the order.

    Each epoch is a fresh permutation drawn from (seed, epoch); the global batch of step t is the t-th
    slice of that stream, and rank r of `world` ranks takes its r-th share. Flips (a per-image coin
    from the same stream) are applied on the device. The whole array moves to the GPU once when it
    fits in `gpu_fraction` of free memory; otherwise batches are gathered on the host into pinned memory.
    Images rendered on demand (dSprites) are rendered on the device from their factors instead.
    The dataset's `binarize` is applied last, on the device: "threshold" (pixel ≥ 128), or "stochastic",
    a fresh Bernoulli draw for every image in every epoch (dynamic binarization) from a generator seeded
    by (seed, step), so resuming at step t replays the same draws.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        *,
        seed: int = 0,
        hflip: bool = False,
        rank: int = 0,
        world: int = 1,
        gpu_fraction: float = 0.5,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size % world:
            raise ValueError(
                f"--batch-size {batch_size} must be divisible by the number of processes ({world})"
            )
        if len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} images, fewer than --batch-size {batch_size}: use "
                f"--batch-size {max(1, len(dataset) // max(world, 1))} or less, or add images"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.device = torch.device(device)
        self.hflip, self.rank, self.world = hflip, rank, world
        self.per_rank = batch_size // world
        self.steps_per_epoch = len(dataset) // batch_size  # drop the ragged tail: equal batches
        self._epoch, self._perm, self._flips = -1, None, None
        self._resident = None
        self._rendered = hasattr(dataset.images, "render")
        if self.device.type == "cuda" and not self._rendered:
            free, _ = torch.cuda.mem_get_info(self.device)
            if dataset.images.nbytes < gpu_fraction * free:
                self._resident = torch.from_numpy(np.ascontiguousarray(dataset.images)).to(self.device)

    @property
    def on_device(self) -> bool:
        return self._resident is not None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _order(self, epoch: int):
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.dataset), generator=g)
            self._flips = torch.rand(len(self.dataset), generator=g) < 0.5
            self._epoch = epoch
            if self._resident is not None or self._rendered:  # one copy per epoch, then device slices
                self._perm_dev = self._perm.to(self.device)
                self._flips_dev = self._flips.to(self.device)
        return self._perm, self._flips

    def indices(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's dataset indices and flip coins for global step `step` (0-based)."""
        perm, flips = self._order(self.epoch_of(step))
        start = (step % self.steps_per_epoch) * self.batch_size + self.rank * self.per_rank
        idx = perm[start : start + self.per_rank]
        return idx, flips[start : start + self.per_rank]

    def batch(self, step: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B/world, C, H, W) on the device; gathered into `out` when given (a buffer of that shape,
        such as the training step's static CUDA-graph input), and then `out` is returned."""
        idx, flip = self.indices(step)
        start = (step % self.steps_per_epoch) * self.batch_size + self.rank * self.per_rank
        rows = slice(start, start + self.per_rank)
        if self._rendered:
            # Indices and coins from the epoch's copies on the device: no host→device copy (on a GPU, a
            # stream sync) per step. Sorted rows, as the memmap path reads them.
            order = self._perm_dev[rows].sort()
            x = self.dataset.images.render(order.values, self.device)
            flip = self._flips_dev[rows][order.indices]
        elif self._resident is not None:
            x = torch.index_select(self._resident, 0, self._perm_dev[rows], out=out)
            flip = self._flips_dev[rows]
        else:
            # Sorted reads are sequential on a memmap; the order inside a batch does not matter
            # to the loss, but it must be fixed for bit-exact resume, which sorting keeps.
            order = idx.sort().values.numpy()
            x = torch.from_numpy(np.ascontiguousarray(self.dataset.images[order]))
            flip = flip[idx.argsort()]
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
        if self.hflip:
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        if self.dataset.binarize == "stochastic":
            g = torch.Generator(device=x.device).manual_seed(_stream_seed(self.seed, step, self.rank))
            x = binarize(x, "stochastic", g)
        elif self.dataset.binarize == "threshold":
            x = binarize(x, "threshold")
        return x if out is None or x is out else out.copy_(x, non_blocking=True)


def _stream_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed per (run seed, step, rank) for the binarization draws, independent of the order seed."""
    digest = hashlib.blake2b(f"binarize:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
