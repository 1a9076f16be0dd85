"""Gaussian NLL of images, from the mean (`ops.gaussian_nll`) or from logits of the mean
(`ops.gaussian_nll_logits`: the decoder's last sigmoid fused into the loss). One kernel pair serves both
(SIGMOID is a constexpr), so the two ops cannot drift apart.

    NLL_b = Σ_c [ S_bc / (2σ_c²) + L·(log σ_c + ½ log 2π) ],   S_bc = Σ_{i ∈ channel c} (x_i − m_i)²

A fixed σ (a Python float) is folded into the kernel: each program scales its partial sum by 1/(2σ²) and
the first column chunk of a row adds the constant N·(log σ + ½ log 2π), so the op's output is the NLL after
one `torch.sum` over the chunks (none when a row fits one chunk), and backward scales in the kernel too.
A learned σ (a tensor, one value or one per channel) needs S itself: the kernel then writes S (B, G) —
G = C for a per-channel σ, else 1 — and the σ algebra runs on that tiny tensor in torch
(`vae_triton.ops`), so ∂NLL/∂log σ_c = Σ_b g_b (L − S_bc/σ_c²) is autograd on (B, G) numbers, with no
second pass over the images and no atomics.

Backward of s·S (s = 1/(2σ²) for a fixed σ, 1 for S itself): ∂m_i = 2·s·g_bc·(m_i − x_i), ∂x_i = −∂m_i,
recomputed from (m, x).

From logits (SIGMOID): the kernels load l and form m = sigmoid(l) in registers from e = exp(−|l|) ≤ 1
(no overflow for any logit); backward writes ∂l_i = ∂m_i · m_i(1 − m_i) with m(1 − m) = e/(1 + e)², so a
saturated logit (±40) gets its true, tiny gradient rather than 1 − 1 = 0 or 0·∞. The mean image is
never stored.

Bytes for B×N images (each tensor's own element size; S and its gradient are O(B·G)), either entry:
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

from .common import grid, group_walk, row_tiles

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@triton.jit
def _mean_of(v, SIGMOID: tl.constexpr):
    """The mean from what was loaded: v itself, or sigmoid(v) with e = exp(−|v|) ≤ 1 (never overflows)."""
    if SIGMOID:
        e = tl.exp(-tl.abs(v))
        return tl.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), e
    else:
        return v, v


@triton.jit
def _sq_err_fwd(
    m_ptr, x_ptr, part_ptr,
    B, L, chunks,
    m_sb, m_sg, m_sl, x_sb, x_sg, x_sl,
    scale, const,
    SIGMOID: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
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
        m, _ = _mean_of(tl.load(m_base + c * m_sl, mask=mask, other=0.0).to(tl.float32), SIGMOID)
        x = tl.load(x_base + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - m, 0.0)
        acc += d * d
    part = tl.sum(acc, axis=1) * scale + tl.where(k == 0, const, 0.0)
    n_parts = tl.num_programs(1)
    tl.store(part_ptr + rows.to(tl.int64) * n_parts + tl.program_id(1), part, mask=row_ok)


@triton.jit
def _sq_err_bwd(
    gs_ptr, m_ptr, x_ptr, gm_ptr, gx_ptr,
    B, L, chunks,
    gs_sb, gs_sg, m_sb, m_sg, m_sl, x_sb, x_sg, x_sl, gm_sb, gm_sg, gm_sl, gx_sb, gx_sg, gx_sl,
    scale,
    WRITE_GM: tl.constexpr, WRITE_GX: tl.constexpr, SIGMOID: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, ITERS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r = rows.to(tl.int64)[:, None]
    g = (tl.program_id(1) // chunks).to(tl.int64)
    k = tl.program_id(1) % chunks
    gs = tl.load(gs_ptr + rows.to(tl.int64) * gs_sb + g * gs_sg, mask=row_ok, other=0.0).to(tl.float32)
    coef = (2.0 * scale) * gs[:, None]
    for it in tl.static_range(ITERS):
        cols = (k * ITERS + it) * BLOCK_L + tl.arange(0, BLOCK_L)
        c = cols.to(tl.int64)[None, :]
        mask = row_ok[:, None] & (cols < L)[None, :]
        m, e = _mean_of(tl.load(m_ptr + r * m_sb + g * m_sg + c * m_sl, mask=mask, other=0.0).to(tl.float32),
                        SIGMOID)  # fmt: skip
        x = tl.load(x_ptr + r * x_sb + g * x_sg + c * x_sl, mask=mask, other=0.0).to(tl.float32)
        gm = coef * (m - x)
        if WRITE_GM:
            if SIGMOID:
                gl = gm * (e / ((1.0 + e) * (1.0 + e)))  # sigmoid' = p(1 − p), exact for saturated logits
            else:
                gl = gm
            tl.store(gm_ptr + r * gm_sb + g * gm_sg + c * gm_sl, gl.to(gm_ptr.dtype.element_ty), mask=mask)
        if WRITE_GX:
            tl.store(gx_ptr + r * gx_sb + g * gx_sg + c * gx_sl, (-gm).to(gx_ptr.dtype.element_ty), mask=mask)


def _forward(mean, x, groups: int, scale: float, const: float, sigmoid: bool, flat: bool) -> torch.Tensor:
    """scale·S_bg + const summed over each row's column chunks, float32: (B,) when `flat` (G = 1), else
    (B, G). Never a view (a custom op may not return one)."""
    batch = mean.shape[0]
    shape = (batch,) if flat else (batch, groups)
    if mean.numel() == 0:
        return torch.full(shape, const, dtype=torch.float32, device=mean.device)
    walk = group_walk([mean, x], groups)
    (m, xv), (m_st, x_st) = walk.inputs, walk.in_strides
    tiles = row_tiles(batch, walk.length)
    one_chunk = tiles.chunks == 1  # then the kernel finishes the reduction: no extra launch
    partials = torch.empty(
        shape if one_chunk else (batch, groups * tiles.chunks), dtype=torch.float32, device=mean.device
    )
    _sq_err_fwd[grid(tiles, batch, groups)](
        m, xv, partials,
        batch, walk.length, tiles.chunks,
        *m_st, *x_st,
        scale, const,
        SIGMOID=sigmoid, BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters,
        num_warps=tiles.num_warps,
    )  # fmt: skip
    if one_chunk:
        return partials
    return partials.sum(dim=1) if flat else partials.view(batch, groups, tiles.chunks).sum(dim=2)


def fixed_sigma_scale(log_sigma: float, per_image: int) -> tuple[float, float]:
    """(1/(2σ²), N·(log σ + ½ log 2π)) for a fixed log σ and N elements per image."""
    return 0.5 * math.exp(-2.0 * log_sigma), per_image * (log_sigma + HALF_LOG_2PI)


def gaussian_nll_fixed(mean: torch.Tensor, x: torch.Tensor, log_sigma: float, sigmoid: bool = False):
    """Per-image NLL (B,) float32 for a fixed σ = exp(log_sigma); `mean` holds logits when `sigmoid`."""
    per_image = math.prod(mean.shape[1:])
    scale, const = fixed_sigma_scale(log_sigma, per_image)
    return _forward(mean, x, 1, scale, const, sigmoid, flat=True)


def squared_error_sums(mean: torch.Tensor, x: torch.Tensor, groups: int, sigmoid: bool = False):
    """S[b, g] = Σ (x − mean)² over row b's group g (a channel when groups = C), float32 (B, G)."""
    return _forward(mean, x, groups, 1.0, 0.0, sigmoid, flat=False)


