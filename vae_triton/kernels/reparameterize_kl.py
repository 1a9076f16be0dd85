"""Fused reparameterization + KL to N(0, I): one forward kernel, one backward kernel.

Forward, per element (fp32 math):  lv = clamp(logvar, lo, hi),  z = mu + exp(½·lv)·ε,
    kl_b = ½ Σ_d (exp(lv) + mu² − 1 − lv)   (per-row partials, summed by `torch.sum` only when a row spans
several column chunks: a 128-wide latent is one chunk, so the kernel writes the KL itself).
ε is drawn in the kernel with `tl.randn(seed, b·D + d)`: Philox keyed by the seed, counter = the global
int64 element index, so the stream depends on neither the tiling nor the strides, and the backward kernel
regenerates exactly the forward's ε. Nothing B×D is saved for backward beyond mu and logvar.

Backward:  ∂mu = g_z + g_kl·mu,   ∂logvar = 1[lo ≤ logvar ≤ hi] · (g_z·½·exp(½·lv)·ε + g_kl·½·(exp(lv) − 1))
(the indicator is `torch.clamp`'s gradient).

Bytes for a B×D latent in dtype size s (the KL vector and seed are O(B)):
    forward  read mu, logvar, write z                       3·B·D·s   (+ B·D·s to read an injected ε)
    backward read g_z, mu, logvar, write ∂mu, ∂logvar       5·B·D·s   (+ B·D·s to read an injected ε)
Saving ε instead of regenerating it would add a B×D write in forward and a read in backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import grid, row_tiles


@triton.jit
def _load_posterior_tile(
    mu_ptr, lv_ptr, eps_ptr, seed_ptr, r, c, mask, D,
    mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd, lo, hi, HAS_EPS: tl.constexpr,
):  # fmt: skip
    """mu, the raw logvar, the clamped logvar and ε of one tile, in fp32. Forward and backward share it,
    so backward's ε is the forward's by construction (same counter: the global element index r·D + c)."""
    mu = tl.load(mu_ptr + r * mu_sb + c * mu_sd, mask=mask, other=0.0).to(tl.float32)
    lv_in = tl.load(lv_ptr + r * lv_sb + c * lv_sd, mask=mask, other=0.0).to(tl.float32)
    lv = tl.minimum(tl.maximum(lv_in, lo), hi)
    if HAS_EPS:
        eps = tl.load(eps_ptr + r * eps_sb + c * eps_sd, mask=mask, other=0.0).to(tl.float32)
    else:
        eps = tl.randn(tl.load(seed_ptr), r * D + c)  # one scalar load per tile, served from cache
    return mu, lv_in, lv, eps


@triton.jit
def _reparameterize_kl_fwd(
    mu_ptr, lv_ptr, eps_ptr, seed_ptr, z_ptr, kl_part_ptr,
    B, D, chunks,
    mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd,
    lo, hi,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        cols = (tl.program_id(1) * ITERS + it) * BLOCK_D + tl.arange(0, BLOCK_D)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < D)[None, :]
        mu, _, lv, eps = _load_posterior_tile(
            mu_ptr, lv_ptr, eps_ptr, seed_ptr, r, c, mask, D,
            mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd, lo, hi, HAS_EPS,
        )  # fmt: skip
        z = mu + tl.exp(0.5 * lv) * eps
        tl.store(z_ptr + r * D + c, z.to(z_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(mask, tl.exp(lv) + mu * mu - 1.0 - lv, 0.0)
    tl.store(
        kl_part_ptr + rows.to(tl.int64) * chunks + tl.program_id(1), 0.5 * tl.sum(acc, axis=1), mask=row_ok
    )


@triton.jit
def _reparameterize_kl_bwd(
    gz_ptr, gkl_ptr, mu_ptr, lv_ptr, eps_ptr, seed_ptr, gmu_ptr, glv_ptr,
    B, D,
    gz_sb, gz_sd, gkl_sb, mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd,
    lo, hi,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    gkl = tl.load(gkl_ptr + rows.to(tl.int64) * gkl_sb, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    for it in tl.static_range(ITERS):
        cols = (tl.program_id(1) * ITERS + it) * BLOCK_D + tl.arange(0, BLOCK_D)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < D)[None, :]
        gz = tl.load(gz_ptr + r * gz_sb + c * gz_sd, mask=mask, other=0.0).to(tl.float32)
        mu, lv_in, lv, eps = _load_posterior_tile(
            mu_ptr, lv_ptr, eps_ptr, seed_ptr, r, c, mask, D,
            mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd, lo, hi, HAS_EPS,
        )  # fmt: skip
        gmu = gz + gkl * mu
        glv = 0.5 * (gz * tl.exp(0.5 * lv) * eps + gkl * (tl.exp(lv) - 1.0))
        glv = tl.where((lv_in >= lo) & (lv_in <= hi), glv, 0.0)
        tl.store(gmu_ptr + r * D + c, gmu.to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + r * D + c, glv.to(glv_ptr.dtype.element_ty), mask=mask)


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def reparameterize_kl_fwd(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed: torch.Tensor | None,
    eps: torch.Tensor | None,
    lo: float,
    hi: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z (B, D) in mu's dtype, contiguous, and kl (B,) float32. Exactly one of `seed` / `eps` is given."""
    batch, dim = mu.shape
    z = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    if batch == 0 or dim == 0:
        return z, torch.zeros(batch, dtype=torch.float32, device=mu.device)
    tiles = row_tiles(batch, dim)
    one_chunk = tiles.chunks == 1  # then the kernel writes the KL itself: no extra launch
    shape = (batch,) if one_chunk else (batch, tiles.chunks)
    partials = torch.empty(shape, dtype=torch.float32, device=mu.device)
    _reparameterize_kl_fwd[grid(tiles, batch)](
        mu, logvar, eps if eps is not None else mu, seed if seed is not None else mu, z, partials,
        batch, dim, tiles.chunks,
        *_strides(mu), *_strides(logvar), *_strides(eps),
        lo, hi,
        HAS_EPS=eps is not None, BLOCK_B=tiles.block_b, BLOCK_D=tiles.block_l, ITERS=tiles.iters,
        num_warps=tiles.num_warps,
    )  # fmt: skip
    return z, (partials if one_chunk else partials.sum(dim=1))


def reparameterize_kl_bwd(
    grad_z: torch.Tensor,
    grad_kl: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    seed: torch.Tensor | None,
    eps: torch.Tensor | None,
    lo: float,
    hi: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂mu, ∂logvar), contiguous, in mu's and logvar's dtypes."""
    batch, dim = mu.shape
    grad_mu = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    grad_logvar = torch.empty((batch, dim), dtype=logvar.dtype, device=mu.device)
    if batch == 0 or dim == 0:
        return grad_mu, grad_logvar
    tiles = row_tiles(batch, dim)
    _reparameterize_kl_bwd[grid(tiles, batch)](
        grad_z, grad_kl, mu, logvar, eps if eps is not None else mu, seed if seed is not None else mu,
        grad_mu, grad_logvar,
        batch, dim,
        *_strides(grad_z), grad_kl.stride(0), *_strides(mu), *_strides(logvar), *_strides(eps),
        lo, hi,
        HAS_EPS=eps is not None, BLOCK_B=tiles.block_b, BLOCK_D=tiles.block_l, ITERS=tiles.iters,
        num_warps=tiles.num_warps,
    )  # fmt: skip
    return grad_mu, grad_logvar
