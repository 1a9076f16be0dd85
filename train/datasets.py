"""The datasets `python -m train` knows, one `DatasetSpec` each: its loader, default preset and
resolution, flips, channels and the pixel treatment the app gives uploads (`vae_triton.images.PixelSpec`).

`train.config` (the --dataset, --split and --hflip flags and their checks), `train.data.get_dataset` and
`train.evaluate` read this table. Adding a dataset: a loader module, an entry here, and a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vae_triton.images import CELEBA_PIXELS, DSPRITES_PIXELS, FOLDER_PIXELS, PixelSpec

from . import dsprites
from .celeba import load_celeba
from .folder import load_folder
from .imagecache import ImageDataset


@dataclass(frozen=True)
class LoadRequest:
    """What `get_dataset` asks a loader for (see its docstring); `cache` is the cache folder."""

    split: str
    data_dir: str | os.PathLike | None
    resolution: int | None
    cache: Path
    limit: int | None
    crop: int | None
    source: str | None
    channels: str
    test_fraction: float | None
    split_seed: int
    progress: bool
    val_fraction: float | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset.

    summary, splits: its words in `--dataset` and `--split` help. load: LoadRequest -> ImageDataset.
    pixels: crop, default size, channels, background (`PixelSpec`); `pixels.size` None means that the
    resolution and the preset follow the loaded images. preset: the default preset. hflip: random flips
    by default. fixed: the images are always pixels.channels × pixels.size² (refuse other flags).
    """

    name: str
    summary: str
    splits: str
    load: Callable[[LoadRequest], ImageDataset]
    pixels: PixelSpec
    preset: str
    hflip: bool = False
    fixed: bool = False

    @property
    def display_name(self) -> str:
        return self.pixels.title or self.name

    @property
    def resolution(self) -> int | None:
        """The default --resolution; None: the images' own size, decided once they are loaded."""
        return self.pixels.size

    @property
    def fixed_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of every image when the dataset has one shape only, else None."""
        return (self.pixels.channels, self.pixels.size, self.pixels.size) if self.fixed else None

    def channels_problem(self, channels: str) -> str | None:
        """Why `--channels channels` cannot be used with this dataset, or None."""
        c = self.pixels.channels
        if not self.fixed or str(channels) in ("auto", str(c)):
            return None
        return f"{self.name} images are {'grey' if c == 1 else 'RGB'}: use --channels auto or {c}"

    def resolution_problem(self, resolution: int | None) -> str | None:
        """Why `--resolution resolution` cannot be used with this dataset, or None."""
        size = self.pixels.size
        if not self.fixed or resolution in (None, size):
            return None
        return f"{self.name} is defined at {size}×{size}: use --resolution {size} (got {resolution})"


def _dsprites(r: LoadRequest) -> ImageDataset:
    return dsprites.load_dsprites(r.split, r.cache, r.limit)


def _celeba(r: LoadRequest) -> ImageDataset:
    return load_celeba(
        r.split,
        r.data_dir,
        r.resolution,
        r.cache,
        crop=r.crop,
        source=r.source,
        channels=r.channels,
        progress=r.progress,
    )


def _folder(r: LoadRequest) -> ImageDataset:
    if r.data_dir is None:
        raise ValueError("the folder dataset needs --data-dir pointing at a directory of images")
    return load_folder(
        r.data_dir,
        r.resolution,
        r.cache,
        split=r.split,
        channels=r.channels,
        crop=r.crop,
        test_fraction=r.test_fraction,
        split_seed=r.split_seed,
        val_fraction=r.val_fraction,
        progress=r.progress,
    )


_SIDE = DSPRITES_PIXELS.size
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "dsprites",
            f"procedural {_SIDE}×{_SIDE} sprites with factor labels (offline)",
            "train/test/all",
            _dsprites,
            DSPRITES_PIXELS,
            preset="dsprites",
            fixed=True,
        ),
        DatasetSpec(
            "celeba",
            f"Hugging Face `datasets` (or --data-dir), center crop {CELEBA_PIXELS.crop} → resize to "
            "--resolution",
            "train/valid/test",
            _celeba,
            CELEBA_PIXELS,
            preset="celeba64",
            hflip=True,  # faces are left-right symmetric
        ),
        DatasetSpec(
            "folder",
            "any directory of images (--data-dir), largest centered square → resize; unreadable files are "
            "skipped and counted",
            "train/valid/test/all from train/, valid/, test/ subfolders or --test-fraction; a folder "
            "without them is all train",
            _folder,
            FOLDER_PIXELS,
            preset="celeba64",
        ),
    )
}
NAMES = tuple(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of `name`; a ValueError that lists the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {NAMES}")
    return DATASETS[name]
