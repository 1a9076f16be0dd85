"""Gaussian NLL of images, from the mean (`ops.gaussian_nll`) or from logits of the mean
(`ops.gaussian_nll_logits`: the decoder's last sigmoid fused into the loss). One kernel pair serves both
(SIGMOID is a constexpr), so the two ops cannot drift apart.

    NLL_b = Σ_c [ S_bc / (2σ_c²) + L·(log σ_c + ½ log 2π) ],   S_bc = Σ_{i ∈ channel c} (x_i − m_i)²

σ lives inside the kernels, fixed or learned, so a call is one launch forward and one backward (+ one
`torch.sum` over column chunks when a row spans several; none when it fits one):
- fixed (a Python float): the launcher passes s = 1/(2σ²) and the row constant N·(log σ + ½ log 2π) as
  fp32 scalars;
- learned (a tensor: one value, or one per channel c over G = C groups): each program loads its group's
  log σ, clamps it to [lo, hi] (`torch.clamp`'s gradient), and forms s and L·(log σ + ½ log 2π) itself.
Each program writes s·S over its (row, group, column chunk) and the first chunk of a group adds the
constant, so the per-image NLL is the sum of a row's partials. A per-channel σ on a channels_last batch
(channel innermost in memory) is not walked one channel at a time — that would read memory at stride C,
C times over — but in memory order with channel = l mod C and σ per element (CH, a constexpr).
Backward recomputes (m, x) and writes
    ∂m_i = 2·s·g_b·(m_i − x_i),   ∂x_i = −∂m_i,
and for a learned σ also partials of ∂NLL/∂log σ_c = Σ_b g_b Σ_{i ∈ c} (1 − 2·s·(x_i − m_i)²) (zero where
the clamp is active), summed over rows and chunks by one `torch.sum`: no atomics, bitwise reproducible.

From logits (SIGMOID): the kernels load l and form m = sigmoid(l) in registers from e = exp(−|l|) ≤ 1
(no overflow for any logit); backward writes ∂l_i = ∂m_i · m_i(1 − m_i) with m(1 − m) = e/(1 + e)², so a
saturated logit (±40) gets its true, tiny gradient rather than 1 − 1 = 0 or 0·∞. The mean image is
never stored.

Bytes for B×N images (each tensor's own element size; per-image and per-σ vectors are O(B·G)), either
entry, σ fixed or learned:
    forward  read m (or l), read x                      2 passes
    backward read m (or l), read x, write ∂m (or ∂l)    3 passes (+1 write of ∂x when x requires grad)
Storing m − x in forward instead would cost one B×N write there and one read in backward — the same
5 passes in all — and hold a B×N buffer between forward and backward, so the difference is recomputed.
The unfused chain for logits — m = sigmoid(l) (read l, write m: 2 passes), this NLL on m (5), sigmoid's
backward (read m, read ∂m, write ∂l: 3) — moves 10 passes and holds m from forward to backward; the fused
entry moves 5.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import common
from .common import grid, group_walk, row_tiles

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@triton.jit
def _group_and_chunk(chunks):
    """This program's group (a channel, or the whole row) and its column chunk within the group."""
    return (tl.program_id(1) // chunks).to(tl.int64), tl.program_id(1) % chunks


@triton.jit
def _mean_of(v, SIGMOID: tl.constexpr):
    """The mean from what was loaded: v itself, or sigmoid(v) with e = exp(−|v|) ≤ 1 (never overflows)."""
    if SIGMOID:
        e = tl.exp(-tl.abs(v))
        return tl.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), e
    else:
        return v, v


@triton.jit
def _group_sigma(ls_ptr, ls_s, g, L, scale, const, lo, hi, LEARNED: tl.constexpr, HALF_LOG_2PI: tl.constexpr):
    """(s = 1/(2σ²), the group's constant L·(log σ + ½ log 2π), 1 if log σ is inside [lo, hi] else 0)."""
    if LEARNED:
        raw = tl.load(ls_ptr + g * ls_s).to(tl.float32)
        ls = tl.minimum(tl.maximum(raw, lo), hi)
        inside = ((raw >= lo) & (raw <= hi)).to(tl.float32)
        return 0.5 * tl.exp(-2.0 * ls), L * (ls + HALF_LOG_2PI), inside
    else:
        return scale, const, 1.0


