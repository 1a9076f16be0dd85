"""Any local folder of images (recursively) as a dataset; unreadable files are skipped and counted.

Each image is converted to RGB, center-cropped (the largest centered square, or `crop` px), resized,
and stored in the uint8 cache. The cache key covers the folder's path and every file's name, size and
modification time, so adding or changing a file rebuilds it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vae_triton.io import write_json_atomic

from .data import DataUnavailableError, ImageDataset, build_cache, cache_key, center_crop_resize, open_cache


def load_folder(data_dir, resolution: int, cache: Path, *, crop: int | None = None) -> ImageDataset:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataUnavailableError(f"--data-dir {root} is not a directory of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataUnavailableError(f"--data-dir {root} contains no files")
    listing = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = cache_key(str(root.resolve()), listing)
    stem = f"folder-{root.resolve().name}-{key}-{resolution}px-crop{crop or 'square'}"
    path, report_path = cache / f"{stem}.npy", cache / f"{stem}.json"
    if not path.exists():
        _build(files, root, path, report_path, resolution, crop)
    report = json.loads(report_path.read_text())
    if report["skipped"]:
        print(
            f"folder {root}: skipped {report['skipped']} unreadable or non-image files "
            f"(e.g. {', '.join(report['examples'])})",
            file=sys.stderr,
        )
    info = {"skipped": report["skipped"], "skipped_examples": report["examples"], "cache": str(path)}
    return ImageDataset(open_cache(path), None, [], [], name="folder", split="train", info=info)


def _decode(path: Path, resolution: int, crop: int | None) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # header-only opens succeed on truncated files; force the full decode
            return center_crop_resize(img, resolution, crop)
    except Exception:  # PIL raises many types for non-images and damaged files; all mean "skip"
        return None


def _build(files, root: Path, path: Path, report_path: Path, resolution: int, crop: int | None) -> None:
    cache = path.parent
    cache.mkdir(parents=True, exist_ok=True)
    shape = (3, resolution, resolution)
    # Decode into a scratch memmap (the good count is unknown until the end), then copy the good rows.
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        scratch = np.lib.format.open_memmap(
            os.path.join(tmp, "scratch.npy"), "w+", np.uint8, (len(files), *shape)
        )
        skipped: list[str] = []
        good = 0
        from tqdm.auto import tqdm

        from .console import bars_enabled

        bar = tqdm(total=len(files), desc=f"decoding {root.name}", unit="img", disable=not bars_enabled())
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, bar as progress:
            for f, arr in zip(files, pool.map(lambda p: _decode(p, resolution, crop), files), strict=True):
                if arr is None:
                    skipped.append(str(f.relative_to(root)))
                else:
                    scratch[good] = arr
                    good += 1
                progress.update(1)
        if good == 0:
            raise DataUnavailableError(
                f"--data-dir {root}: none of its {len(files)} files is a readable image"
            )

        def fill(out, progress, src=scratch):
            for s in range(0, good, 4096):
                out[s : s + 4096] = src[s : min(s + 4096, good)]
                progress.update(min(4096, good - s))

        report = {"images": good, "skipped": len(skipped), "examples": skipped[:5]}
        write_json_atomic(report_path, report)
        build_cache(path, (good, *shape), fill, desc="writing cache")
        del scratch
