"""What every loader shares: the dataset type, the uint8 cache on disk, and decoding images into it.

A cache is a uint8 (N, C, H, W) `.npy` file, memory-mapped when read, written atomically (temp + rename),
so an epoch never waits on image decoding and a crash never leaves half a cache. Its disk blocks are
reserved before the memmap is filled: writing through a memmap of a sparse file on a full disk is a
SIGBUS that kills the process, where a reservation fails with one line (`vae_triton.io.DiskFullError`).
Images are decoded by `vae_triton.images.decode` — the decoder the app uses too, so training and
serving see the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vae_triton.images import ImageDecodeError, decode, is_grey
from vae_triton.io import (
    atomic_path,
    disk_full,
    ensure_free_space,
    is_disk_full,
    remove_stale_temps,
    temp_dir,
    write_json_atomic,
)

CHANNEL_CHOICES = ("auto", "1", "3")
BINARIZE_CHOICES = ("none", "threshold", "stochastic")
SPLIT_ALIASES = {"validation": "valid", "val": "valid"}  # other names users give the validation split
EVAL_BINARIZE_SEED = 0  # stochastic binarization of held-out images: one fixed draw, the same every time


class DataUnavailableError(RuntimeError):
    """The data cannot be loaded here (offline, missing, empty); the message says how to get it."""


@dataclass
class ImageDataset:
    """uint8 images (N, C, H, W) — an array, a read-only memmap, or images rendered on demand (an object
    with `dtype`, `shape`, `__len__`, `__getitem__` → uint8 array, and `render(indices, device)`) — with
    optional factor labels.

    binarize: how the images are presented — "none"; "threshold" (pixel ≥ 128, i.e. x ≥ 0.5 → 1, else 0);
    "stochastic" (x ~ Bernoulli(pixel/255)); training draws afresh per epoch (`BatchSource`), `tensor()`
    uses one fixed draw so held-out numbers are repeatable.
    """

    images: np.ndarray
    factors: np.ndarray | None = None
    factor_names: list[str] = field(default_factory=list)
    factor_sizes: list[int] = field(default_factory=list)
    name: str = ""
    split: str = "train"
    info: dict = field(default_factory=dict)
    binarize: str = "none"

    def __post_init__(self):
        if self.images.dtype != np.uint8 or len(self.images.shape) != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.factors is not None and len(self.factors) != len(self.images):
            raise ValueError(f"factors has {len(self.factors)} rows for {len(self.images)} images")
        if self.binarize not in BINARIZE_CHOICES:
            raise ValueError(f"binarize must be one of {BINARIZE_CHOICES}, got {self.binarize!r}")

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
        images = self.images.head(n) if hasattr(self.images, "head") else self.images[:n]
        return ImageDataset(
            images,
            f,
            self.factor_names,
            self.factor_sizes,
            self.name,
            self.split,
            self.info,
            self.binarize,
        )

    def uint8(self, indices, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images at `indices` (in sorted order) as presented to the model: uint8 (n, C, H, W) on `device`,
        binarized as configured ("stochastic": one fixed draw for these indices, the same every call).
        What evaluation should feed `vae_triton.metrics` (which accepts uint8 tensors)."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).to(device)
        if self.binarize == "stochastic":
            g = torch.Generator(device=x.device).manual_seed(EVAL_BINARIZE_SEED)
            return binarize(x, "stochastic", g)
        return binarize(x, self.binarize)

    def tensor(self, indices, device: str | torch.device = "cpu") -> torch.Tensor:
        """`uint8(indices, device)` as float in [0, 1]."""
        return self.uint8(indices, device).float().div_(255.0)


def binarize(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images → uint8 0/255. threshold: pixel ≥ 128 (x ≥ 0.5). stochastic: 255 with probability
    pixel/255 (dynamic binarization, Burda et al. 2016, IWAE §5), drawn from `generator` (on x's device)."""
    if mode == "threshold":
        return torch.where(x >= 128, 255, 0).to(torch.uint8)
    if mode == "stochastic":
        u = torch.rand(x.shape, generator=generator, device=x.device)
        return (u * 255.0 < x).to(torch.uint8) * 255
    if mode == "none":
        return x
    raise ValueError(f"binarize must be one of {BINARIZE_CHOICES}, got {mode!r}")


