"""Per-image Bernoulli NLL from logits: NLL_b = Σ_i softplus(l_i) − x_i·l_i (nats), x ∈ [0, 1].

Host work per call: one cached layout lookup, one launch, and one `torch.sum` over column chunks only when
a row spans more than one (`common.row_tiles`).

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

from . import common
from .common import grid, group_walk, row_tiles


@triton.jit
def _bernoulli_nll_fwd(
    l_ptr, x_ptr, part_ptr,
    B, L,
    l_sb, l_sl, x_sb, x_sl,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(B, BLOCK_B)
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        _, c, mask = common.column_tile(tl.program_id(1), it, row_ok, L, BLOCK_L, ITERS)
        logit = common.load_tile(l_ptr, r, l_sb, c, l_sl, mask)
        x = common.load_tile(x_ptr, r, x_sb, c, x_sl, mask)
        softplus = tl.maximum(logit, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(logit)))
        acc += tl.where(mask, softplus - x * logit, 0.0)
    common.store_partial(part_ptr, tl.sum(acc, axis=1), rows, row_ok)


@triton.jit
def _bernoulli_nll_bwd(
    g_ptr, l_ptr, x_ptr, gl_ptr, gx_ptr,
    B, L,
    g_sb, l_sb, l_sl, x_sb, x_sl, gl_sb, gl_sl, gx_sb, gx_sl,
    WRITE_GL: tl.constexpr, WRITE_GX: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(B, BLOCK_B)
    g = common.load_per_row(g_ptr, g_sb, rows, row_ok)
    for it in tl.static_range(ITERS):
        _, c, mask = common.column_tile(tl.program_id(1), it, row_ok, L, BLOCK_L, ITERS)
        logit = common.load_tile(l_ptr, r, l_sb, c, l_sl, mask)
        if WRITE_GL:
            x = common.load_tile(x_ptr, r, x_sb, c, x_sl, mask)
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
    walk = group_walk([logits, x], 1)
    (lv, xv), (l_st, x_st) = walk.inputs, walk.in_strides
    tiles = row_tiles(batch, walk.length)
    partials = common.row_partials(batch, tiles.chunks, logits.device)
    _bernoulli_nll_fwd[grid(tiles, batch)](
        lv, xv, partials, batch, walk.length, l_st[0], l_st[2], x_st[0], x_st[2], **tiles.launch
    )
    return common.row_sums(partials)


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
    walk = group_walk([logits, x], 1, outputs)
    (lv, xv), (l_st, x_st) = walk.inputs, walk.in_strides
    gl, gl_st = (walk.outputs[0], walk.out_strides[0]) if need_logits else (lv, l_st)  # unwritten then
    gx, gx_st = (walk.outputs[-1], walk.out_strides[-1]) if need_x else (lv, l_st)
    tiles = row_tiles(batch, walk.length)
    _bernoulli_nll_bwd[grid(tiles, batch)](
        grad, lv, xv, gl, gx,
        batch, walk.length,
        grad.stride(0), l_st[0], l_st[2], x_st[0], x_st[2],
        gl_st[0], gl_st[2], gx_st[0], gx_st[2],
        WRITE_GL=need_logits, WRITE_GX=need_x, **tiles.launch,
    )  # fmt: skip
    for scratch, dest in walk.copy_back:
        dest.copy_(scratch)
    return grad_logits, grad_x
