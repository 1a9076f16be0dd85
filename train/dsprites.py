"""Procedural dSprites (Matthey et al. 2017): 64×64 binary sprites with five known generative factors.

The spec: shape ∈ {square, ellipse, heart}, 6 scales linearly in [0.5, 1], 40 orientations in [0, 2π),
32 × 32 positions, every combination once (737,280 images). Rendered here rather than downloaded, so it
is deterministic and works offline; the exact pixels differ from DeepMind's file, the factor
structure is the same.

Two renderers of the same geometry: `render` (NumPy, the reference: the bundled models were trained on
its images) and `render_torch` (torch, on any device, used to render each training batch on demand from
its factors — no cache, no wait). They agree pixel for pixel: the torch one repeats the reference's float32
arithmetic operation by operation, with the same float32 tables (cos, sin, centres, radii) computed by
NumPy; tests/train/test_data.py checks a sample, bench/check_dsprites_render.py checks all 737,280 images.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import torch

from vae_triton.images import DSPRITES_PIXELS

from .imagecache import ImageDataset

FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
FACTOR_SIZES = [3, 6, 40, 32, 32]
SHAPES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.arange(40) * (2 * np.pi / 40)
POSITIONS = np.linspace(0.0, 1.0, 32)
IMAGE_SIZE = DSPRITES_PIXELS.size  # the geometry below is laid out for this side (64 px)
SPLITS = ("train", "test", "all")
OLD_CACHE = "dsprites-all-64px.npy"  # the 3.0 GB cache of versions before on-demand rendering
_TEST_FRACTION = 0.05
_SPLIT_SEED = 20170301  # fixes the shuffled order, and with it the train/test split

# Geometry in pixels: at scale 1 a sprite has half-extent 10 px, so even the rotated square (half
# diagonal 14.1 px) stays inside the frame when its centre runs over [16, 48].
_HALF_EXTENT = 10.0
_CENTRE_MIN, _CENTRE_SPAN = 16.0, 32.0
_WINDOW = 32


def num_images() -> int:
    return int(np.prod(FACTOR_SIZES))


def all_factors() -> np.ndarray:
    """Every factor combination, (737280, 5) int64, in the canonical (row-major) order."""
    grids = np.meshgrid(*[np.arange(n) for n in FACTOR_SIZES], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)


def factors_to_index(factors: np.ndarray) -> np.ndarray:
    """Row of the canonical order for each factor row."""
    return np.ravel_multi_index(tuple(np.asarray(factors).T), FACTOR_SIZES).astype(np.int64)


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """n independent uniform factor rows, (n, 5) int64."""
    return np.stack([rng.integers(0, s, size=n) for s in FACTOR_SIZES], axis=1).astype(np.int64)


def render(factors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Binary images for factor index rows (shape, scale, orientation, posX, posY): uint8 (N, 1, 64, 64)."""
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != 5 or not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(
            f"factors must be integer indices of shape (N, 5) (shape, scale, orientation, posX, posY), "
            f"got {factors.dtype} {factors.shape}"
        )
    if len(factors) and ((factors.min(axis=0) < 0).any() or (factors.max(axis=0) >= FACTOR_SIZES).any()):
        raise ValueError(f"factor indices must lie in [0, size) with sizes {FACTOR_SIZES}")
    out = np.zeros((len(factors), 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, len(factors), chunk):
        _render_chunk(factors[start : start + chunk], out[start : start + chunk, 0])
    return out


def _render_chunk(f: np.ndarray, out: np.ndarray) -> None:
    # Only a 32×32 window around each centre can be covered (sprite radius ≤ 14.2 px), so shade that.
    cx = (_CENTRE_MIN + _CENTRE_SPAN * POSITIONS[f[:, 3]]).astype(np.float32)
    cy = (_CENTRE_MIN + _CENTRE_SPAN * POSITIONS[f[:, 4]]).astype(np.float32)
    ox = np.clip(np.floor(cx).astype(np.int64) - _WINDOW // 2, 0, IMAGE_SIZE - _WINDOW)
    oy = np.clip(np.floor(cy).astype(np.int64) - _WINDOW // 2, 0, IMAGE_SIZE - _WINDOW)
    cols = ox[:, None] + np.arange(_WINDOW)  # (N, W) pixel indices
    rows = oy[:, None] + np.arange(_WINDOW)
    dx = (cols + 0.5 - cx[:, None]).astype(np.float32)[:, None, :]  # (N, 1, W), pixel centres
    dy = (rows + 0.5 - cy[:, None]).astype(np.float32)[:, :, None]  # (N, H, 1), y grows downwards
    radius = (_HALF_EXTENT * SCALES[f[:, 1]]).astype(np.float32)[:, None, None]
    theta = ORIENTATIONS[f[:, 2]].astype(np.float32)[:, None, None]
    cos, sin = np.cos(theta), np.sin(theta)
    # The sprite turns counter-clockwise by θ, so rotate pixel offsets by −θ into its frame (v up),
    # normalised by its size.
    u = (cos * dx - sin * dy) / radius
    v = (sin * dx + cos * dy) / -radius
    shape = f[:, 0][:, None, None]
    square = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    ellipse = (u * u + 4.0 * v * v) <= 1.0  # semi-axes 1 and ½
    # Heart curve (x² + y² − 1)³ − x²y³ ≤ 0 spans x ∈ ±1.14, y ∈ [−1, 1.24]; shrink it to the same
    # half-extent and centre it vertically.
    hx, hy = u * 1.14, v * 1.12 + 0.12
    heart = (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy**3 <= 0.0
    window = np.where(shape == 0, square, np.where(shape == 1, ellipse, heart)).astype(np.uint8) * 255
    out[np.arange(len(f))[:, None, None], rows[:, :, None], cols[:, None, :]] = window


# ---- the same images in torch, on any device ----------------------------------------------------------
# Per-factor float32 tables, computed exactly as `_render_chunk` computes them per image.
_F32 = np.float32
_CENTRES = (_CENTRE_MIN + _CENTRE_SPAN * POSITIONS).astype(_F32)
_RADII = (_HALF_EXTENT * SCALES).astype(_F32)
_THETA = ORIENTATIONS.astype(_F32)
_COS, _SIN = np.cos(_THETA), np.sin(_THETA)
_TABLES: dict[torch.device, tuple[torch.Tensor, ...]] = {}


def _tables(device: torch.device) -> tuple[torch.Tensor, ...]:
    if device not in _TABLES:
        _TABLES[device] = tuple(torch.from_numpy(t).to(device) for t in (_CENTRES, _RADII, _COS, _SIN))
    return _TABLES[device]


def render_torch(factors: torch.Tensor, *, group: bool | None = None) -> torch.Tensor:
    """`render` on factors' device: int64 (N, 5) factor indices → uint8 (N, 1, 64, 64), 0 or 255.

    Same images as `render`. Do not torch.compile it: fused multiply-adds would change the rounding.
    Indices are not range-checked here (the caller draws them from the factor grid); see `render`.
    group: shade each image's own shape only (default on the CPU; on a GPU it would cost a host sync,
    so there all three shapes are shaded and one is picked)."""
    f = torch.as_tensor(factors)
    if f.ndim != 2 or f.shape[1] != 5 or f.is_floating_point():
        raise ValueError(f"factors must be integer indices of shape (N, 5), got {f.dtype} {tuple(f.shape)}")
    device, n = f.device, len(f)
    centres, radii, cos_t, sin_t = _tables(device)
    cx, cy = centres[f[:, 3]], centres[f[:, 4]]
    ox = (cx.floor().long() - _WINDOW // 2).clamp(0, IMAGE_SIZE - _WINDOW)
    oy = (cy.floor().long() - _WINDOW // 2).clamp(0, IMAGE_SIZE - _WINDOW)
    span = torch.arange(_WINDOW, device=device)
    cols, rows = ox[:, None] + span, oy[:, None] + span
    # NumPy computes `cols + 0.5 - cx` in float64 (int64 + float), then rounds to float32: so do we.
    dx = (cols.double() + 0.5 - cx.double()[:, None]).float()[:, None, :]
    dy = (rows.double() + 0.5 - cy.double()[:, None]).float()[:, :, None]
    radius = radii[f[:, 1]][:, None, None]
    cos, sin = cos_t[f[:, 2]][:, None, None], sin_t[f[:, 2]][:, None, None]
    u = (cos * dx - sin * dy) / radius
    v = (sin * dx + cos * dy) / -radius
    shape = f[:, 0]
    if device.type == "cpu" if group is None else group:
        window = torch.empty(u.shape, dtype=torch.bool, device=device)
        for s, inside in enumerate(_INSIDE):
            sel = (shape == s).nonzero().squeeze(1)
            if len(sel):
                window[sel] = inside(u[sel], v[sel])
    else:
        s = shape[:, None, None]
        window = torch.where(s == 0, _square(u, v), torch.where(s == 1, _ellipse(u, v), _heart(u, v)))
    out = torch.zeros(n, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=device)
    out[torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]] = (
        window.to(torch.uint8) * 255
    )
    return out[:, None]


def _square(u, v):
    return (u.abs() <= 1.0) & (v.abs() <= 1.0)


def _ellipse(u, v):
    return (u * u + 4.0 * v * v) <= 1.0


def _heart(u, v):
    hx, hy = u * 1.14, v * 1.12 + 0.12
    a = hx * hx + hy * hy - 1.0
    return a * a * a - hx * hx * (hy * hy * hy) <= 0.0


_INSIDE = (_square, _ellipse, _heart)


class RenderedImages:
    """dSprites images for a fixed list of factor rows, rendered when read: an array-like uint8
    (N, 1, 64, 64) that needs no memory or disk for the images themselves.

    Indexing (an int, a slice, an index array) returns a NumPy array like a memmap read would;
    `render(indices, device)` renders rows straight on a torch device (what training batches use)."""

    dtype = np.dtype(np.uint8)

    def __init__(self, factors: np.ndarray):
        self.factors = np.array(factors, dtype=np.int64)  # a private, writable copy (torch shares it)
        self._on: dict[torch.device, torch.Tensor] = {}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.factors), 1, IMAGE_SIZE, IMAGE_SIZE)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.factors)

    def __getitem__(self, index) -> np.ndarray:
        rows = self.factors[index]
        single = rows.ndim == 1
        out = render_torch(torch.from_numpy(np.atleast_2d(rows))).numpy()
        return out[0] if single else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def head(self, n: int) -> RenderedImages:
        return RenderedImages(self.factors[:n])

    def render(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 (len(indices), 1, 64, 64) on `device` for rows `indices` (a tensor on that device)."""
        device = torch.device(device)
        if device not in self._on:  # the factor table moves to the device once (5.9 MB for all of dSprites)
            self._on[device] = torch.from_numpy(self.factors).to(device)
        return render_torch(self._on[device][indices.to(device)])


# ---- the dataset ------------------------------------------------------------------------------
@functools.cache
def shuffled_order() -> np.ndarray:
    """The canonical factor grid in a fixed shuffled order: test split first, then train (read-only)."""
    factors = all_factors()
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(factors))
    order = factors[perm]
    order.flags.writeable = False  # shared between calls
    return order


def load_dsprites(split: str, cache: Path, limit: int | None = None) -> ImageDataset:
    """The `split` (train: 95 %, test: 5 %, fixed; all) as images rendered on demand, its first `limit`
    only when given. `cache` is only looked at for an older version's cache file, named so that it can
    be deleted."""
    if split not in SPLITS:
        raise ValueError(f"dsprites has splits {SPLITS}, got split={split!r}")
    old = cache / OLD_CACHE
    if old.is_file():
        size = f"{old.stat().st_size / 1e9:.1f} GB"
        print(
            f"note: {old} ({size}) is an older version's dSprites cache; dSprites is now rendered on "
            "demand and never reads it: delete it to free the space",
            file=sys.stderr,
        )
    factors = shuffled_order()
    n_test = int(round(len(factors) * _TEST_FRACTION))
    rows = {"test": slice(0, n_test), "train": slice(n_test, None), "all": slice(None)}[split]
    factors = factors[rows][:limit]
    names, sizes = list(FACTOR_NAMES), list(FACTOR_SIZES)
    info = {"rendered": "on demand, on the training device"}
    return ImageDataset(RenderedImages(factors), factors, names, sizes, "dsprites", split, info)
