"""Procedural dSprites (Matthey et al. 2017): 64×64 binary sprites with five known generative factors.

The spec: shape ∈ {square, ellipse, heart}, 6 scales linearly in [0.5, 1], 40 orientations in [0, 2π),
32 × 32 positions, every combination once (737,280 images). Rendered here rather than downloaded, so it
is deterministic and works offline; the exact pixels differ from DeepMind's file, the factor
structure is the same.
"""

from __future__ import annotations

import numpy as np

FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
FACTOR_SIZES = [3, 6, 40, 32, 32]
SHAPES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.arange(40) * (2 * np.pi / 40)
POSITIONS = np.linspace(0.0, 1.0, 32)
IMAGE_SIZE = 64

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
