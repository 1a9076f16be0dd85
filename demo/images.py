"""Images in and out of the demo: uploads through the training decoder, and the layout of grids (the
files they are written to: demo.outputs).

Uploads are decoded by `vae_triton.images.decode`, the function the training loaders fill their caches
with, using the preprocessing of the model's dataset, so the model sees the pixels it was trained on.
No Gradio here. Bad uploads raise `InputError` (a ValueError) with a message meant for the user.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vae_triton import images as decoder

# Decompression-bomb limit for uploads: 40 MP covers any phone photo (a 64×64 model never needs more).
# Checked from the image header before decoding (vae_triton.images); Pillow's own check uses it too.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

UPSCALE = 4  # 64 px images are shown 4× larger, nearest-neighbour, so the pixels stay crisp


class InputError(ValueError):
    """The user's input cannot be used; the message says why and what to do."""


def open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode an upload (a path or raw bytes) fully, or raise InputError. EXIF rotation is applied."""
    if source is None:
        raise InputError("no image given: upload an image or pick one of the examples")
    try:
        return decoder.load(source, max_pixels=Image.MAX_IMAGE_PIXELS)
    except decoder.ImageTooLargeError as e:
        raise InputError(str(e)) from None
    except decoder.ImageDecodeError as e:
        raise InputError(f"the upload cannot be used: {e}; try another file") from None


def to_model_input(img: Image.Image, channels: int, size: int, dataset: str | None = None) -> torch.Tensor:
    """A PIL image of any size and mode → float tensor (1, channels, size, size) in [0, 1].

    Exactly `vae_triton.images.decode` with the training preprocessing of `dataset`
    (`vae_triton.images.pixel_spec`): centered square crop, bilinear resize when the size differs, grey or
    RGB as the model expects.
    """
    spec = decoder.pixel_spec(dataset)
    try:
        x = decoder.decode(
            img, channels=channels, size=size, crop=spec.crop_fraction, background=spec.background
        )
    except decoder.ImageDecodeError as e:
        raise InputError(f"the image cannot be used: {e}") from None
    except ValueError as e:  # a model with another channel count
        raise InputError(f"the model expects {channels}-channel images: {e}") from None
    return x.float().div_(255.0)[None]


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
    left: int | None = None,
) -> Image.Image:
    """A grid image with a text label left of each row and below each column (light text on dark grey).
    Row labels may hold a line break. The font is a fifth of a tile (≥ 17 px), so a phone that shows the
    grid at a third of its size still shows ~8 px text. Column labels go below: the top-right corner is
    where Gradio puts its image buttons."""
    font = _font(max(17, tile // 5))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max((probe.multiline_textbbox((0, 0), t, font=font)[2] for t in row_labels), default=0)
    left = widest + 2 * font.size // 2 if left is None else left
    bottom = 2 * font.size
    canvas = Image.new("RGB", (body.width + left, body.height + bottom), (40, 40, 40))
    canvas.paste(body.convert("RGB"), (left, 0))
    draw = ImageDraw.Draw(canvas)
    style = {"fill": (235, 235, 235), "font": font}
    for r, text in enumerate(row_labels):
        draw.multiline_text((font.size // 2, r * (tile + gap) + tile // 2), text, anchor="lm", **style)
    for c, text in enumerate(col_labels):
        draw.text(
            (left + c * (tile + gap) + tile // 2, body.height + bottom // 2), text, anchor="mm", **style
        )
    return canvas


# ---- a drawn digit ------------------------------------------------------------------------------
INK = 0.1  # a pixel with less ink than this (of 1) is paper: it does not count towards the bounding box


def sketch_to_image(sketch, size: int = 28, box: int = 20) -> Image.Image:
    """A drawing → a grey `size`² image preprocessed as MNIST was made (LeCun et al. 1998): white ink on
    black, the drawing's bounding box scaled to fit a `box`² square keeping its aspect ratio
    (antialiased), then placed so that its centre of mass is the image's centre.

    sketch: what gr.Sketchpad passes (a dict whose "composite" is the drawing flattened on white, an
    (H, W[, C]) uint8 array or a PIL image), or such an array / image itself. Dark strokes on light paper
    and light strokes on dark paper both work (the paper is told by the border). Raises InputError for
    an empty drawing or something that is not one.
    """
    composite = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if composite is None:
        raise InputError("the sketch is empty: draw a digit on the canvas, then press “Explore the drawing”")
    if isinstance(composite, str | os.PathLike):  # a file (an API client's upload)
        composite = open_image(composite)
    if isinstance(composite, Image.Image):  # flattened on white, as the Sketchpad flattens its drawing
        rgba = composite.convert("RGBA")
        composite = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert(
            "L"
        )
    pixels = np.asarray(composite)
    if pixels.ndim == 3:  # RGB(A) flattened on white: the luminance
        pixels = pixels[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise InputError(f"the sketch must be an image, got an array of shape {pixels.shape}")
    lum = pixels.astype(np.float64) / 255.0
    border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
    ink = 1.0 - lum if np.median(border) >= 0.5 else lum
    rows, cols = np.nonzero(ink > INK)
    if rows.size == 0:
        raise InputError("the sketch is empty: draw a digit on the canvas, then press “Explore the drawing”")
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    patch = Image.fromarray(np.uint8(np.round(crop * 255))).resize((new_w, new_h), Image.Resampling.LANCZOS)
    patch = np.asarray(patch, dtype=np.float64)
    mass = patch.sum()
    ys, xs = np.indices(patch.shape)
    # The centre of mass goes to pixel (size/2, size/2) in index coordinates: where MNIST's digits have it
    # (their mean centre of mass is (14.0, 14.0) within a quarter pixel in 28×28).
    centre = size / 2
    top = round(centre - (ys * patch).sum() / mass) if mass > 0 else (size - new_h) // 2
    left = round(centre - (xs * patch).sum() / mass) if mass > 0 else (size - new_w) // 2
    top, left = min(max(top, 0), size - new_h), min(max(left, 0), size - new_w)
    out = np.zeros((size, size), dtype=np.uint8)
    out[top : top + new_h, left : left + new_w] = np.uint8(np.clip(np.round(patch), 0, 255))
    return Image.fromarray(out, mode="L")
