"""vae_triton.images.decode: real-world file kinds, made with Pillow, decode to the same pixels in the
training cache and in the app; 16-bit and EXIF against known pixels; the size limit under concurrency."""

from __future__ import annotations

import io
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from demo import images as app_images
from train.data import get_dataset
from vae_triton.images import ImageDecodeError, ImageTooLargeError, decode

RES = 16


def _rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def _jpeg_with_orientation(img: Image.Image, orientation: int, path) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    img.save(path, format="JPEG", quality=100, exif=exif)


def _kinds(rng) -> dict:
    """name → (writer(path), grey?). Non-square sizes, so the crop and the resize both act."""
    rgb = rng.integers(0, 256, (28, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (28, 40), dtype=np.uint8)
    alpha = rng.integers(0, 256, (28, 40), dtype=np.uint8)

    def save(img, fmt="PNG", **kw):
        return lambda path: img.save(path, format=fmt, **kw)

    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    cmyk = Image.fromarray(rng.integers(0, 256, (28, 40, 4), dtype=np.uint8), "CMYK")
    return {
        "grey8.png": (save(Image.fromarray(grey, "L")), True),
        "grey16.png": (save(Image.fromarray(grey.astype(np.uint16) * 256 + 100)), True),  # I;16
        "rgba.png": (save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), False),
        "palette-transparent.png": (save(palette, transparency=3), False),
        "cmyk.jpg": (save(cmyk, "JPEG", quality=95), False),
        "exif6.jpg": (lambda path: _jpeg_with_orientation(Image.fromarray(rgb), 6, path), False),
        "la.png": (save(Image.fromarray(np.dstack([grey, alpha]), "LA")), True),
        "bilevel.png": (save(Image.fromarray(grey > 127).convert("1")), True),
        "exactly-16px.png": (save(Image.fromarray(rgb[:RES, :RES])), False),
    }


@pytest.mark.parametrize("kind", sorted(_kinds(np.random.default_rng(0))))
@pytest.mark.parametrize("channels", ["auto", "3"])
def test_training_cache_and_app_see_the_same_pixels(kind, channels, tmp_path, request):
    write, grey = _kinds(_rng(request))[kind]
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder / kind)
    ds = get_dataset(
        "folder", data_dir=folder, resolution=RES, cache_dir=tmp_path / "cache", channels=channels
    )
    c = 1 if (channels == "auto" and grey) else 3
    assert ds.images.shape == (1, c, RES, RES), kind
    # The app: upload → open_image → to_model_input with a folder-trained model's channel count.
    x = app_images.to_model_input(app_images.open_image(str(folder / kind)), c, RES, "folder")
    assert torch.equal(torch.from_numpy(np.array(ds.images[0])).float()[None] / 255.0, x), kind


