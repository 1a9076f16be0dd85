"""Per-image (and per-channel) sums of squared errors: the only B×N work in the Gaussian NLL.

    NLL_b = Σ_c [ S_bc / (2σ_c²) + L·(log σ_c + ½ log 2π) ],   S_bc = Σ_{i ∈ channel c} (x_i − m_i)²

so the kernel computes S (B, G) in fp32 — G = C for a per-channel σ, else G = 1 — and the σ algebra runs
on that tiny tensor in torch (`vae_triton.ops`). That keeps σ out of the kernel entirely: a learned σ's
gradient, ∂NLL/∂log σ_c = Σ_b g_b (L − S_bc/σ_c²), is autograd on (B, G) numbers, with no second pass
over the images and no atomics.

Backward of S: ∂m_i = 2·g_bc·(m_i − x_i), ∂x_i = −∂m_i, recomputed from (m, x).

Bytes for B×N images (each tensor's own element size; S and its gradient are O(B·G)):
    forward  read m, read x                             2 passes
    backward read m, read x, write ∂m                   3 passes (+1 write of ∂x when x requires grad)
Storing m − x in forward instead would cost one B×N write there and one read in backward — the same
5 passes in all — and hold a B×N buffer between forward and backward, so the difference is recomputed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import grid, group_views, row_tiles


@triton.jit
def _sq_err_fwd(
    m_ptr, x_ptr, part_ptr,
    B, L, chunks,
    m_sb, m_sg, m_sl, x_sb, x_sg, x_sl,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    g = (tl.program_id(1) // chunks).to(tl.int64)
    k = tl.program_id(1) % chunks
    m_base = m_ptr + r * m_sb + g * m_sg
    x_base = x_ptr + r * x_sb + g * x_sg
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        cols = (k * ITERS + it) * BLOCK_L + tl.arange(0, BLOCK_L)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < L)[None, :]
        m = tl.load(m_base + c * m_sl, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_base + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        d = x - m
        acc += d * d
    n_parts = tl.num_programs(1)
    tl.store(part_ptr + rows.to(tl.int64) * n_parts + tl.program_id(1), tl.sum(acc, axis=1), mask=row_ok)


@triton.jit
def _sq_err_bwd(
    gs_ptr, m_ptr, x_ptr, gm_ptr, gx_ptr,
    B, L, chunks,
    gs_sb, gs_sg, m_sb, m_sg, m_sl, x_sb, x_sg, x_sl, gm_sb, gm_sg, gm_sl, gx_sb, gx_sg, gx_sl,
    WRITE_GM: tl.constexpr, WRITE_GX: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    g = (tl.program_id(1) // chunks).to(tl.int64)
    k = tl.program_id(1) % chunks
    gs = tl.load(gs_ptr + rows.to(tl.int64) * gs_sb + g * gs_sg, mask=row_ok, other=0.0).to(tl.float32)
    two_g = 2.0 * gs[:, None]
    for it in tl.static_range(ITERS):
        cols = (k * ITERS + it) * BLOCK_L + tl.arange(0, BLOCK_L)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < L)[None, :]
        m = tl.load(m_ptr + r * m_sb + g * m_sg + c * m_sl, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + r * x_sb + g * x_sg + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        gm = two_g * (m - x)
        if WRITE_GM:
            tl.store(gm_ptr + r * gm_sb + g * gm_sg + c * gm_sl, gm.to(gm_ptr.dtype.element_ty), mask=mask)
        if WRITE_GX:
            tl.store(gx_ptr + r * gx_sb + g * gx_sg + c * gx_sl, (-gm).to(gx_ptr.dtype.element_ty), mask=mask)


def squared_error_sums(mean: torch.Tensor, x: torch.Tensor, groups: int) -> torch.Tensor:
    """S[b, g] = Σ (x − mean)² over row b's group g (a channel when groups = C), float32 (B, G)."""
    batch = mean.shape[0]
    if mean.numel() == 0:
        return torch.zeros((batch, groups), dtype=torch.float32, device=mean.device)
    (m, xv), _, _ = group_views([mean, x], groups)
    length = m.shape[2]
    tiles = row_tiles(batch, length)
    partials = torch.empty((batch, groups * tiles.chunks), dtype=torch.float32, device=mean.device)
    _sq_err_fwd[grid(tiles, batch, groups)](
        m, xv, partials,
        batch, length, tiles.chunks,
        *m.stride(), *xv.stride(),
        BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters, num_warps=tiles.num_warps,
    )  # fmt: skip
    return partials.view(batch, groups, tiles.chunks).sum(dim=2)


def squared_error_sums_bwd(
    grad_sums: torch.Tensor, mean: torch.Tensor, x: torch.Tensor, need_mean: bool, need_x: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂mean, ∂x) shaped and laid out like `torch.empty_like`; a gradient not asked for is empty (0,)."""
    batch, groups = grad_sums.shape
    grad_mean = torch.empty_like(mean) if need_mean else mean.new_empty(0)
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    if mean.numel() == 0 or not (need_mean or need_x):
        return grad_mean, grad_x
    outputs = [t for t, need in ((grad_mean, need_mean), (grad_x, need_x)) if need]
    (m, xv), out_views, copy_back = group_views([mean, x], groups, outputs)
    gm = out_views[0] if need_mean else m  # any valid pointer: the kernel never writes it then
    gx = out_views[-1] if need_x else m
    length = m.shape[2]
    tiles = row_tiles(batch, length)
    _sq_err_bwd[grid(tiles, batch, groups)](
        grad_sums, m, xv, gm, gx,
        batch, length, tiles.chunks,
        *grad_sums.stride(), *m.stride(), *xv.stride(), *gm.stride(), *gx.stride(),
        WRITE_GM=need_mean, WRITE_GX=need_x,
        BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters, num_warps=tiles.num_warps,
    )  # fmt: skip
    for scratch, dest in copy_back:
        dest.copy_(scratch)
    return grad_mean, grad_x
