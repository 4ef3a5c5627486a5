"""Reductions whose rounding does not depend on the launch config.

``tl.sum`` adds in an order set by the tensor's layout: which elements each thread holds, the warp
shuffles, the warps. The layout follows the tile shape, ``num_warps`` and the loads' vector width, so two
configs of one kernel (or two alignments of one input) could round the same row differently. Here a sum
over an axis of width 2**k is a fixed tree: fold the second half onto the first (``y[i] + y[i + w/2]``)
until one element is left. Each fold is a ``tl.sum`` over an axis of length 2, a single commutative add,
so its result is the same whatever the layout; every config, and the interpreter, produce the same bits.
Zero padding past the data adds exact zeros, so a wider power-of-two tile gives the same sum.
"""
import triton
import triton.language as tl

from .numerics import _round

#: Partial rows reduced per step of ``_reduce_partials`` (a fixed tree over them, then in order).
PARTIAL_GROUP = tl.constexpr(32)


@triton.jit
def _tree_sum(x):
    """Σ over the last axis of a [rows, width] tile (width a power of two) by the fixed folding tree."""
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