def squared_error_sums_bwd(
    grad_sums: torch.Tensor, mean: torch.Tensor, x: torch.Tensor, need_mean: bool, need_x: bool,
    scale: float = 1.0, sigmoid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(∂mean, ∂x) of scale·S, laid out like `torch.empty_like`; a gradient not asked for is empty (0,).

    grad_sums: (B, G) for S, or (B,) with G = 1 (then scale = 1/(2σ²) gives the fixed-σ NLL's gradient).
    With `sigmoid`, `mean` holds logits and ∂mean is ∂logits."""
    batch = mean.shape[0]
    groups = grad_sums.shape[1] if grad_sums.dim() == 2 else 1
    grad_mean = torch.empty_like(mean) if need_mean else mean.new_empty(0)
    grad_x = torch.empty_like(x) if need_x else x.new_empty(0)
    if mean.numel() == 0 or not (need_mean or need_x):
        return grad_mean, grad_x
    outputs = [t for t, need in ((grad_mean, need_mean), (grad_x, need_x)) if need]
    walk = group_walk([mean, x], groups, outputs)
    (m, xv), (m_st, x_st) = walk.inputs, walk.in_strides
    gm, gm_st = (walk.outputs[0], walk.out_strides[0]) if need_mean else (m, m_st)  # unwritten then
    gx, gx_st = (walk.outputs[-1], walk.out_strides[-1]) if need_x else (m, m_st)
    gs_st = grad_sums.stride() if grad_sums.dim() == 2 else (grad_sums.stride(0), 0)
    tiles = row_tiles(batch, walk.length)
    _sq_err_bwd[grid(tiles, batch, groups)](
        grad_sums, m, xv, gm, gx,
        batch, walk.length, tiles.chunks,
        *gs_st, *m_st, *x_st, *gm_st, *gx_st,
        scale,
        WRITE_GM=need_mean, WRITE_GX=need_x, SIGMOID=sigmoid,
        BLOCK_B=tiles.block_b, BLOCK_L=tiles.block_l, ITERS=tiles.iters, num_warps=tiles.num_warps,
    )  # fmt: skip
    for scratch, dest in walk.copy_back:
        dest.copy_(scratch)
    return grad_mean, grad_x
