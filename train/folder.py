"""Any local folder of images (recursively) as a dataset, with its splits; unreadable files are skipped
and counted.

Splits, in order:
- split subfolders: `train/`, `test/` (and `valid/`; `val/` and `validation/` also count) directly under
  the folder. `--split` picks one; asking for one that is not there is an error that lists what is.
- otherwise, `--test-fraction F`: a fixed-seed shuffle of the sorted file list (seed `split_seed`, 0 by
  default, independent of the training seed), whose first round(F·N) files are `test` and the rest
  `train`. The same folder and F give the same split on every machine and every run.
- otherwise the whole folder is `train` (and `all`); there is no test split.
Then, with `--val-fraction F` (a folder without a `valid/` subfolder), a second fixed-seed shuffle of the
`train` files (seeded by `split_seed`, a stream apart from the test split's) makes its first round(F·N)
files the `valid` split and leaves the rest as `train`: the validation split that picks the model, apart
from the test split that reports it.
Each image goes through `vae_triton.images.decode` (the app's decoder): largest centered square (or `crop`
px), resized to the resolution only when it differs, grey or RGB by `channels`. Resolution None means the
data's own size: the most common image size (among up to 1,000 files spread over the sorted list, from
their headers) when it is square and at most NATIVE_MAX px, else DEFAULT_RESOLUTION. The cache key covers the
folder's path, every selected file's name, size and modification time, and the decoding settings, so
adding or changing a file rebuilds it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .imagecache import (
    DataUnavailableError,
    DecodeSpec,
    ImageDataset,
    cache_key,
    decode_to_cache,
    open_cache,
    read_report,
)

SPLIT_DIRS = {"train": ("train",), "test": ("test",), "valid": ("valid", "val", "validation")}
FOLDER_SPLITS = ("train", "valid", "test", "all")
DEFAULT_RESOLUTION = 64
NATIVE_MAX = 128  # larger square images are downscaled to DEFAULT_RESOLUTION unless --resolution says else
_REPORTED: set = set()  # caches whose skipped files were already reported


def load_folder(
    data_dir,
    resolution: int | None,
    cache: Path,
    *,
    split: str = "train",
    channels: str = "auto",
    crop: int | None = None,
    test_fraction: float | None = None,
    split_seed: int = 0,
    val_fraction: float | None = None,
    progress: bool = True,
) -> ImageDataset:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataUnavailableError(f"--data-dir {root} is not a directory of images")
    files, rule = split_files(root, split, test_fraction, split_seed, val_fraction)
    if resolution is None:
        native = typical_size(files)
        resolution = native if native is not None and native <= NATIVE_MAX else DEFAULT_RESOLUTION
    listing = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    spec = DecodeSpec(channels=channels, size=resolution, crop=crop)
    key = cache_key(str(root.resolve()), listing, spec.channels, spec.crop)
    path = cache / f"folder-{root.resolve().name}-{split}-{key}-{resolution}px-c{spec.channels}.npy"
    if not path.exists():
        try:
            decode_to_cache(
                len(files),
                lambda a, b: files[a:b],
                path,
                spec,
                desc=f"decoding {root.name}/{split}",
                skip_bad=True,
                name_of=lambda i: str(files[i].relative_to(root)),
                progress=progress,
            )
        except DataUnavailableError as e:
            raise DataUnavailableError(f"--data-dir {root} ({rule}): {e}") from None
    report = read_report(path)
    if report["skipped"] and path not in _REPORTED:  # once per process: a run opens its splits several times
        _REPORTED.add(path)
        print(
            f"folder {root} ({split}): skipped {report['skipped']} unreadable or non-image files "
            f"(e.g. {', '.join(report['examples'])})",
            file=sys.stderr,
        )
    info = {
        "skipped": report["skipped"],
        "skipped_examples": report["examples"],
        "cache": str(path),
        "split_rule": rule,
        "channels": report["channels"],
    }
    return ImageDataset(open_cache(path), None, [], [], name="folder", split=split, info=info)


def split_files(
    root: Path,
    split: str,
    test_fraction: float | None,
    split_seed: int = 0,
    val_fraction: float | None = None,
):
    """The sorted files of `split` under `root` and a sentence saying which rule chose them.

    Raises ValueError naming --val-fraction when the folder has a valid/ subfolder already, or when its
    training files are too few to hold out round(F·N) ≥ 1 of them and keep one."""
    if split not in FOLDER_SPLITS:
        raise ValueError(f"--split {split!r}: a folder has splits {FOLDER_SPLITS}")
    if val_fraction and split in ("train", "valid"):
        return _validation_split(root, split, test_fraction, split_seed, val_fraction)
    found = {name: _split_dir(root, name) for name in SPLIT_DIRS}
    found = {name: d for name, d in found.items() if d is not None}
    if found:
        if test_fraction:
            raise ValueError(
                f"--data-dir {root} already has split folders "
                f"({', '.join(d.name + '/' for d in found.values())}): drop --test-fraction"
            )
        if split == "all":
            files = sorted(f for d in found.values() for f in _images(d))
        elif split not in found:
            raise DataUnavailableError(
                f"--data-dir {root} has no {split}/ folder for --split {split}: it has "
                f"{_describe(root)}. Use --split {' or --split '.join(found)}, or add {root / split}/"
            )
        else:
            files = _images(found[split])
        rule = f"split folder {split}/" if split != "all" else "all split folders"
        return _nonempty(files, root, rule), rule
    files = _images(root)
    if not files:
        raise DataUnavailableError(f"--data-dir {root} contains no files")
    if test_fraction:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"--test-fraction {test_fraction}: must lie strictly between 0 and 1")
        n_test = min(len(files) - 1, max(1, round(len(files) * test_fraction)))
        order = np.random.default_rng(split_seed).permutation(len(files))
        chosen = {"test": order[:n_test], "train": order[n_test:], "all": order}.get(split)
        if chosen is None:
            raise DataUnavailableError(
                f"--split {split}: --test-fraction makes only train and test splits of {root}"
            )
        rule = f"--test-fraction {test_fraction} (seed {split_seed}): {len(chosen)} of {len(files)} files"
        return [files[i] for i in sorted(chosen)], rule
    if split in ("train", "all"):
        return files, "the whole folder"
    raise DataUnavailableError(
        f"--data-dir {root} has no {split} split: it has {_describe(root)} and no train/ and {split}/ "
        f"folders. Add train/ and {split}/ subfolders, or pass --test-fraction 0.2 to hold out 20 % "
        f"of the files (fixed seed), or use --split all for every file"
    )


def validation_size(train_files: int, val_fraction: float) -> int:
    """How many of `train_files` training files --val-fraction holds out: round(F·N)."""
    return round(train_files * val_fraction)


def has_valid_dir(root: Path) -> bool:
    return _split_dir(Path(root), "valid") is not None


def has_test_split(root: Path, test_fraction: float | None) -> bool:
    """Whether the folder has a test split: a test/ subfolder, or --test-fraction."""
    return bool(test_fraction) or _split_dir(Path(root), "test") is not None


def _validation_split(root: Path, split: str, test_fraction, split_seed: int, val_fraction: float):
    if has_valid_dir(root):
        raise ValueError(
            f"--val-fraction {val_fraction}: --data-dir {root} has a {_split_dir(root, 'valid').name}/ "
            "folder, which is its validation split: drop --val-fraction"
        )
    files, rule = split_files(root, "train", test_fraction, split_seed)
    n_val = validation_size(len(files), val_fraction)
    if not 1 <= n_val < len(files):
        raise ValueError(
            f"--val-fraction {val_fraction}: the {len(files)} training files of {root} are too few to hold "
            f"out {n_val} for validation and train on the rest: add images, or raise --val-fraction"
        )
    # A stream apart from the test split's (which draws from `split_seed` alone): the same seed must not
    # pick the same positions twice.
    order = np.random.default_rng([split_seed, 1]).permutation(len(files))
    chosen = order[:n_val] if split == "valid" else order[n_val:]
    rule = f"{rule}, less --val-fraction {val_fraction} (seed {split_seed}): {len(chosen)} of {len(files)}"
    return [files[i] for i in sorted(chosen)], rule


def typical_size(files: list[Path], sample: int = 1000) -> int | None:
    """The side of the most common image size among up to `sample` files (headers only), or None when
    that size is not square or no file is readable."""
    from collections import Counter

    from PIL import Image

    picks = (
        files
        if len(files) <= sample
        else [files[i] for i in np.linspace(0, len(files) - 1, sample, dtype=int)]
    )
    sizes: Counter = Counter()
    for f in picks:
        try:
            with Image.open(f) as img:
                sizes[img.size] += 1
        except Exception:  # not an image, or damaged: the decoder skips and counts it later
            continue
    if not sizes:
        return None
    (w, h), _ = sizes.most_common(1)[0]
    return w if w == h else None


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _nonempty(files: list[Path], root: Path, rule: str) -> list[Path]:
    if not files:
        raise DataUnavailableError(f"--data-dir {root}: the {rule} contains no files")
    return files


def _describe(root: Path) -> str:
    dirs = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    n_files = sum(1 for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    parts = [f"subfolders {', '.join(dirs)}" if dirs else "no subfolders", f"{n_files} files at the top"]
    return " and ".join(parts)
