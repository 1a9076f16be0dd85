"""Datasets as uint8 arrays (DESIGN §6), and the batch source that feeds training from them.

Every dataset is decoded once into a uint8 N×C×H×W cache (`.npy`, memory-mapped, keyed by dataset,
split, resolution and crop, written atomically), so an epoch never waits on image decoding. Batches
are gathered from that array — from a copy on the GPU when it fits — and flipped on the device.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_triton.io import atomic_path

from . import dsprites as _dsprites

DATASETS = ("dsprites", "celeba", "folder")
DEFAULT_CACHE = Path(os.environ.get("VAE_TRITON_CACHE", Path.home() / ".cache" / "vae-triton"))


class DataUnavailableError(RuntimeError):
    """The data cannot be loaded here (offline, missing, empty); the message says how to get it."""


@dataclass
class ImageDataset:
    """uint8 images (N, C, H, W) — an array or a read-only memmap — with optional factor labels."""

    images: np.ndarray
    factors: np.ndarray | None = None
    factor_names: list[str] = field(default_factory=list)
    factor_sizes: list[int] = field(default_factory=list)
    name: str = ""
    split: str = "train"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.factors is not None and len(self.factors) != len(self.images):
            raise ValueError(f"factors has {len(self.factors)} rows for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def head(self, n: int) -> ImageDataset:
        """The first n images (a view: no copy of a memmap)."""
        if n <= 0:
            raise ValueError(f"limit must be a positive number of images, got {n}")
        f = None if self.factors is None else self.factors[:n]
        return ImageDataset(
            self.images[:n], f, self.factor_names, self.factor_sizes, self.name, self.split, self.info
        )

    def tensor(self, indices, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images at `indices` as float in [0, 1] on `device`."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(np.ascontiguousarray(self.images[idx])).to(device).float().div_(255.0)


def dsprites_images(factors) -> np.ndarray:
    """dSprites images for factor index rows (shape, scale, orientation, posX, posY): uint8 N×1×64×64."""
    return _dsprites.render(np.asarray(factors))


def get_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    resolution: int = 64,
    cache_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    crop: int | None = None,
    source: str | None = None,
) -> ImageDataset:
    """Load a dataset as uint8 images, building its memory-mapped cache on first use.

    - `dsprites`: procedural (offline). Splits: `train` (95 %), `test` (5 %, fixed), `all` (737,280).
    - `celeba`: Hugging Face `datasets` parquet (`source` = `flwrlabs/celeba`, official train/valid/test,
      or `nielsr/CelebA-faces`, train only), or a local copy in `data_dir`. Center crop 148 → resize.
    - `folder`: every readable image under `data_dir` (recursively); a largest centered square crop
      (or `crop` px) → resize. Unreadable files are skipped and counted.
    `limit` keeps only the first N images of the split (quick runs, tests).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {DATASETS}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 px, got {resolution}")
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    if name == "dsprites":
        if resolution != _dsprites.IMAGE_SIZE:
            raise ValueError(f"dsprites is defined at 64×64: use --resolution 64 (got {resolution})")
        ds = _dsprites_dataset(split, cache, limit)
    elif name == "celeba":
        from .celeba import load_celeba

        ds = load_celeba(
            split, data_dir, resolution, cache, crop=148 if crop is None else crop, source=source
        )
    else:
        from .folder import load_folder

        if data_dir is None:
            raise ValueError("the folder dataset needs --data-dir pointing at a directory of images")
        ds = load_folder(data_dir, resolution, cache, crop=crop)
    if limit is not None and limit < len(ds):
        ds = ds.head(limit)
    return ds


# ---- dSprites ---------------------------------------------------------------------------------
DSPRITES_SPLITS = ("train", "test", "all")
_DSPRITES_TEST_FRACTION = 0.05
_DSPRITES_SEED = 20170301  # fixes the shuffled order, and with it the train/test split


def _dsprites_order() -> np.ndarray:
    """The canonical factor grid in a fixed shuffled order: test split first, then train."""
    factors = _dsprites.all_factors()
    perm = np.random.default_rng(_DSPRITES_SEED).permutation(len(factors))
    return factors[perm]


