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

from . import common
from .common import grid, row_tiles


@triton.jit
def _load_posterior_tile(
    mu_ptr, lv_ptr, eps_ptr, seed_ptr, r, c, mask, D,
    mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd, lo, hi, HAS_EPS: tl.constexpr,
):  # fmt: skip
    """mu, the raw logvar, the clamped logvar and ε of one tile, in fp32. Forward and backward share it,
    so backward's ε is the forward's by construction (same counter: the global element index r·D + c)."""
    mu = common.load_tile(mu_ptr, r, mu_sb, c, mu_sd, mask)
    lv_in = common.load_tile(lv_ptr, r, lv_sb, c, lv_sd, mask)
    lv = tl.minimum(tl.maximum(lv_in, lo), hi)
    if HAS_EPS:
        eps = common.load_tile(eps_ptr, r, eps_sb, c, eps_sd, mask)
    else:
        eps = tl.randn(tl.load(seed_ptr), r * D + c)  # one scalar load per tile, served from cache
    return mu, lv_in, lv, eps


@triton.jit
def _reparameterize_kl_fwd(
    mu_ptr, lv_ptr, eps_ptr, seed_ptr, z_ptr, kl_part_ptr,
    B, D,
    mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd,
    lo, hi,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(B, BLOCK_B)
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        _, c, mask = common.column_tile(tl.program_id(1), it, row_ok, D, BLOCK_L, ITERS)
        mu, _, lv, eps = _load_posterior_tile(
            mu_ptr, lv_ptr, eps_ptr, seed_ptr, r, c, mask, D,
            mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd, lo, hi, HAS_EPS,
        )  # fmt: skip
        z = mu + tl.exp(0.5 * lv) * eps
        tl.store(z_ptr + r * D + c, z.to(z_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(mask, tl.exp(lv) + mu * mu - 1.0 - lv, 0.0)
    common.store_partial(kl_part_ptr, 0.5 * tl.sum(acc, axis=1), rows, row_ok)


@triton.jit
def _reparameterize_kl_bwd(
    gz_ptr, gkl_ptr, mu_ptr, lv_ptr, eps_ptr, seed_ptr, gmu_ptr, glv_ptr,
    B, D,
    gz_sb, gz_sd, gkl_sb, mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd,
    lo, hi,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(B, BLOCK_B)
    gkl = common.load_per_row(gkl_ptr, gkl_sb, rows, row_ok)
    for it in tl.static_range(ITERS):
        _, c, mask = common.column_tile(tl.program_id(1), it, row_ok, D, BLOCK_L, ITERS)
        gz = common.load_tile(gz_ptr, r, gz_sb, c, gz_sd, mask)
        mu, lv_in, lv, eps = _load_posterior_tile(
            mu_ptr, lv_ptr, eps_ptr, seed_ptr, r, c, mask, D,
            mu_sb, mu_sd, lv_sb, lv_sd, eps_sb, eps_sd, lo, hi, HAS_EPS,
        )  # fmt: skip
        gmu = gz + gkl * mu
        glv = 0.5 * (gz * tl.exp(0.5 * lv) * eps + gkl * (tl.exp(lv) - 1.0))
        glv = tl.where((lv_in >= lo) & (lv_in <= hi), glv, 0.0)
        tl.store(gmu_ptr + r * D + c, gmu.to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + r * D + c, glv.to(glv_ptr.dtype.element_ty), mask=mask)


def _noise(mu: torch.Tensor, seed: torch.Tensor | None, eps: torch.Tensor | None) -> tuple:
    """(ε pointer, seed pointer, ε strides) for the kernels; the one of ε / seed not given is never read
    (`HAS_EPS`), so mu stands in for its pointer."""
    eps_strides = (0, 0) if eps is None else (eps.stride(0), eps.stride(1))
    return eps if eps is not None else mu, seed if seed is not None else mu, eps_strides


def reparameterize_kl_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor | None, eps: torch.Tensor | None,
    lo: float, hi: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """z (B, D) in mu's dtype, contiguous, and kl (B,) float32. Exactly one of `seed` / `eps` is given."""
    batch, dim = mu.shape
    z = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    if batch == 0 or dim == 0:
        return z, torch.zeros(batch, dtype=torch.float32, device=mu.device)
    tiles = row_tiles(batch, dim)
    partials = common.row_partials(batch, tiles.chunks, mu.device)
    eps_ptr, seed_ptr, eps_strides = _noise(mu, seed, eps)
    _reparameterize_kl_fwd[grid(tiles, batch)](
        mu, logvar, eps_ptr, seed_ptr, z, partials,
        batch, dim, *mu.stride(), *logvar.stride(), *eps_strides, lo, hi,
        HAS_EPS=eps is not None, **tiles.launch,
    )  # fmt: skip
    return z, common.row_sums(partials)


def reparameterize_kl_bwd(
    grad_z: torch.Tensor, grad_kl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
    seed: torch.Tensor | None, eps: torch.Tensor | None, lo: float, hi: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(∂mu, ∂logvar), contiguous, in mu's and logvar's dtypes."""
    batch, dim = mu.shape
    grad_mu = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    grad_logvar = torch.empty((batch, dim), dtype=logvar.dtype, device=mu.device)
    if batch == 0 or dim == 0:
        return grad_mu, grad_logvar
    tiles = row_tiles(batch, dim)
    eps_ptr, seed_ptr, eps_strides = _noise(mu, seed, eps)
    _reparameterize_kl_bwd[grid(tiles, batch)](
        grad_z, grad_kl, mu, logvar, eps_ptr, seed_ptr, grad_mu, grad_logvar,
        batch, dim, *grad_z.stride(), grad_kl.stride(0), *mu.stride(), *logvar.stride(), *eps_strides, lo, hi,
        HAS_EPS=eps is not None, **tiles.launch,
    )  # fmt: skip
    return grad_mu, grad_logvar
