"""CelebA through Hugging Face `datasets` parquet files, decoded once into the uint8 cache.

Sources: `flwrlabs/celeba` (config `img_align+identity+attr`: official train/valid/test splits, columns
`image`, `celeb_id`, 40 bool attributes) and `nielsr/CelebA-faces` (one train split, `image` only).
Preprocessing (the common 64×64 recipe, `vae_triton.images.CELEBA_PIXELS`): a centered square crop of
the aligned image, then an antialiased bilinear resize to the target resolution, by
`vae_triton.images.decode` (the app's decoder). CelebA is colour: `channels` "auto" means RGB; "1" makes
it grey.

Where the parquet files come from, in order: `data_dir` (a folder of parquet files in the Hub layout,
or a `datasets.save_to_disk` folder); else the Hugging Face cache; else a download. Offline
(`HF_HUB_OFFLINE=1`) or with the Hub unreachable, only the cache is tried, and a miss ends in a
`DataUnavailableError` that says how to get the data — within a second, no retry loop.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from vae_triton.images import CELEBA_PIXELS

from .imagecache import (
    DataUnavailableError,
    DecodeSpec,
    ImageDataset,
    cache_key,
    decode_to_cache,
    open_cache,
    write_array_atomic,
)

ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # fmt: skip

SOURCES = {
    # repo id: (folder of the parquet files inside the repo, splits, approximate download size)
    "flwrlabs/celeba": ("img_align+identity+attr", ("train", "valid", "test"), "11.7 GB"),
    "nielsr/CelebA-faces": ("data", ("train",), "1.4 GB"),
}
DEFAULT_CROP = CELEBA_PIXELS.crop


def load_celeba(
    split: str,
    data_dir,
    resolution: int,
    cache: Path,
    *,
    crop: int | None = None,
    source: str | None = None,
    channels: str = "auto",
    progress: bool = True,
) -> ImageDataset:
    crop = DEFAULT_CROP if crop is None else crop
    source = source or "flwrlabs/celeba"
    if source not in SOURCES:
        raise ValueError(f"unknown CelebA source {source!r}: use one of {sorted(SOURCES)}")
    folder, splits, _ = SOURCES[source]
    if split not in splits:
        raise ValueError(f"{source} has splits {splits}, got split={split!r}")

    origin = source if data_dir is None else f"local-{cache_key(str(Path(data_dir).resolve()))}"
    auto = str(CELEBA_PIXELS.channels)
    spec = DecodeSpec(channels=auto if str(channels) == "auto" else channels, size=resolution, crop=crop)
    grey = "-grey" if spec.channels == "1" else ""
    stem = f"celeba-{origin.replace('/', '--')}-{split}-{resolution}px-crop{crop}{grey}"
    images_path, attrs_path = cache / f"{stem}.npy", cache / f"{stem}.attrs.npy"
    if not images_path.exists():
        table = _open_table(source, folder, split, data_dir)
        _decode_into_cache(table, images_path, attrs_path, spec, f"decoding CelebA {split}", progress)
    images = open_cache(images_path)
    attrs = np.load(attrs_path) if attrs_path.exists() else None
    names, sizes = (list(ATTRIBUTES), [2] * len(ATTRIBUTES)) if attrs is not None else ([], [])
    info = {"source": source if data_dir is None else str(data_dir), "crop": crop, "cache": str(images_path)}
    return ImageDataset(images, attrs, names, sizes, name="celeba", split=split, info=info)


# ---- finding the parquet files ------------------------------------------------------------------
def _open_table(source: str, folder: str, split: str, data_dir):
    """A `datasets.Dataset` for the split, images left undecoded (we decode them ourselves)."""
    import datasets

    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataUnavailableError(f"--data-dir {root} is not a directory")
        if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
            ds = datasets.load_from_disk(str(root))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataUnavailableError(f"{root} has splits {sorted(ds)}, not {split!r}")
                ds = ds[split]
            return _undecoded(ds, root)
        files = _split_files(root, split)
        if not files:
            raise DataUnavailableError(
                f"no parquet files for split {split!r} under --data-dir {root} (expected names like "
                f"{folder}/{split}-00000-of-00001.parquet or {split}/0000.parquet, or a save_to_disk folder)"
            )
    else:
        files = _split_files(_hub_snapshot(source, folder, split), split)
    ds = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    return _undecoded(ds, files[0])


def _undecoded(ds, where):
    import datasets

    if "image" not in ds.column_names:
        raise DataUnavailableError(
            f"{where} has columns {ds.column_names}; a CelebA table needs an 'image' column"
        )
    return ds.cast_column("image", datasets.Image(decode=False))


def _split_files(root: Path, split: str) -> list[Path]:
    # Hub layout: `<folder>/train-00000-of-00019.parquet`;
    # the parquet-converter branch: `<folder>/train/0000.parquet`.
    found = set(root.rglob(f"{split}-*.parquet")) | set(root.rglob(f"{split}/*.parquet"))
    return sorted(found)


def _hub_snapshot(source: str, folder: str, split: str) -> Path:
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    reason = "HF_HUB_OFFLINE is set" if offline else _unreachable_reason(constants.ENDPOINT)
    try:
        path = snapshot_download(
            source,
            repo_type="dataset",
            allow_patterns=[f"{folder}/{split}-*.parquet"],
            local_files_only=reason is not None,
        )
    except Exception as e:
        raise DataUnavailableError(_how_to_get(source, split, reason or f"{type(e).__name__}: {e}")) from None
    if not _split_files(Path(path), split):
        raise DataUnavailableError(_how_to_get(source, split, reason or "the snapshot has no parquet files"))
    return Path(path)


def _unreachable_reason(endpoint: str) -> str | None:
    """One TCP connect with a short timeout instead of the libraries' retry loop (~20 s offline)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides reachability; let the libraries go through it
    url = urlparse(endpoint)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3
        ).close()
    except OSError as e:
        return f"the Hub ({endpoint}) is unreachable: {e}"
    return None


def _how_to_get(source: str, split: str, reason: str) -> str:
    size = SOURCES[source][2]
    return (
        f"CelebA ({source}, split {split!r}) is not available: {reason}; it is not in the Hugging Face cache "
        f"either.\nGet it one of these ways:\n"
        f"  - with network access, run the same command once: it downloads {source} (~{size}) into the "
        f"Hugging Face cache (HF_HOME) and decodes it once into the vae-triton cache (--cache-dir);\n"
        f"  - copy the parquet files (or a datasets.save_to_disk folder) here and pass --data-dir DIR;\n"
        f"  - or train on any folder of images: --dataset folder --data-dir DIR."
    )


# ---- decoding -----------------------------------------------------------------------------------
def _decode_into_cache(
    table, images_path: Path, attrs_path: Path, spec: DecodeSpec, desc: str, progress: bool
) -> None:
    n = len(table)
    if n == 0:
        raise DataUnavailableError(f"the CelebA table for {images_path.stem} is empty")

    def sources(start: int, stop: int) -> list:
        cells = table[start:stop]["image"]
        return [c["bytes"] if c.get("bytes") is not None else Path(c["path"]).read_bytes() for c in cells]

    if all(a in table.column_names for a in ATTRIBUTES):
        # Labels first: the images file appearing is what marks the cache complete.
        attrs = np.stack([np.asarray(table[a], dtype=np.int64) for a in ATTRIBUTES], axis=1)
        write_array_atomic(attrs_path, attrs)
    decode_to_cache(
        n,
        sources,
        images_path,
        spec,
        desc=desc,
        skip_bad=False,
        name_of=lambda i: f"CelebA row {i}",
        progress=progress,
    )