# ---- the cache on disk ----------------------------------------------------------------------------
def cache_key(*parts) -> str:
    """A short stable hash for cache file names (e.g. of a source path and its file list)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_cache(path: Path, shape: tuple[int, ...], fill, desc: str, progress: bool = True) -> Path:
    """Create a uint8 `.npy` of `shape` by `fill(memmap, progress)`, atomically (temp + rename).

    First removes what crashed builds left in the cache folder (`vae_triton.io.remove_stale_temps`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    with atomic_path(path) as tmp:
        out = open_reserved_memmap(tmp, shape, path)
        with tqdm(total=shape[0], desc=desc, unit="img", dynamic_ncols=True, disable=not progress) as bar:
            fill(out, bar)
        out.flush()
        del out  # close the mapping before the file is renamed
    return path


def open_reserved_memmap(file: str | os.PathLike, shape: tuple[int, ...], target: Path) -> np.ndarray:
    """A new uint8 `.npy` memmap of `shape` at `file` whose disk blocks are allocated now
    (`posix_fallocate`), so filling it cannot meet a full disk. Raises `DiskFullError` naming `target`
    (the cache the file becomes) when the blocks are not there; the caller removes `file`."""
    ensure_free_space(target, math.prod(shape))
    out = np.lib.format.open_memmap(file, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):  # not on macOS: the free-space check above is all there is
        try:
            with open(file, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            del out
            if is_disk_full(e):
                raise disk_full(target, needed=math.prod(shape)) from None
            raise
    return out


def open_cache(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def write_array_atomic(path: Path, array: np.ndarray) -> None:
    """A small side array (labels) next to a cache, written with temp + rename like the cache."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


# ---- decoding images into a cache -----------------------------------------------------------------
@dataclass
class DecodeSpec:
    """How source images become cache rows: `vae_triton.images.decode(..., channels, size, crop)`.

    channels: "1", "3", or "auto" (grey when every image is grey — one channel or three equal ones —
    else RGB). size: side in px (None keeps each crop's own size, which must then agree).
    """

    channels: str = "auto"
    size: int | None = None
    crop: int | float | None = None

    def __post_init__(self):
        self.channels = str(self.channels)
        if self.channels not in CHANNEL_CHOICES:
            raise ValueError(f"channels must be one of {CHANNEL_CHOICES}, got {self.channels!r}")

    def decode(self, source) -> torch.Tensor:
        return decode(source, channels=1 if self.channels == "1" else 3, size=self.size, crop=self.crop)


def decode_to_cache(
    n: int,
    sources: Callable[[int, int], Sequence],
    path: Path,
    spec: DecodeSpec,
    *,
    desc: str,
    skip_bad: bool,
    name_of: Callable[[int], str] = str,
    progress: bool = True,
) -> dict:
    """Decode the images `sources(start, stop)` (paths or bytes, rows start..stop-1 of n) into the cache at
    `path`, on threads (Pillow releases the GIL), 1024 at a time.

    Unreadable images raise ImageDecodeError naming `name_of(row)`, or with `skip_bad` are skipped and
    counted. With channels "auto" the cache is grey when every kept image is. Writes a report beside the
    cache (`read_report`) and returns it: {"images", "channels", "skipped", "examples"} (up to 5 skipped
    names). Raises DataUnavailableError when no image is readable.
    """
    if spec.size is None:
        raise ValueError("decode_to_cache needs a fixed size")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    decoded_c = 1 if spec.channels == "1" else 3
    skipped, grey = [], [True]

    def decode_rows(out: np.ndarray, bar) -> int:
        """Decode every row into `out`, kept rows packed at the front; return how many were kept."""
        kept = 0
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for start in range(0, n, 1024):
                batch = sources(start, min(start + 1024, n))
                for i, arr in enumerate(pool.map(_decode_or_none(spec, skip_bad), batch)):
                    if isinstance(arr, ImageDecodeError):
                        raise ImageDecodeError(f"{name_of(start + i)}: {arr}")
                    if arr is None:
                        skipped.append(name_of(start + i))
                    else:
                        out[kept] = arr
                        grey[0] = grey[0] and is_grey(torch.from_numpy(arr))
                        kept += 1
                bar.update(len(batch))
        return kept

    shape = (decoded_c, spec.size, spec.size)
    if not skip_bad and spec.channels != "auto":  # every row is kept: decode straight into the cache
        report = {"images": n, "channels": decoded_c, "skipped": 0, "examples": []}
        write_json_atomic(report_path(path), report)  # first: the cache appearing marks both complete
        build_cache(path, (n, *shape), decode_rows, desc=desc, progress=progress)
        return report
    # The kept count or the channel count is only known at the end: decode into a scratch array first.
    with temp_dir(path.parent, path.name) as tmp:
        scratch = open_reserved_memmap(os.path.join(tmp, "scratch.npy"), (n, *shape), path)
        with tqdm(total=n, desc=desc, unit="img", dynamic_ncols=True, disable=not progress) as bar:
            kept = decode_rows(scratch, bar)
        if kept == 0:
            raise DataUnavailableError(f"none of the {n} files is a readable image")
        channels = 1 if spec.channels == "1" or (spec.channels == "auto" and grey[0]) else 3
        # Grey: R = G = B, and channel 0 is what decode(channels=1) gives (601-2 luma of a grey pixel).
        rows = slice(0, 1) if channels == 1 else slice(None)

        def copy(out, bar, src=scratch):
            for s in range(0, kept, 4096):
                out[s : s + 4096] = src[s : min(s + 4096, kept), rows]
                bar.update(min(4096, kept - s))

        report = {"images": kept, "channels": channels, "skipped": len(skipped), "examples": skipped[:5]}
        write_json_atomic(report_path(path), report)
        shape = (kept, channels, spec.size, spec.size)
        build_cache(path, shape, copy, desc="writing cache", progress=progress)
        del scratch
    return report


def _decode_or_none(spec: DecodeSpec, skip_bad: bool):
    def one(source):
        try:
            return spec.decode(source).numpy()
        except ImageDecodeError as e:
            return None if skip_bad else e

    return one


def report_path(cache_path: Path) -> Path:
    """The JSON report beside a cache: {"images", "channels", "skipped", "examples"}."""
    return cache_path.with_suffix(".json")


def read_report(cache_path: Path) -> dict:
    return json.loads(report_path(cache_path).read_text())