@triton.jit
def _element_sigma(ls_ptr, ls_s, cols, lo, hi, CH: tl.constexpr):
    """Channels interleaved along a row (channels_last, σ per channel): (s, 1 inside the clamp) per column."""
    raw = tl.load(ls_ptr + (cols % CH) * ls_s).to(tl.float32)  # CH distinct addresses: cached
    ls = tl.minimum(tl.maximum(raw, lo), hi)
    return (0.5 * tl.exp(-2.0 * ls))[None, :], ((raw >= lo) & (raw <= hi))[None, :]


@triton.jit
def _interleaved_const(ls_ptr, ls_s, L, lo, hi, CH: tl.constexpr, HALF_LOG_2PI: tl.constexpr):
    """A row's constant Σ_c (L/C)·(log σ_c + ½ log 2π) when its L elements interleave CH channels."""
    total = 0.0
    for c in tl.static_range(CH):
        raw = tl.load(ls_ptr + c * ls_s).to(tl.float32)
        total += tl.minimum(tl.maximum(raw, lo), hi) + HALF_LOG_2PI
    return (L // CH) * total


@triton.jit
def _gauss_nll_fwd(
    m_ptr, x_ptr, ls_ptr, part_ptr,
    B, L, chunks,
    m_sb, m_sg, m_sl, x_sb, x_sg, x_sl, ls_s,
    scale, const, lo, hi,
    SIGMOID: tl.constexpr, LEARNED: tl.constexpr, CH: tl.constexpr, HALF_LOG_2PI: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(B, BLOCK_B)
    g, k = _group_and_chunk(chunks)
    if CH > 0:  # σ per element of the interleaved channels, applied in the loop
        s = 1.0
        c0 = _interleaved_const(ls_ptr, ls_s, L, lo, hi, CH, HALF_LOG_2PI)
    else:
        s, c0, _ = _group_sigma(ls_ptr, ls_s, g, L, scale, const, lo, hi, LEARNED, HALF_LOG_2PI)
    m_base = m_ptr + r * m_sb + g * m_sg
    x_base = x_ptr + r * x_sb + g * x_sg
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        cols, c, mask = common.column_tile(k, it, row_ok, L, BLOCK_L, ITERS)
        m, _ = _mean_of(tl.load(m_base + c * m_sl, mask=mask, other=0.0).to(tl.float32), SIGMOID)
        x = tl.load(x_base + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - m, 0.0)
        if CH > 0:
            s_e, _ = _element_sigma(ls_ptr, ls_s, cols, lo, hi, CH)
            acc += s_e * d * d
        else:
            acc += d * d
    common.store_partial(part_ptr, tl.sum(acc, axis=1) * s + tl.where(k == 0, c0, 0.0), rows, row_ok)


@triton.jit
def _gauss_nll_bwd(
    g_ptr, m_ptr, x_ptr, ls_ptr, gm_ptr, gx_ptr, gls_part_ptr,
    B, L, chunks,
    g_sb, m_sb, m_sg, m_sl, x_sb, x_sg, x_sl, gm_sb, gm_sg, gm_sl, gx_sb, gx_sg, gx_sl, ls_s,
    scale, lo, hi,
    WRITE_GM: tl.constexpr, WRITE_GX: tl.constexpr, WRITE_GLS: tl.constexpr,
    SIGMOID: tl.constexpr, LEARNED: tl.constexpr, CH: tl.constexpr, HALF_LOG_2PI: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows, row_ok, r = common.row_block(B, BLOCK_B)
    g, k = _group_and_chunk(chunks)
    s, _, inside = _group_sigma(ls_ptr, ls_s, g, L, scale, 0.0, lo, hi, LEARNED, HALF_LOG_2PI)
    gr = common.load_per_row(g_ptr, g_sb, rows, row_ok)
    coef = (2.0 * s) * gr
    acc = tl.zeros([BLOCK_B, BLOCK_L], dtype=tl.float32)
    for it in tl.static_range(ITERS):
        cols, c, mask = common.column_tile(k, it, row_ok, L, BLOCK_L, ITERS)
        m, e = _mean_of(tl.load(m_ptr + r * m_sb + g * m_sg + c * m_sl, mask=mask, other=0.0).to(tl.float32),
                        SIGMOID)  # fmt: skip
        x = tl.load(x_ptr + r * x_sb + g * x_sg + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        if CH > 0:  # σ per element of the interleaved channels
            s_e, inside_e = _element_sigma(ls_ptr, ls_s, cols, lo, hi, CH)
            coef_e = (2.0 * s_e) * gr
        else:
            coef_e = coef
        gm = coef_e * (m - x)
        if WRITE_GM:
            if SIGMOID:
                gl = gm * (e / ((1.0 + e) * (1.0 + e)))  # sigmoid' = p(1 − p), exact for saturated logits
            else:
                gl = gm
            tl.store(gm_ptr + r * gm_sb + g * gm_sg + c * gm_sl, gl.to(gm_ptr.dtype.element_ty), mask=mask)
        if WRITE_GX:
            tl.store(gx_ptr + r * gx_sb + g * gx_sg + c * gx_sl, (-gm).to(gx_ptr.dtype.element_ty), mask=mask)
        if WRITE_GLS:  # g·(1 − 2s·d²) as g − (2s·g)·d·d: 0, not 0·∞ = NaN, when g = 0 and s·d² overflows
            d = m - x
            term = tl.where(mask, gr - coef_e * d * d, 0.0)
            if CH > 0:  # one partial per channel and column block: (B, CH, chunks·ITERS)
                term = tl.where(inside_e, term, 0.0)
                n_cols = chunks * ITERS
                for ch in tl.static_range(CH):
                    part = tl.sum(tl.where(((cols % CH) == ch)[None, :], term, 0.0), axis=1)
                    offs = rows.to(tl.int64) * (CH * n_cols) + ch * n_cols + k * ITERS + it
                    tl.store(gls_part_ptr + offs, part, mask=row_ok)
            else:
                acc += term
    if WRITE_GLS and CH == 0:
        part = tl.where(inside > 0, tl.sum(acc, axis=1), 0.0)  # where, not ·0: the sum may be −∞
        common.store_partial(gls_part_ptr, part, rows, row_ok)


def _interleaved(images: torch.Tensor, log_sigma: torch.Tensor | None) -> int:
    """C when a per-channel σ meets a batch whose channel axis is innermost in memory (channels_last): the
    kernels then walk memory order, coalesced, with channel = l mod C; else 0 (one group per channel)."""
    if log_sigma is None or log_sigma.numel() == 1 or images.dim() < 3:
        return 0
    return images.shape[1] if images.stride(1) == 1 else 0


def _sigma_args(log_sigma: torch.Tensor | None, value: float, per_image: int, images: torch.Tensor):
    """(groups, ls pointer, ls stride, fixed s, fixed row constant) for the kernels."""
    if log_sigma is None:
        return 1, images, 0, 0.5 * math.exp(-2.0 * value), per_image * (value + HALF_LOG_2PI)
    groups = log_sigma.numel() if log_sigma.numel() > 1 else 1
    return groups, log_sigma, (log_sigma.stride(0) if log_sigma.dim() else 0), 1.0, 0.0


def gaussian_nll_fwd(
    images: torch.Tensor, x: torch.Tensor, log_sigma: torch.Tensor | None, value: float,
    lo: float, hi: float, sigmoid: bool,
) -> torch.Tensor:  # fmt: skip
    """Per-image NLL (B,) float32. σ fixed at exp(value) when `log_sigma` is None, else the tensor (one
    element, or one per channel of `images`), clamped to [lo, hi]. `images` holds logits when `sigmoid`."""
    batch = images.shape[0]
    if images.numel() == 0:
        return torch.zeros(batch, dtype=torch.float32, device=images.device)
    groups, ls, ls_s, scale, const = _sigma_args(log_sigma, value, math.prod(images.shape[1:]), images)
    interleave = _interleaved(images, log_sigma)
    groups = 1 if interleave else groups
    walk = group_walk([images, x], groups, channels_last=bool(interleave))
    (m, xv), (m_st, x_st) = walk.inputs, walk.in_strides
    tiles = row_tiles(batch, walk.length)
    partials = common.row_partials(batch, groups * tiles.chunks, x.device)
    _gauss_nll_fwd[grid(tiles, batch, groups)](
        m, xv, ls, partials,
        batch, walk.length, tiles.chunks,
        *m_st, *x_st, ls_s,
        scale, const, lo, hi,
        SIGMOID=sigmoid, LEARNED=log_sigma is not None, CH=interleave, HALF_LOG_2PI=HALF_LOG_2PI,
        **tiles.launch,
    )  # fmt: skip
    return common.row_sums(partials)


def gaussian_nll_bwd(
    grad: torch.Tensor, images: torch.Tensor, x: torch.Tensor, log_sigma: torch.Tensor | None, value: float,
    lo: float, hi: float, need_images: bool, need_x: bool, need_sigma: bool, sigmoid: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(∂images, ∂x, ∂log_sigma) of Σ_b grad_b·NLL_b: the first two laid out like `torch.empty_like`, the
    last shaped and typed like `log_sigma`; a gradient not asked for is empty (0,)."""
    batch = images.shape[0]
    need_sigma = need_sigma and log_sigma is not None
    grad_images = torch.empty_like(images) if need_images else images.new_empty(0)
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    if not need_sigma:
        grad_sigma = images.new_empty(0)
    elif images.numel() == 0:
        grad_sigma = torch.zeros_like(log_sigma)
    if images.numel() == 0 or not (need_images or need_x or need_sigma):
        return grad_images, grad_x, grad_sigma
    groups, ls, ls_s, scale, _ = _sigma_args(log_sigma, value, 0, images)
    interleave = _interleaved(images, log_sigma)
    groups = 1 if interleave else groups
    outputs = [t for t, need in ((grad_images, need_images), (grad_x, need_x)) if need]
    walk = group_walk([images, x], groups, outputs, channels_last=bool(interleave))
    (m, xv), (m_st, x_st) = walk.inputs, walk.in_strides
    gm, gm_st = (walk.outputs[0], walk.out_strides[0]) if need_images else (m, m_st)  # unwritten then
    gx, gx_st = (walk.outputs[-1], walk.out_strides[-1]) if need_x else (m, m_st)
    tiles = row_tiles(batch, walk.length)
    # ∂log σ partials: per (channel, column block) when interleaved, else per (group, chunk)
    parts_shape = (
        (batch, interleave, tiles.chunks * tiles.iters) if interleave else (batch, groups, tiles.chunks)
    )
    gls_parts = torch.empty(parts_shape, dtype=torch.float32, device=x.device) if need_sigma else m
    _gauss_nll_bwd[grid(tiles, batch, groups)](
        grad, m, xv, ls, gm, gx, gls_parts,
        batch, walk.length, tiles.chunks,
        grad.stride(0), *m_st, *x_st, *gm_st, *gx_st, ls_s,
        scale, lo, hi,
        WRITE_GM=need_images, WRITE_GX=need_x, WRITE_GLS=need_sigma,
        SIGMOID=sigmoid, LEARNED=log_sigma is not None, CH=interleave, HALF_LOG_2PI=HALF_LOG_2PI,
        **tiles.launch,
    )  # fmt: skip
    for scratch, dest in walk.copy_back:
        dest.copy_(scratch)
    if need_sigma:  # a fresh tensor (no view: a custom op may not return one)
        if log_sigma.dim() == 0:
            grad_sigma = gls_parts.sum()
        else:
            grad_sigma = gls_parts.sum(dim=(0, 2))
            if grad_sigma.shape != log_sigma.shape:
                grad_sigma = grad_sigma.reshape(log_sigma.shape).clone()
        grad_sigma = grad_sigma.to(log_sigma.dtype)
    return grad_images, grad_x, grad_sigma
