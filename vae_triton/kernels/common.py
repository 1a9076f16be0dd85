"""What the three fused ops share: tile shapes and the (B, G, L) strided views their kernels walk.

Every kernel sees its B×N inputs as a 3-D strided view (row b, group g, element l) and writes one fp32
partial sum per (row, group, column chunk); the launcher then sums the chunks with `torch.sum`. With a
fixed tiling per shape the result is bitwise reproducible (no atomics). A group is an image channel when a
per-channel σ needs per-channel sums, else the whole row (G = 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

# The interpreter runs each program as numpy ops (~ms of overhead per program): bigger tiles, fewer programs.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@dataclass(frozen=True)
class Tiles:
    """A launch shape for a [BLOCK_B rows × BLOCK_L columns] tile looped ITERS times along the columns."""

    block_b: int
    block_l: int
    iters: int
    num_warps: int
    chunks: int  # column chunks per group: cdiv(L, block_l * iters)


def row_tiles(rows: int, length: int) -> Tiles:
    """Tile shape for `rows` rows of `length` elements (per group).

    GPU: 2048-element tiles (8 KB of fp32 per tensor per step) and up to 4 steps per program, so a program
    streams up to 32 KB per input while the grid still has thousands of programs at training sizes. Short
    rows (the 128-wide latent) stack several rows per tile instead. Untuned: no GPU was at hand.
    """
    tile = 1 << 16 if INTERPRETED else 2048
    block_l = min(next_pow2(length), tile)
    block_b = max(1, min(next_pow2(rows), tile // block_l))
    blocks = triton.cdiv(length, block_l)
    # ≤ 4 steps per program, spread evenly so the last chunk of a row is not mostly masked off
    iters = 1 if INTERPRETED else triton.cdiv(blocks, triton.cdiv(blocks, 4))
    num_warps = 8 if block_b * block_l >= 2048 else 4
    return Tiles(block_b, block_l, iters, num_warps, triton.cdiv(length, block_l * iters))


def grid(tiles: Tiles, rows: int, groups: int = 1) -> tuple[int, int]:
    return (triton.cdiv(rows, tiles.block_b), groups * tiles.chunks)


def _channels_last_perm(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim), 1)


def _try_view(t: torch.Tensor, perm: tuple[int, ...] | None, groups: int) -> torch.Tensor | None:
    batch = t.shape[0]
    src = t if perm is None else t.permute(perm)
    try:
        if perm is None:
            return src.view(batch, groups, -1)
        # channels-last order: only used with one group, the channel axis is last and summed over
        return src.view(batch, 1, -1)
    except RuntimeError:
        return None


def group_views(
    inputs: list[torch.Tensor], groups: int, outputs: list[torch.Tensor] = ()
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """(B, G, L) views of `inputs` and `outputs` in which index (b, g, l) means the same element for all.

    Row-strided views (`params.chunk(2, dim=1)`), contiguous and channels_last tensors are used in place;
    with G = 1 a channels_last batch is walked in memory order (a sum does not care about the order).
    An input no common order can describe is copied. Outputs are written in place, so the order is chosen
    among those every output supports; an output none supports is replaced by a contiguous scratch
    tensor, returned in the third list as (scratch, output) pairs to copy back after the kernel.
    """
    ndim = inputs[0].dim()
    orders: list[tuple[int, ...] | None] = [None]
    if groups == 1 and ndim >= 3:
        orders.append(_channels_last_perm(ndim))

    def fits(tensors, perm) -> bool:
        return all(_try_view(t, perm, groups) is not None for t in tensors)

    usable = [perm for perm in orders if fits(outputs, perm)]
    perm = next((p for p in usable if fits(inputs, p)), usable[0] if usable else None)

    out_views, copy_back = [], []
    for o in outputs:
        v = _try_view(o, perm, groups) if usable else None
        if v is None:  # a layout no order describes (a rare dense permutation): write a scratch copy
            scratch = torch.empty(o.shape, dtype=o.dtype, device=o.device)
            v = scratch.view(o.shape[0], groups, -1)
            copy_back.append((scratch, o))
        out_views.append(v)
    in_views = []
    for t in inputs:
        v = _try_view(t, perm, groups)
        if v is None:  # a layout this order cannot express: copy into it
            src = t if perm is None else t.permute(perm)
            v = src.contiguous().view(t.shape[0], groups if perm is None else 1, -1)
        in_views.append(v)
    return in_views, out_views, copy_back
