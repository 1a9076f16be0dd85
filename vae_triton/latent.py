"""Walks through latent space: linear and spherical interpolation, and single-dimension traversals.

Latents are float tensors of shape (D,) or (B, D); interpolation works along the last dimension.
Every helper refuses NaN or infinite latents, fractions and values with a ValueError naming the argument
(they would decode to NaN images); the check costs one host sync per argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

INTERPOLATION_MODES = ("linear", "spherical")

# Below this sin(Ω) the two latents are (anti)parallel: the great circle through them is undefined or
# numerically meaningless, and slerp falls back to the straight line.
_PARALLEL_SIN = 1e-6


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values: they would decode to NaN images")


def _as_fractions(t, like: torch.Tensor) -> torch.Tensor:
    try:
        t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"t must be a number or a 1-D sequence of fractions, got {t!r}") from None
    if t.dim() > 1:
        raise ValueError(f"t must be a number or a 1-D sequence of fractions, got shape {tuple(t.shape)}")
    _check_finite("t", t)
    return t


def _check_pair(z0: torch.Tensor, z1: torch.Tensor) -> None:
    for name, z in (("z0", z0), ("z1", z1)):
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {getattr(z, 'dtype', type(z).__name__)}")
        if z.dim() not in (1, 2):
            raise ValueError(f"{name} must have shape (D,) or (B, D), got {tuple(z.shape)}")
        _check_finite(name, z)
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")


def lerp(z0: torch.Tensor, z1: torch.Tensor, t) -> torch.Tensor:
    """(1 − t)·z0 + t·z1. A scalar t keeps z0's shape; a 1-D t of length T stacks T points in front."""
    _check_pair(z0, z1)
    tt = _as_fractions(t, z0)
    shape = tt.shape + (1,) * z0.dim()
    w = tt.reshape(shape)
    out = (1.0 - w) * z0.double() + w * z1.double()
    return out.to(z0.dtype)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for generative models) along the last dim.

    slerp = sin((1 − t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1, Ω the angle between z0 and z1. Unit vectors
    stay on the unit sphere, and the norm of a Gaussian latent is kept near √D instead of dipping
    through the low-density centre the straight line crosses. (Anti)parallel pairs fall back to `lerp`.
    Same shape rules as `lerp`.
    """
    _check_pair(z0, z1)
    tt = _as_fractions(t, z0)
    a, b = z0.double(), z1.double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    w = tt.reshape(tt.shape + (1,) * z0.dim())  # (T..., 1[, 1])
    # A zero vector has no direction: the straight line is the only sensible path there too.
    curved = (sin > _PARALLEL_SIN) & (a.norm(dim=-1) > 0) & (b.norm(dim=-1) > 0)
    omega_, curved_ = omega.unsqueeze(-1), curved.unsqueeze(-1)
    safe_sin = torch.where(curved_, sin.unsqueeze(-1), torch.ones_like(omega_))
    spherical = (torch.sin((1.0 - w) * omega_) * a + torch.sin(w * omega_) * b) / safe_sin
    straight = (1.0 - w) * a + w * b
    return torch.where(curved_, spherical, straight).to(z0.dtype)


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, mode: str = "linear") -> torch.Tensor:
    """`steps` evenly spaced points from z0 to z1 (both ends included): (steps, D) for (D,) inputs,
    (steps, B, D) for (B, D) inputs. `mode` is "linear" or "spherical"."""
    if mode not in INTERPOLATION_MODES:
        raise ValueError(f"mode must be one of {INTERPOLATION_MODES}, got {mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (the two ends count), got {steps!r}")
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    return (lerp if mode == "linear" else slerp)(z0, z1, t)


def traverse(z: torch.Tensor, dims: Sequence[int], values, *, relative: bool = False) -> torch.Tensor:
    """Latent traversal: for each dim d in `dims` and each v in `values`, a copy of z with z[d] set to v
    (or moved by v with `relative=True`). z has shape (D,); returns (len(dims), len(values), D)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 1 or not z.is_floating_point():
        raise ValueError(
            f"z must be one latent, a float tensor of shape (D,), got {getattr(z, 'shape', z)!r}"
        )
    _check_finite("z", z)
    dims = [int(d) for d in dims]
    size = z.shape[0]
    bad = [d for d in dims if not 0 <= d < size]
    if bad:
        raise ValueError(f"dims {bad} are out of range for a latent of size {size}")
    v = torch.as_tensor(values, dtype=z.dtype, device=z.device)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {tuple(v.shape)}")
    _check_finite("values", v)
    out = z.expand(len(dims), v.numel(), size).clone()
    for row, d in enumerate(dims):
        out[row, :, d] = z[d] + v if relative else v
    return out
