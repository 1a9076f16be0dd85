"""Per-image Bernoulli NLL from logits: NLL_b = Σ_i softplus(l_i) − x_i·l_i (nats), x ∈ [0, 1].

softplus(l) = max(l, 0) + log(1 + exp(−|l|)) never overflows (no libdevice `log1p`, which the
interpreter cannot run; log(1 + y) for y ≤ 1 loses only absolute accuracy below fp32 resolution).

Backward: ∂l_i = g_b·(sigmoid(l_i) − x_i),  ∂x_i = −g_b·l_i, recomputed from (l, x).

Bytes for B×N images (each tensor's own element size; the per-image vectors are O(B)):
    forward  read l, read x                             2 passes
    backward read l, read x, write ∂l                   3 passes (+1 write of ∂x when x requires grad;
                                                        x is not read when only ∂x is asked for)
Storing sigmoid(l) − x in forward would cost the same 5 passes in all and hold a B×N buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import grid, group_views, row_tiles


@triton.jit
def _bernoulli_nll_fwd(
    l_ptr, x_ptr, part_ptr,
    B, L,
    l_sb, l_sl, x_sb, x_sl,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        cols = (tl.program_id(1) * ITERS + it) * BLOCK_L + tl.arange(0, BLOCK_L)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < L)[None, :]
        logit = tl.load(l_ptr + r * l_sb + c * l_sl, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + r * x_sb + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        softplus = tl.maximum(logit, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(logit)))
        acc += tl.where(mask, softplus - x * logit, 0.0)
    n_parts = tl.num_programs(1)
    tl.store(part_ptr + rows.to(tl.int64) * n_parts + tl.program_id(1), tl.sum(acc, axis=1), mask=row_ok)


@triton.jit
def _bernoulli_nll_bwd(
    g_ptr, l_ptr, x_ptr, gl_ptr, gx_ptr,
    B, L,
    g_sb, l_sb, l_sl, x_sb, x_sl, gl_sb, gl_sl, gx_sb, gx_sl,
    WRITE_GL: tl.constexpr, WRITE_GX: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    g = tl.load(g_ptr + rows.to(tl.int64) * g_sb, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    for it in tl.static_range(ITERS):
        cols = (tl.program_id(1) * ITERS + it) * BLOCK_L + tl.arange(0, BLOCK_L)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < L)[None, :]
        logit = tl.load(l_ptr + r * l_sb + c * l_sl, mask=mask, other=0.0).to(tl.float32)
        if WRITE_GL:
            x = tl.load(x_ptr + r * x_sb + c * x_sl, mask=mask, other=0.0).to(tl.float32)
            e = tl.exp(-tl.abs(logit))  # ≤ 1: no overflow for any logit
            sigmoid = tl.where(logit >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            tl.store(
                gl_ptr + r * gl_sb + c * gl_sl, (g * (sigmoid - x)).to(gl_ptr.dtype.element_ty), mask=mask
            )
        if WRITE_GX:
            tl.store(gx_ptr + r * gx_sb + c * gx_sl, (-g * logit).to(gx_ptr.dtype.element_ty), mask=mask)


def bernoulli_nll_fwd(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image NLL (B,), float32."""
    batch = logits.shape[0]
    if logits.numel() == 0:
        return torch.zeros(batch, dtype=torch.float32, device=logits.device)
    (lv, xv), _, _ = group_views([logits, x], 1)
    length = lv.shape[2]
    tiles = row_tiles(batch, length)
    partials = torch.empty((batch, tiles.chunks), dtype=torch.float32, device=logits.device)
    _bernoulli_nll_fwd[grid(tiles, batch)](
        lv, xv, partials,
        batch, length,
        lv.stride(0), lv.stride(2), xv.stride(0), xv.stride(2),
        BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters, num_warps=tiles.num_warps,
    )  # fmt: skip
    return partials.sum(dim=1)


def bernoulli_nll_bwd(
    grad: torch.Tensor, logits: torch.Tensor, x: torch.Tensor, need_logits: bool, need_x: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂logits, ∂x) shaped and laid out like `torch.empty_like`; a gradient not asked for is empty (0,)."""
    batch = logits.shape[0]
    grad_logits = torch.empty_like(logits) if need_logits else logits.new_empty(0)
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    if logits.numel() == 0 or not (need_logits or need_x):
        return grad_logits, grad_x
    outputs = [t for t, need in ((grad_logits, need_logits), (grad_x, need_x)) if need]
    (lv, xv), out_views, copy_back = group_views([logits, x], 1, outputs)
    gl = out_views[0] if need_logits else lv  # any valid pointer: the kernel never writes it then
    gx = out_views[-1] if need_x else lv
    length = lv.shape[2]
    tiles = row_tiles(batch, length)
    _bernoulli_nll_bwd[grid(tiles, batch)](
        grad, lv, xv, gl, gx,
        batch, length,
        grad.stride(0), lv.stride(0), lv.stride(2), xv.stride(0), xv.stride(2),
        gl.stride(0), gl.stride(2), gx.stride(0), gx.stride(2),
        WRITE_GL=need_logits, WRITE_GX=need_x,
        BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters, num_warps=tiles.num_warps,
    )  # fmt: skip
    for scratch, dest in copy_back:
        dest.copy_(scratch)
    return grad_logits, grad_x
