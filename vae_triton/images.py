"""One image decoder for training and serving, so both see the same pixels (Pillow does the decoding).

`decode(source, channels=..., size=...)` turns a file, its bytes or a PIL image into a uint8 (C, H, W)
tensor. The training loaders (folder, CelebA) fill their caches with it and the app feeds uploads through
it, so an image gives the model the same pixels in both places. Its rules are in its docstring.
`PixelSpec` records what each dataset's training applied (crop, size, channels, background), for both.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

BACKGROUND = 255  # grey level under transparent pixels: white, as image viewers and browsers show them

Source = str | os.PathLike | bytes | BinaryIO | Image.Image


@dataclass(frozen=True)
class PixelSpec:
    """How one dataset's images become model input: the `decode` arguments its training used, so an
    upload to the app gets the same treatment. A dataset with no entry in PIXELS gets `PixelSpec()`: the
    largest centered square, alpha over white, grey or RGB as the data is.

    dataset: the name runs record (`--dataset`, the model's metadata); title: its name for people.
    crop: side in px of the centered square cut from each source image (None: the largest square).
    source_side: the shorter side in px of the source images the crop was chosen for (None: any).
    size: the side in px the images are trained at by default (None: the run's choice or the data's own).
    channels: 1 (grey) or 3 (RGB) when fixed; None: grey when every image is grey.
    background: grey level (0-255) under transparent pixels.
    binary: every pixel is 0 or 255.
    """

    dataset: str = ""
    title: str = ""
    crop: int | None = None
    source_side: int | None = None
    size: int | None = None
    channels: int | None = None
    background: int = BACKGROUND
    binary: bool = False

    @property
    def crop_fraction(self) -> float | None:
        """The crop as a fraction of the shorter side, for images of another size than the source's
        (an upload): `decode(..., crop=spec.crop_fraction)`. None: the largest centered square."""
        if self.crop is None:
            return None
        return self.crop / self.source_side


# CelebA (the common CelebA-64 recipe): a centered 148×148 crop of the aligned 178×218 photo, resized
# to 64×64 RGB.
CELEBA_PIXELS = PixelSpec("celeba", "CelebA", crop=148, source_side=178, size=64, channels=3)
# dSprites: white sprites on black, 64×64, binary; a transparent upload goes on black like them.
DSPRITES_PIXELS = PixelSpec("dsprites", "dSprites", size=64, channels=1, background=0, binary=True)
# Any folder of images: the largest centered square at the images' own size, grey or RGB as they are.
FOLDER_PIXELS = PixelSpec("folder", "an image folder")
PIXELS = {spec.dataset: spec for spec in (DSPRITES_PIXELS, CELEBA_PIXELS, FOLDER_PIXELS)}


def pixel_spec(dataset: str | None) -> PixelSpec:
    """The PixelSpec of a dataset name (as a model's metadata records it); for a name not in PIXELS,
    the default treatment (`PixelSpec`'s defaults) under that name."""
    return PIXELS.get(dataset or "") or PixelSpec(dataset or "", dataset or "")


class ImageDecodeError(ValueError):
    """The data is not an image Pillow can read, or it is damaged; the message says which."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the decompression-bomb limit allows."""


def decode(
    source: Source,
    *,
    channels: int,
    size: int | None,
    crop: int | float | None = None,
    background: int = BACKGROUND,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Decode one image to uint8 (channels, size, size) — or (channels, H, W) when `size` is None.

    source: a path, the file's bytes, a binary file object, or an already opened `PIL.Image`.
    The rules, in the order they apply:
    - Size limit: width·height is read from the header and checked against `max_pixels` (None: Pillow's
      `Image.MAX_IMAGE_PIXELS`) before any pixel is decoded; past it `ImageTooLargeError`. No global
      state (such as the `warnings` filters) is touched, so concurrent calls are safe.
    - The whole file is decoded (a truncated file fails here) and its EXIF orientation applied
      (`PIL.ImageOps.exif_transpose`), so a phone photo is upright.
    - Grey stays grey, colour becomes RGB: 1-bit → 0/255; 16-bit integer data (PIL modes I;16*, and I,
      read as 0–65535) → round(v / 257); float data (F) → clip(v, 0, 1)·255; palette → its colours;
      CMYK, YCbCr, LAB, HSV → RGB via Pillow.
    - Alpha (RGBA, LA, PA, a palette with a transparent index) is composited over the grey level
      `background` (default 255, white), then dropped.
    - Crop: a centered square — `crop=None` the largest one; an int, that many px (ImageDecodeError when
      the image is smaller); a float in (0, 1], that fraction of the shorter side, rounded.
    - Resize: none when the crop already is size×size; otherwise Pillow's bilinear filter, antialiased
      when shrinking (as torchvision's Resize), on the grey or RGB image.
    - Channels: 1 → grey by Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B; exact for grey
      pixels), 3 → RGB (grey is copied to all three). Which one a data set uses is the caller's choice
      (the training CLI's `--channels auto` keeps a data set grey when every image is grey).
    Raises ImageDecodeError (a ValueError) for unreadable or damaged data, ImageTooLargeError past the limit,
    ValueError for bad arguments.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive number of pixels or None, got {size!r}")
    if not 0 <= background <= 255:
        raise ValueError(f"background must be a grey level in [0, 255], got {background!r}")
    img = square_crop(flatten(load(source, max_pixels), background), crop)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def load(source: Source, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode `source`, size-checked, EXIF orientation applied (see `decode`)."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if isinstance(source, Image.Image):
        _check_size(source.size, limit)
        source.load()
        return ImageOps.exif_transpose(source)
    if source is None:
        raise ImageDecodeError("no image given")
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with Image.open(stream) as img:
            _check_size(img.size, limit)  # only the header is read so far
            img.load()
            return ImageOps.exif_transpose(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check in open(): a hard stop at twice its limit, or its warning made an error by
        # a caller's warnings filter.
        raise ImageTooLargeError(_too_large(limit)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read (use PNG, JPEG, GIF, BMP, TIFF, WebP)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data in a known format
        raise ImageDecodeError(f"the image file is damaged or truncated ({e})") from None


def _check_size(wh: tuple[int, int], limit: int | None) -> None:
    if limit is not None and wh[0] * wh[1] > limit:
        raise ImageTooLargeError(_too_large(limit, wh))


def _too_large(limit: int, wh=None) -> str:
    got = f"{wh[0]}×{wh[1]} = {wh[0] * wh[1]:,} pixels" if wh else "more than twice that"
    return f"the image is too large to decode safely ({got}; the limit is {limit:,}): downscale it first"


def flatten(img: Image.Image, background: int = BACKGROUND) -> Image.Image:
    """Any Pillow mode → 'L' (grey sources) or 'RGB', alpha composited over `background`."""
    mode = img.mode
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0
        return Image.fromarray(np.floor(arr + 0.5).astype(np.uint8), mode="L")
    if mode == "I" or mode.startswith("I;16"):
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(((arr * 2 + 257) // 514).astype(np.uint8), mode="L")  # round(v / 257)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        grey = mode in ("LA", "La")
        rgba = img.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(under, rgba).convert("L" if grey else "RGB")
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    try:
        return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    except ValueError:
        raise ImageDecodeError(f"images in Pillow mode {mode!r} are not supported: save it as PNG") from None


def square_crop(img: Image.Image, crop: int | float | None = None) -> Image.Image:
    """The centered square of `decode`'s crop rule."""
    w, h = img.size
    if min(w, h) < 1:
        raise ImageDecodeError(f"the image is empty ({w}×{h} px)")
    if crop is None:
        side = min(w, h)
    elif isinstance(crop, float):
        if not 0.0 < crop <= 1.0:
            raise ValueError(f"a fractional crop must lie in (0, 1], got {crop}")
        side = max(1, round(min(w, h) * crop))
    else:
        side = int(crop)
        if side < 1:
            raise ValueError(f"crop must be a positive number of pixels, got {crop}")
        if side > min(w, h):
            raise ImageDecodeError(f"the image of {w}×{h} px is smaller than the {side} px center crop")
    if (w, h) == (side, side):
        return img
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def is_grey(image: torch.Tensor) -> bool:
    """Whether a decoded (C, H, W) image carries no colour: one channel, or three equal ones."""
    return image.shape[0] == 1 or bool((image[0] == image[1]).all() and (image[0] == image[2]).all())
