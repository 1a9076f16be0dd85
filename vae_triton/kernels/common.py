"""What the three fused ops share: tile shapes and the (B, G, L) strided views their kernels walk.

Every kernel sees its B×N inputs as a 3-D strided view (row b, group g, element l) and writes one fp32
partial sum per (row, group, column chunk); the launcher then sums the chunks with one `torch.sum` — or
none when a row fits one chunk (the latent). With a fixed tiling per shape the result is bitwise
reproducible (no atomics). A group is an image channel when a per-channel σ needs per-channel sums, else
the whole row (G = 1).

Host cost matters as much as device time here (a training step calls these ops once each), so what depends
only on shapes and strides — the tiles, the grid, the walking order of the views — is computed once per
layout and cached (`functools.lru_cache`).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

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

    @property
    def launch(self) -> dict:
        """The tile constexprs and num_warps every kernel here takes: `kernel[grid](..., **tiles.launch)`."""
        return dict(BLOCK_B=self.block_b, BLOCK_L=self.block_l, ITERS=self.iters, num_warps=self.num_warps)


@functools.lru_cache(maxsize=1024)
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


@functools.lru_cache(maxsize=1024)
def grid(tiles: Tiles, rows: int, groups: int = 1) -> tuple[int, int]:
    return (triton.cdiv(rows, tiles.block_b), groups * tiles.chunks)


def row_partials(batch: int, parts: int, device: torch.device) -> torch.Tensor:
    """fp32 partial sums, one per (row, part): (B,) when a row is one part (the kernel then finishes the
    row's sum: no extra launch), else (B, parts), summed by `row_sums`."""
    return torch.empty((batch,) if parts == 1 else (batch, parts), dtype=torch.float32, device=device)


def row_sums(partials: torch.Tensor) -> torch.Tensor:
    return partials if partials.dim() == 1 else partials.sum(dim=1)


# What every kernel's program does first: find its rows, then walk its column chunk tile by tile.


@triton.jit
def row_block(B, BLOCK_B: tl.constexpr):
    """This program's BLOCK_B rows: (indices, which exist, int64 indices as a column for 2-D offsets)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    return rows, rows < B, rows.to(tl.int64)[:, None]


@triton.jit
def column_tile(chunk, it, row_ok, L, BLOCK_L: tl.constexpr, ITERS: tl.constexpr):
    """Step `it` of column chunk `chunk`: (column indices, int64 indices as a row, the tile's mask)."""
    cols = (chunk * ITERS + it) * BLOCK_L + tl.arange(0, BLOCK_L)
    return cols, cols.to(tl.int64)[None, :], row_ok[:, None] & (cols < L)[None, :]


@triton.jit
def load_tile(ptr, r, row_stride, c, col_stride, mask):
    """A [rows × columns] tile of a strided tensor, in fp32 (0 where masked off)."""
    return tl.load(ptr + r * row_stride + c * col_stride, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_per_row(ptr, stride, rows, row_ok):
    """One fp32 value per row (an upstream per-image gradient), as a column to broadcast over the tile."""
    return tl.load(ptr + rows.to(tl.int64) * stride, mask=row_ok, other=0.0).to(tl.float32)[:, None]


@triton.jit
def store_partial(part_ptr, value, rows, row_ok):
    """Each row's partial sum for this program's (group, chunk): part_ptr[row, program_id(1)]."""
    offsets = rows.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)
    tl.store(part_ptr + offsets, value, mask=row_ok)


def _channels_last_perm(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim), 1)


def _try_view(t: torch.Tensor, perm: tuple[int, ...] | None, groups: int) -> torch.Tensor | None:
    batch = t.shape[0]
    src = t if perm is None else t.permute(perm)
    try:
        # channels-last order: only used with one group, the channel axis is last and summed over
        return src.view(batch, groups if perm is None else 1, -1)
    except RuntimeError:
        return None


Strides = tuple[int, int, int]


@dataclass(frozen=True)
class _Plan:
    perm: tuple[int, ...] | None
    length: int
    inputs: tuple[Strides | None, ...]  # (B, G, L) strides of each input in place; None: copy it
    outputs: tuple[Strides | None, ...]  # same for outputs; None: write a scratch tensor and copy back


@functools.lru_cache(maxsize=1024)
def _plan(shape: torch.Size, groups: int, in_strides: tuple, out_strides: tuple, channels_last: bool):
    """The walking order for tensors of `shape` with these strides, found once per layout on meta tensors."""
    ins = [torch.empty_strided(shape, st, device="meta") for st in in_strides]
    outs = [torch.empty_strided(shape, st, device="meta") for st in out_strides]
    orders: list[tuple[int, ...] | None] = [] if channels_last else [None]
    if groups == 1 and len(shape) >= 3:
        orders.append(_channels_last_perm(len(shape)))

    def fits(tensors, perm) -> bool:
        return all(_try_view(t, perm, groups) is not None for t in tensors)

    usable = [perm for perm in orders if fits(outs, perm)]
    perm = next((p for p in usable if fits(ins, p)), usable[0] if usable else orders[0])

    def strides(t) -> Strides | None:
        v = _try_view(t, perm, groups)
        return None if v is None else tuple(v.stride())

    length = shape.numel() // (shape[0] * groups) if shape[0] * groups else 0
    return _Plan(perm, length, tuple(map(strides, ins)), tuple(map(strides, outs)))


@dataclass
class Walk:
    """How a kernel walks its B×N tensors: each as a pointer plus (B, G, L) strides. `inputs` are the
    tensors themselves, or contiguous copies where no common order describes them; `outputs` likewise,
    with `copy_back` the (scratch, output) pairs to copy after the kernel."""

    length: int
    inputs: list[torch.Tensor]
    in_strides: list[Strides]
    outputs: list[torch.Tensor]
    out_strides: list[Strides]
    copy_back: list[tuple[torch.Tensor, torch.Tensor]]


def group_walk(
    inputs: list[torch.Tensor], groups: int, outputs: list[torch.Tensor] = (), channels_last: bool = False
) -> Walk:
    """(B, G, L) strides of `inputs` and `outputs` in which index (b, g, l) means the same element for all.

    Row-strided views (`params.chunk(2, dim=1)`), contiguous and channels_last tensors are used in place;
    with G = 1 a channels_last batch is walked in memory order (a sum does not care about the order), and
    `channels_last=True` insists on that order (channel = l mod C), copying what does not fit it.
    An input no common order can describe is copied. Outputs are written in place, so the order is chosen
    among those every output supports; an output that does not fit it is replaced by a dense scratch
    tensor in that order, to copy back after the kernel. The decision is cached per (shape, strides): no
    view is made per call.
    """
    shape = inputs[0].shape
    in_strides, out_strides = tuple([t.stride() for t in inputs]), tuple([o.stride() for o in outputs])
    plan = _plan(shape, groups, in_strides, out_strides, channels_last)
    length, perm = plan.length, plan.perm
    dense = (length, length, 1) if perm is not None else (groups * length, length, 1)
    walk = Walk(length, [], [], [], [], [])
    for t, st in zip(inputs, plan.inputs, strict=True):
        if st is None:  # a layout this order cannot express: copy into it
            t, st = (t if perm is None else t.permute(perm)).contiguous(), dense
        walk.inputs.append(t)
        walk.in_strides.append(st)
    for o, st in zip(outputs, plan.outputs, strict=True):
        if st is None:  # a layout this order cannot express (rare): write a dense scratch copy in it
            order = perm if perm is not None else tuple(range(o.dim()))
            scratch = torch.empty([o.shape[d] for d in order], dtype=o.dtype, device=o.device)
            walk.copy_back.append((scratch, o if perm is None else o.permute(perm)))
            o, st = scratch, dense
        walk.outputs.append(o)
        walk.out_strides.append(st)
    return walk