def test_16_bit_grey_is_scaled_not_saturated(tmp_path):
    values = np.array([0, 128, 257, 32767, 32768, 65279, 65535], dtype=np.uint16)
    arr = np.resize(values, (RES, RES)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")  # uint16 → mode I;16
    expected = np.floor(arr / 257.0 + 0.5).astype(np.uint8)  # v / 257, rounded: 65535 → 255, 32768 → 128
    got = decode(tmp_path / "g16.png", channels=1, size=RES)
    assert got.dtype == torch.uint8 and got.shape == (1, RES, RES)
    assert np.array_equal(got[0].numpy(), expected)
    rgb = decode(tmp_path / "g16.png", channels=3, size=RES).numpy()
    assert np.array_equal(rgb, np.stack([expected] * 3))
    folder = tmp_path / "f"
    folder.mkdir()
    (tmp_path / "g16.png").rename(folder / "g16.png")
    cached = get_dataset("folder", data_dir=folder, resolution=RES, cache_dir=tmp_path / "c").images
    assert cached.shape == (1, 1, RES, RES) and np.array_equal(cached[0, 0], expected)  # grey, not saturated


def test_exif_orientation_6_is_applied(tmp_path):
    # Stored 32 wide × 16 high, left half white: Orientation=6 shows it turned 90° clockwise (16 × 32), so
    # the white half is on top. Decoded without the EXIF rule, the white half would be on the left.
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = 255
    _jpeg_with_orientation(Image.fromarray(stored), 6, tmp_path / "o6.jpg")
    got = decode(tmp_path / "o6.jpg", channels=1, size=None)[0].numpy().astype(int)
    assert got.shape == (16, 16)  # the centered square of the upright 16 × 32 image
    assert got[:6].min() > 200 and got[10:].max() < 50
    folder = tmp_path / "f"
    folder.mkdir()
    (tmp_path / "o6.jpg").rename(folder / "o6.jpg")
    cached = get_dataset("folder", data_dir=folder, resolution=16, cache_dir=tmp_path / "c").images[0, 0]
    assert np.array_equal(np.asarray(cached), got)


def test_alpha_palette_grey_and_bilevel_rules():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode(clear, channels=3, size=8).unique().tolist() == [255]  # the documented white
    assert decode(clear, channels=3, size=8, background=0).unique().tolist() == [0]
    half = Image.new("LA", (8, 8), (0, 128))  # black at ~half opacity over white
    assert decode(half, channels=1, size=8).unique().tolist() == [127]
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode(pal, channels=3, size=8)[:, 0, 0].tolist() == [10, 200, 30]
    pal.info["transparency"] = 1
    assert decode(pal, channels=3, size=8)[:, 0, 0].tolist() == [255, 255, 255]
    bits = Image.new("1", (8, 8), 1)
    assert decode(bits, channels=1, size=8).unique().tolist() == [255]
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    assert decode(cyan, channels=3, size=8)[:, 0, 0].tolist() == [0, 255, 255]
    grey_rgb = Image.new("RGB", (8, 8), (90, 90, 90))
    assert decode(grey_rgb, channels=1, size=8).unique().tolist() == [90]  # 601-2 luma is exact on grey


def test_no_resize_at_the_target_size_and_the_crop_rule():
    arr = np.random.default_rng(3).integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    assert np.array_equal(decode(Image.fromarray(arr), channels=3, size=RES).numpy(), arr.transpose(2, 0, 1))
    wide = np.random.default_rng(4).integers(0, 256, (RES, RES + 10, 3), dtype=np.uint8)
    # The largest centered square of a 26 × 16 image starts at column 5: no resize needed after it.
    got = decode(Image.fromarray(wide), channels=3, size=RES).numpy()
    assert np.array_equal(got, wide[:, 5:21].transpose(2, 0, 1))
    big = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    expected = np.asarray(big.crop((4, 4, 36, 36)).resize((8, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(decode(big, channels=3, size=8, crop=32).numpy(), expected.transpose(2, 0, 1))
    assert decode(big, channels=3, size=None, crop=0.5).shape == (3, 20, 20)
    with pytest.raises(ImageDecodeError, match="smaller than the 64 px"):
        decode(big, channels=3, size=8, crop=64)


def test_sources_and_bad_input(tmp_path):
    img = Image.fromarray(np.random.default_rng(6).integers(0, 256, (30, 32), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    expected = decode(tmp_path / "a.png", channels=1, size=4)
    for source in (str(tmp_path / "a.png"), data, io.BytesIO(data), img):
        assert torch.equal(decode(source, channels=1, size=4), expected)
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode(b"plain text" * 20, channels=1, size=4)
    with pytest.raises(ImageDecodeError, match="damaged or truncated"):
        decode(data[: len(data) // 2], channels=1, size=4)
    with pytest.raises(ValueError, match="channels"):
        decode(data, channels=2, size=4)


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 9).save(buf, format="PNG")
    return buf.getvalue()


def test_size_limit_is_checked_from_the_header_without_touching_warnings(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("decode must not change the process-global warnings state")

    monkeypatch.setattr(warnings, "catch_warnings", forbidden)
    monkeypatch.setattr(warnings, "simplefilter", forbidden)
    monkeypatch.setattr(warnings, "filterwarnings", forbidden)
    with pytest.raises(ImageTooLargeError, match="40×40 = 1,600 pixels; the limit is 1,000"):
        decode(_png(40), channels=1, size=8, max_pixels=1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own hard stop (past 2×) inside open()
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode(_png(40), channels=1, size=8)
    assert decode(_png(9), channels=1, size=8).shape == (1, 8, 8)


def test_size_limit_holds_under_concurrency(monkeypatch):
    # The app's limit (Pillow's, lowered); a 40×40 image is over it but under twice it, where Pillow itself
    # only warns: the refusal must come from the header check, in every thread, every time.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb, fine = _png(40), _png(30)
    filters_before = list(warnings.filters)
    start = threading.Barrier(8)

    def upload(i: int) -> str:
        if i < 8:
            start.wait()
        try:
            app_images.open_image(bomb if i % 2 else fine)
        except app_images.InputError as e:
            return "refused" if "too large" in str(e) else f"wrong error: {e}"
        return "decoded"

    with warnings.catch_warnings():  # keep Pillow's own DecompressionBombWarning out of the test log
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(upload, range(400)))
        inside = list(warnings.filters)
    assert results == ["decoded", "refused"] * 200
    assert list(warnings.filters) == filters_before and len(inside) == len(filters_before) + 1
