"""Sums whose rounding does not depend on the tuned launch config.

``tl.sum`` adds in an order set by the tensor's register layout: which elements each thread holds (added
in register order), then the lanes (a butterfly of shuffles), then the warps (through shared memory). The
layout follows the tile's width, ``num_warps``, the backend's warp size and the loads' vector width (the
dtype, and whether the rows are 16-byte aligned), and not the rows of a tile: a row of a [BLOCK_T, BLOCK_D]
tile is spread over the same lanes and warps for every BLOCK_T. So the LayerNorm family sums rows with
:func:`_row_sum` (one ``tl.sum``: one shared-memory round trip) and launches with BLOCK_D and ``num_warps``
fixed by the row width (``triton_embed/ops/tiles.py``): every tuned config gives the same bits, which the
ahead-of-time check confirms by comparing the compiled layouts of every ``tt.reduce`` across configs.

The max_norm renorm sums the same way. (The interpreter's numpy sums add in another order: a sum may
differ there in its last bit.)

Where the warps are tuned (the dγ/dβ second stage: its column blocks and warps change speed only), a sum
over an axis of width 2**k is a fixed tree instead (:func:`_tree_sum_columns`): fold the second half onto
the first (``y[i] + y[i + w/2]``) until one element is left. Each fold is a ``tl.sum`` over an axis of length
2, a single commutative add, so its result is the same whatever the layout, and the interpreter computes
the same adds. It costs shared-memory round trips and barriers per fold across warps (the LayerNorm family
paid 32-131 barriers per kernel for it), and 3-5x the instructions of ``tl.sum`` on a bfloat16 row. Zero
padding past the data adds exact zeros, so a wider power-of-two tile gives the same sum.
"""
import triton
import triton.language as tl

from .numerics import _round

#: Partial rows reduced per step of ``_reduce_partials`` (a fixed tree over them, then in order).
PARTIAL_GROUP = tl.constexpr(32)


@triton.jit
def _row_sum(x):
    """Σ over the last axis of a [rows, width] tile by ``tl.sum``: the order follows the register layout,
    which the launchers fix by the width (see the module's docstring)."""
    return tl.sum(x, axis=1)


@triton.jit
def _column_sum(x):
    """Σ over the first axis of a [rows, width] tile by ``tl.sum`` (as :func:`_row_sum`)."""
    return tl.sum(x, axis=0)


@triton.jit
def _tree_sum(x):
    """Σ over the last axis of a [rows, width] tile (width a power of two) by the fixed folding tree (the
    row-wise twin of :func:`_tree_sum_columns`, for sums that must give the interpreter's bits)."""
    for _ in tl.static_range(16):
        if x.shape[1] > 1:
            x = tl.sum(tl.reshape(x, [x.shape[0], 2, x.shape[1] // 2]), axis=1)
    return tl.reshape(x, [x.shape[0]])


@triton.jit
def _tree_sum_columns(x):
    """Σ over the first axis of a [rows, width] tile (rows a power of two): per column, the same tree."""
    for _ in tl.static_range(16):
        if x.shape[0] > 1:
            x = tl.sum(tl.reshape(x, [2, x.shape[0] // 2, x.shape[1]]), axis=0)
    return tl.reshape(x, [x.shape[1]])


@triton.jit
def _reduce_partials(
    partial_w_ptr, partial_b_ptr, dw_ptr, db_ptr, P, D, stride_dw, stride_db, col_block,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dγ[c] = Σ_p partial_w[p, c] (and dβ) for one BLOCK_D column block: PARTIAL_GROUP rows at a time,
    each group by the fixed tree, the groups in order. Rounded to the parameters' dtypes."""
    cols = col_block * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    acc_w = tl.zeros([BLOCK_D], dtype=partial_w_ptr.dtype.element_ty)
    acc_b = tl.zeros([BLOCK_D], dtype=partial_b_ptr.dtype.element_ty)
    for p0 in range(0, P, PARTIAL_GROUP):
        rows = p0 + tl.arange(0, PARTIAL_GROUP)
        mask = (rows < P)[:, None] & col_mask[None, :]
        offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
        if HAS_WEIGHT:
            acc_w += _tree_sum_columns(tl.load(partial_w_ptr + offsets, mask=mask, other=0))
        if HAS_BIAS:
            acc_b += _tree_sum_columns(tl.load(partial_b_ptr + offsets, mask=mask, other=0))
    if HAS_WEIGHT:
        tl.store(dw_ptr + cols.to(tl.int64) * stride_dw, _round(acc_w, dw_ptr.dtype.element_ty), mask=col_mask)
    if HAS_BIAS:
        tl.store(db_ptr + cols.to(tl.int64) * stride_db, _round(acc_b, db_ptr.dtype.element_ty), mask=col_mask)
