"""Images in and out of the demo: safe decoding of uploads, the training preprocessing, and PNG/GIF layout.

No Gradio here. Bad uploads raise `InputError` (a ValueError) with a message meant for the user.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from vae_triton.io import atomic_path

# Decompression-bomb guard: PIL warns past MAX_IMAGE_PIXELS and refuses past twice that; both refuse here.
# 40 MP covers any phone photo (a 64×64 model never needs more).
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

UPSCALE = 4  # 64 px images are shown 4× larger, nearest-neighbour, so the pixels stay crisp
OUTPUT_DIR = Path(tempfile.gettempdir()) / "vae-triton-demo"
KEEP_OUTPUT_FILES = 64  # GIFs kept in OUTPUT_DIR before the oldest are deleted


class InputError(ValueError):
    """The user's input cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Preprocess:
    """How a dataset's images were cropped for training, so uploads get the same treatment.

    crop_fraction: side of the centered square crop as a fraction of the shorter image side (1.0: the
    largest centered square). background: grey level (0–255) under transparent pixels.
    """

    crop_fraction: float = 1.0
    background: int = 255


# CelebA-64: center crop 148 of the aligned 178×218 image, i.e. 148/178 of the shorter side, then resize.
# dSprites: white sprites on black, already 64×64; any other image: largest centered square.
PREPROCESS = {
    "celeba": Preprocess(crop_fraction=148 / 178, background=255),
    "dsprites": Preprocess(crop_fraction=1.0, background=0),
}
DEFAULT_PREPROCESS = Preprocess()


def open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode an upload (a path or raw bytes) fully, or raise InputError. EXIF rotation is applied."""
    if source is None:
        raise InputError("no image given: upload an image or pick one of the examples")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(stream) as img:
                img.load()  # decode now: a truncated file fails here, not later in the pipeline
                return ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"the image is too large to decode safely (more than {MAX_IMAGE_PIXELS:,} pixels): "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            "the upload is not an image PIL can read: use a PNG, JPEG, GIF, BMP or WebP file"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data inside a known format
        raise InputError(f"the image file is damaged or truncated ({e}): try another file") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images → 8-bit grey (PIL's convert clips them instead of scaling)."""
    arr = np.asarray(img, dtype=np.float64)
    top = (
        1.0
        if img.mode == "F" and arr.max(initial=0) <= 1.0
        else (65535.0 if arr.max(initial=0) > 255 else 255.0)
    )
    return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _flatten(img: Image.Image, background: int) -> Image.Image:
    """Any PIL mode → 'RGB' or 'L', transparent pixels composited over `background`."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(under, rgba).convert("RGB")
    if img.mode in ("L", "RGB"):
        return img
    try:
        return img.convert("RGB")  # 1, CMYK, YCbCr, HSV, ...
    except ValueError:
        raise InputError(
            f"images in PIL mode {img.mode!r} are not supported: save it as an RGB PNG"
        ) from None


def to_model_input(img: Image.Image, channels: int, size: int, dataset: str | None = None) -> torch.Tensor:
    """A PIL image of any size and mode → float tensor (1, channels, size, size) in [0, 1].

    The training preprocessing of `dataset` (see PREPROCESS): centered square crop, antialiased bilinear
    resize (what the training data path uses), then grey or RGB as the model expects.
    """
    prep = PREPROCESS.get(dataset or "", DEFAULT_PREPROCESS)
    flat = _flatten(img, prep.background)
    w, h = flat.size
    if min(w, h) < 1:
        raise InputError(f"the image is empty ({w}×{h} px)")
    side = max(1, round(min(w, h) * prep.crop_fraction))
    left, top = (w - side) // 2, (h - side) // 2
    square = flat.crop((left, top, left + side, top + side))
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.BILINEAR)
    square = square.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(square, dtype=np.float32) / 255.0
    if channels == 1:
        arr = arr[None]
    elif channels == 3:
        arr = arr.transpose(2, 0, 1)
    else:
        raise InputError(
            f"the model expects {channels}-channel images; only 1 (grey) and 3 (RGB) are supported"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


# ---- output layout ------------------------------------------------------------------------------
def to_pil(image: torch.Tensor, scale: int = UPSCALE) -> Image.Image:
    """One float image (C, H, W) in [0, 1] → PIL ('L' or 'RGB'), enlarged `scale`× nearest-neighbour."""
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    pil = (
        Image.fromarray(arr[0], mode="L")
        if arr.shape[0] == 1
        else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    )
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def grid(images: torch.Tensor, cols: int, *, scale: int = 2, gap: int = 4, fill: int = 128) -> Image.Image:
    """(N, C, H, W) images → one PIL grid of `cols` columns, tiles separated by `gap` px of grey."""
    tiles = [to_pil(im, scale) for im in images]
    rows = math.ceil(len(tiles) / cols)
    tw, th = tiles[0].size
    mode = tiles[0].mode
    canvas = Image.new(mode, (cols * tw + (cols - 1) * gap, rows * th + (rows - 1) * gap), _fill(mode, fill))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas.paste(tile, (c * (tw + gap), r * (th + gap)))
    return canvas


def _fill(mode: str, level: int):
    return level if mode == "L" else (level, level, level)


@functools.cache
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans where installed (crisp signs and digits when the browser scales the grid down), else
    Pillow's built-in font."""
    for name in ("DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotated_grid(
    body: Image.Image,
    row_labels: list[str],
    col_labels: list[str],
    tile: int,
    gap: int,
    *,
    left: int = 200,
    bottom: int = 32,
) -> Image.Image:
    """A grid image with a text label left of each row and below each column (light text on dark grey).
    Column labels go below: the top-right corner is where Gradio puts its image buttons."""
    canvas = Image.new("RGB", (body.width + left, body.height + bottom), (40, 40, 40))
    canvas.paste(body.convert("RGB"), (left, 0))
    draw = ImageDraw.Draw(canvas)
    style = {"fill": (235, 235, 235), "font": _font(17)}
    for r, text in enumerate(row_labels):
        draw.text((10, r * (tile + gap) + tile // 2), text, anchor="lm", **style)
    for c, text in enumerate(col_labels):
        draw.text(
            (left + c * (tile + gap) + tile // 2, body.height + bottom // 2), text, anchor="mm", **style
        )
    return canvas


def write_gif(frames: torch.Tensor, *, frame_ms: int = 80, bounce: bool = True) -> Path:
    """Frames (N, C, H, W) → an animated GIF in OUTPUT_DIR (forth and back when `bounce`), atomically.
    GIF stores delays in centiseconds, so `frame_ms` should be a multiple of 10."""
    pictures = [to_pil(f) for f in frames]
    if bounce and len(pictures) > 2:
        pictures = pictures + pictures[-2:0:-1]
    if pictures[0].mode == "RGB":  # one shared palette keeps colours steady across frames
        pictures = [p.quantize(colors=256, method=Image.Quantize.MEDIANCUT) for p in pictures]
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"interpolation-{uuid.uuid4().hex[:12]}.gif"
    with atomic_path(path) as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0
        )
    _prune(OUTPUT_DIR, KEEP_OUTPUT_FILES)
    return path


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` GIFs (Gradio has copied older ones into its own cache by then)."""

    def age(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # a parallel request pruned it first
            return 0.0

    files = sorted(folder.glob("interpolation-*.gif"), key=age, reverse=True)
    cutoff = time.time() - 60  # never delete a file a request may still be handing to Gradio
    for old in files[keep:]:
        if age(old) < cutoff:
            old.unlink(missing_ok=True)