def _dsprites_dataset(split: str, cache: Path, limit: int | None) -> ImageDataset:
    if split not in DSPRITES_SPLITS:
        raise ValueError(f"dsprites has splits {DSPRITES_SPLITS}, got split={split!r}")
    factors = _dsprites_order()
    n_test = int(round(len(factors) * _DSPRITES_TEST_FRACTION))
    rows = {"test": slice(0, n_test), "train": slice(n_test, None), "all": slice(None)}[split]
    factors = factors[rows]
    meta = dict(factor_names=list(_dsprites.FACTOR_NAMES), factor_sizes=list(_dsprites.FACTOR_SIZES))
    if limit is not None and limit < len(factors):
        # A small slice renders in well under a second: skip the 3 GB cache.
        factors = factors[:limit]
        return ImageDataset(_dsprites.render(factors), factors, name="dsprites", split=split, **meta)
    path = cache / "dsprites-all-64px.npy"
    if not path.exists():
        everything = _dsprites_order()

        def fill(out: np.ndarray, progress: tqdm) -> None:
            step = 8192
            for s in range(0, len(everything), step):
                out[s : s + step] = _dsprites.render(everything[s : s + step])
                progress.update(min(step, len(everything) - s))

        build_cache(path, (len(everything), 1, 64, 64), fill, desc="rendering dSprites")
    images = open_cache(path)[rows]
    return ImageDataset(images, factors, name="dsprites", split=split, **meta)


# ---- the uint8 cache --------------------------------------------------------------------------
def cache_key(*parts) -> str:
    """A short stable hash for cache file names (e.g. of a source path and its file list)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_cache(path: Path, shape: tuple[int, ...], fill, desc: str) -> Path:
    """Create a uint8 `.npy` of `shape` by `fill(memmap, progress)`, atomically (temp + rename)."""
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        with tqdm(total=shape[0], desc=desc, unit="img", dynamic_ncols=True) as progress:
            fill(out, progress)
        out.flush()
        del out  # close the mapping before the file is renamed
    return path


def open_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def write_array_atomic(path: Path, array: np.ndarray) -> None:
    """A small side array (labels) next to a cache, written with temp + rename like the cache."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def center_crop_resize(img, resolution: int, crop: int | None) -> np.ndarray:
    """PIL image → uint8 (C, H, W): center crop `crop`×`crop` (None: the largest centered square), then
    resize to `resolution` with PIL's antialiased bilinear filter (like torchvision's Resize)."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    side = min(w, h) if crop is None else crop
    if side > min(w, h):
        raise ValueError(f"image of {w}×{h} px is smaller than the {side} px center crop")
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


# ---- batches ----------------------------------------------------------------------------------
class BatchSource:
    """uint8 batches for step t, a pure function of (seed, t): resuming at step t replays the order.

    Each epoch is a fresh permutation drawn from (seed, epoch); the global batch of step t is the t-th
    slice of that stream, and rank r of `world` ranks takes its r-th share. Flips (a per-image coin
    from the same stream) are applied on the device. The whole array moves to the GPU once when it
    fits in `gpu_fraction` of free memory; otherwise batches are gathered on the host into pinned memory.
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
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than --batch-size {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.device = torch.device(device)
        self.hflip, self.rank, self.world = hflip, rank, world
        self.per_rank = batch_size // world
        self.steps_per_epoch = len(dataset) // batch_size  # drop the ragged tail: equal batches
        self._epoch, self._perm, self._flips = -1, None, None
        self._resident = None
        if self.device.type == "cuda":
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
            if self._resident is not None:  # one copy per epoch, then every batch is a device slice
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
        if self._resident is not None:
            start = (step % self.steps_per_epoch) * self.batch_size + self.rank * self.per_rank
            rows = slice(start, start + self.per_rank)
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
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x, out=x if x is out else None)
        return x if out is None or x is out else out.copy_(x, non_blocking=True)
