"""The importance-weighted bound's latent step, fused: K draws of z ~ q(z|x) and log q(z_k|x) − log p(z_k).

Forward, per element of the K·B rows (row r = k·B + b reads mu and logvar row b; fp32 math):
    lv = clamp(logvar, lo, hi),  σ = exp(½·lv),  z = mu + σ·ε,
    log_ratio_r = Σ_d [½ z² − ½ ε² − ½ lv]      (log N(z; mu, σ²) − log N(z; 0, I); the ½ log 2π cancel)
ε = `tl.randn(seed, r·D + d)`: the counter is the global element index of the (K·B, D) output, exactly as
`reparameterize_kl` draws it for K stacked copies of the rows, so both ops give the same z for one seed,
the stream depends on neither the tiling nor the strides, and backward regenerates the forward's ε.
The sum over d stays in the program when a row fits one column chunk (a latent of ≤ 8192 on a GPU).

Backward, one program per (rows of B, column chunk), looping over the K samples, K_UNROLL per trip (no
atomics, so deterministic), with t_k = g_z,k + g_r,k·z_k:
    ∂mu = Σ_k t_k,   ∂logvar = 1[lo ≤ logvar ≤ hi] · ½ Σ_k (σ·ε_k·t_k − g_r,k)
(the −½ε² term has no gradient: ε is fixed; the indicator is `torch.clamp`'s gradient).

Bytes for K samples of a B×D latent in dtype size s (log_ratio and its gradient are K·B·4; the seed O(1)):
    forward  read mu, logvar (2·B·D·s), write z (K·B·D·s)             (K + 2)·B·D·s + 4·K·B
    backward read g_z (K·B·D·s), mu, logvar, write ∂mu, ∂logvar        (K + 4)·B·D·s + 4·K·B
(+ K·B·D·s in each to read an injected ε). The forward's K reads of each mu row hit the cache.
Saving ε or z instead of regenerating ε would add K·B·D·s writes in forward and reads in backward.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import common
from .common import INTERPRETED, Tiles, grid, next_pow2, row_tiles


@triton.jit
def _sample_tile(mu, sigma, eps_ptrs, counter, mask, seed_ptr, HAS_EPS: tl.constexpr):
    """ε and z of one sample for a tile, fp32: ε read at `eps_ptrs`, or drawn with Philox at the element
    indices `counter` = (k·B + b)·D + d. Forward and backward share it, so backward's ε is the forward's."""
    if HAS_EPS:
        eps = tl.load(eps_ptrs, mask=mask, other=0.0).to(tl.float32)
    else:
        eps = tl.randn(tl.load(seed_ptr), counter)  # one scalar load per tile, served from cache
    return eps, mu + sigma * eps


@triton.jit
def _reparameterize_iw_fwd(
    mu_ptr, lv_ptr, eps_ptr, seed_ptr, z_ptr, ratio_part_ptr,
    B, D, KB,
    mu_sb, mu_sd, lv_sb, lv_sd, eps_sk, eps_sb, eps_sd,
    lo, hi,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(KB, BLOCK_B)
    k, b = r // B, r % B
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        _, c, mask = common.column_tile(tl.program_id(1), it, row_ok, D, BLOCK_L, ITERS)
        mu = common.load_tile(mu_ptr, b, mu_sb, c, mu_sd, mask)
        lv = tl.minimum(tl.maximum(common.load_tile(lv_ptr, b, lv_sb, c, lv_sd, mask), lo), hi)
        eps_ptrs = eps_ptr + k * eps_sk + b * eps_sb + c * eps_sd
        eps, z = _sample_tile(mu, tl.exp(0.5 * lv), eps_ptrs, r * D + c, mask, seed_ptr, HAS_EPS)
        tl.store(z_ptr + r * D + c, z.to(z_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(mask, z * z - eps * eps - lv, 0.0)
    common.store_partial(ratio_part_ptr, 0.5 * tl.sum(acc, axis=1), rows, row_ok)


@triton.jit
def _reparameterize_iw_bwd(
    gz_ptr, gr_ptr, mu_ptr, lv_ptr, eps_ptr, seed_ptr, gmu_ptr, glv_ptr,
    B, D, K,
    gz_sk, gz_sb, gz_sd, gr_sk, gr_sb, mu_sb, mu_sd, lv_sb, lv_sd, eps_sk, eps_sb, eps_sd,
    lo, hi,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
    K_UNROLL: tl.constexpr,
):  # fmt: skip
    rows, row_ok, b = common.row_block(B, BLOCK_B)
    for it in tl.static_range(ITERS):
        _, c, mask = common.column_tile(tl.program_id(1), it, row_ok, D, BLOCK_L, ITERS)
        mu = common.load_tile(mu_ptr, b, mu_sb, c, mu_sd, mask)
        lv_in = common.load_tile(lv_ptr, b, lv_sb, c, lv_sd, mask)
        lv = tl.minimum(tl.maximum(lv_in, lo), hi)
        sigma = tl.exp(0.5 * lv)
        grad_mu = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
        t_eps = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
        gr_sum = tl.zeros([BLOCK_B, 1], dtype=tl.float32)
        # sample k's pointers and Philox counters, advanced by one sample per step (pointer and int64
        # arithmetic: no int32 product k·stride); K_UNROLL samples per trip keep that many loads in flight
        gz_ptrs, gr_ptrs = gz_ptr + b * gz_sb + c * gz_sd, gr_ptr + b * gr_sb
        eps_ptrs, counter = eps_ptr + b * eps_sb + c * eps_sd, b * D + c
        k = tl.zeros([1, 1], dtype=tl.int32)
        for _ in range(0, K, K_UNROLL):
            for _j in tl.static_range(K_UNROLL):
                live = k < K  # past the last sample g_z and g_r load as 0, so t = 0 adds nothing
                eps, z = _sample_tile(mu, sigma, eps_ptrs, counter, mask & live, seed_ptr, HAS_EPS)
                gz = tl.load(gz_ptrs, mask=mask & live, other=0.0).to(tl.float32)
                gr = tl.load(gr_ptrs, mask=row_ok[:, None] & live, other=0.0).to(tl.float32)
                t = gz + gr * z
                grad_mu += t
                t_eps += t * eps
                gr_sum += gr
                gz_ptrs += gz_sk
                gr_ptrs += gr_sk
                eps_ptrs += eps_sk
                counter += B * D
                k += 1
        grad_lv = 0.5 * (sigma * t_eps - gr_sum)
        grad_lv = tl.where((lv_in >= lo) & (lv_in <= hi), grad_lv, 0.0)
        tl.store(gmu_ptr + b * D + c, grad_mu.to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + b * D + c, grad_lv.to(glv_ptr.dtype.element_ty), mask=mask)


K_UNROLL = 4  # samples per trip of backward's loop over K (untuned: no GPU was at hand)


@functools.lru_cache(maxsize=1024)
def backward_tiles(rows: int, length: int) -> Tiles:
    """Backward walks B×D (not K·B×D) and loops over K inside, so at training sizes (B·D ~ 10⁴–10⁵) the
    forward's 2048-element tiles would leave most of a GPU idle: aim for ≥ 256 programs with tiles of
    128–2048 elements. Untuned: no GPU was at hand."""
    if INTERPRETED:
        return row_tiles(rows, length)
    tile = max(128, min(2048, next_pow2(triton.cdiv(rows * length, 256))))
    block_l = min(next_pow2(length), tile)
    block_b = max(1, min(next_pow2(rows), tile // block_l))
    return Tiles(block_b, block_l, 1, 8 if block_b * block_l >= 2048 else 4, triton.cdiv(length, block_l))


def _noise(mu: torch.Tensor, seed: torch.Tensor | None, eps: torch.Tensor | None) -> tuple:
    """(ε pointer, seed pointer, ε strides): the one of ε / seed not given is never read (`HAS_EPS`), so
    mu stands in for its pointer."""
    eps_strides = (0, 0, 0) if eps is None else eps.stride()
    return eps if eps is not None else mu, seed if seed is not None else mu, eps_strides


def reparameterize_iw_fwd(
    mu: torch.Tensor, logvar: torch.Tensor, seed: torch.Tensor | None, eps: torch.Tensor | None,
    k: int, lo: float, hi: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """z (K, B, D) in mu's dtype, contiguous, and log_ratio (K, B) float32. Exactly one of seed / eps."""
    batch, dim = mu.shape
    z = torch.empty((k, batch, dim), dtype=mu.dtype, device=mu.device)
    if batch == 0 or dim == 0:
        return z, torch.zeros((k, batch), dtype=torch.float32, device=mu.device)
    tiles = row_tiles(k * batch, dim)
    partials = common.row_partials(k * batch, tiles.chunks, mu.device)
    eps_ptr, seed_ptr, eps_strides = _noise(mu, seed, eps)
    _reparameterize_iw_fwd[grid(tiles, k * batch)](
        mu, logvar, eps_ptr, seed_ptr, z, partials,
        batch, dim, k * batch, *mu.stride(), *logvar.stride(), *eps_strides, lo, hi,
        HAS_EPS=eps is not None, **tiles.launch,
    )  # fmt: skip
    return z, common.row_sums(partials).view(k, batch)


def reparameterize_iw_bwd(
    grad_z: torch.Tensor, grad_ratio: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
    seed: torch.Tensor | None, eps: torch.Tensor | None, k: int, lo: float, hi: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(∂mu, ∂logvar), contiguous, in mu's and logvar's dtypes."""
    batch, dim = mu.shape
    grad_mu = torch.empty((batch, dim), dtype=mu.dtype, device=mu.device)
    grad_logvar = torch.empty((batch, dim), dtype=logvar.dtype, device=mu.device)
    if batch == 0 or dim == 0:
        return grad_mu, grad_logvar
    tiles = backward_tiles(batch, dim)
    eps_ptr, seed_ptr, eps_strides = _noise(mu, seed, eps)
    _reparameterize_iw_bwd[grid(tiles, batch)](
        grad_z, grad_ratio, mu, logvar, eps_ptr, seed_ptr, grad_mu, grad_logvar,
        batch, dim, k, *grad_z.stride(), *grad_ratio.stride(), *mu.stride(), *logvar.stride(), *eps_strides,
        lo, hi, HAS_EPS=eps is not None, K_UNROLL=K_UNROLL, **tiles.launch,
    )  # fmt: skip
    return grad_mu, grad_logvar
