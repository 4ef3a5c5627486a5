"""LayerNorm backward over the last dim: dx = rstd·(γ·dy − mean(γ·dy) − x̂·mean(γ·dy·x̂)) per row, and dγ/dβ through
per-program partials and a fixed-order second stage (no atomics, no locks). The row helpers
(``_layer_norm_backward_rows`` / ``_source``) serve the fused StableEmbedding and quantized kernels too.

dγ/dβ are summed per tile of BLOCK_T rows (BLOCK_T fixed by D), tiles in order, then the programs' partial rows
in order (``reductions._reduce_partials``): the gradients do not depend on the tuned config.
"""
import triton
import triton.language as tl

from .layer_norm_rows import (
    _backward_program,
    _finish_backward_program,
    _inverse,
    _load_rows,
    _load_tile,
    _load_vector,
)
from .numerics import _round
from .reductions import _column_sum, _reduce_partials, _row_sum


@triton.jit
def _emit_dx(
    dx, cols, col_mask, dst_ptr, dst_rows, stride_dstd, dst_valid,
    MODE: tl.constexpr, CAST_DTYPE: tl.constexpr, ROUND_DTYPE: tl.constexpr,
):
    """Store a [rows, cols] tile of dx at ``dst_ptr + dst_rows`` (MODE DX_STORE, where ``dst_valid``),
    rounded to CAST_DTYPE then ROUND_DTYPE (the backward of the forward's casts)."""
    if MODE == 0:
        rounded = _round(_round(dx, CAST_DTYPE), ROUND_DTYPE)
        tl.store(dst_ptr + dst_rows[:, None] + cols[None, :].to(tl.int64) * stride_dstd,
                 rounded.to(dst_ptr.dtype.element_ty), mask=dst_valid[:, None] & col_mask[None, :])


@triton.jit
def _layer_norm_backward_rows(
    x_ptr, x_rows, stride_xd, x_valid,
    dy_ptr, dy_rows, stride_dyd, row_valid,
    w_ptr, stride_w,
    mean_ptr, rstd_ptr, stat_index,
    dst_ptr, dst_rows, stride_dstd, dst_valid,
    partial_w_ptr, partial_b_ptr, partial_row,
    D,
    MODE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    CAST_DTYPE: tl.constexpr, ROUND_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """LayerNorm backward of BLOCK_T rows (rows as in ``_layer_norm_forward_rows``; dy at
    ``dy_ptr + dy_rows`` where ``row_valid``, rounded to CAST_DTYPE as the backward of the forward's final
    cast does). dx goes to ``_emit_dx``. Returns this tile's [BLOCK_D] dγ and dβ column sums (``tl.sum``
    over the BLOCK_T rows, in the layout D fixes) when SINGLE_BLOCK; otherwise adds them in place to row ``partial_row`` of the
    (P, D) partial buffers, which belongs to the calling program alone."""
    return _layer_norm_backward_source(
        _load_rows, (x_ptr, x_rows, stride_xd), x_valid,
        dy_ptr, dy_rows, stride_dyd, row_valid,
        w_ptr, stride_w,
        mean_ptr, rstd_ptr, stat_index,
        dst_ptr, dst_rows, stride_dstd, dst_valid,
        partial_w_ptr, partial_b_ptr, partial_row,
        D, MODE, HAS_WEIGHT, CAST_DTYPE, ROUND_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D,
    )


@triton.jit
def _layer_norm_backward_source(
    LOAD: tl.constexpr, src, x_valid,
    dy_ptr, dy_rows, stride_dyd, row_valid,
    w_ptr, stride_w,
    mean_ptr, rstd_ptr, stat_index,
    dst_ptr, dst_rows, stride_dstd, dst_valid,
    partial_w_ptr, partial_b_ptr, partial_row,
    D,
    MODE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    CAST_DTYPE: tl.constexpr, ROUND_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``_layer_norm_backward_rows`` on rows read through ``LOAD(src, ...)`` (see ``_load_rows``)."""
    mean = tl.load(mean_ptr + stat_index, mask=row_valid, other=0).to(ACC_DTYPE)
    rstd = tl.load(rstd_ptr + stat_index, mask=row_valid, other=0).to(ACC_DTYPE)
    inv_d = _inverse(D, ACC_DTYPE)
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < D
        x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
        dy = _load_tile(dy_ptr, dy_rows, cols, stride_dyd, row_valid[:, None] & col_mask[None, :],
                        CAST_DTYPE, ACC_DTYPE)
        xhat = tl.where(col_mask[None, :], (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_WEIGHT:
            wdy = dy * _load_vector(w_ptr, cols, stride_w, col_mask, ACC_DTYPE)[None, :]
        else:
            wdy = dy
        if MODE == 0:
            c1 = _row_sum(xhat * wdy) * inv_d
            c2 = _row_sum(wdy) * inv_d
            dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            _emit_dx(dx, cols, col_mask, dst_ptr, dst_rows, stride_dstd, dst_valid, MODE, CAST_DTYPE, ROUND_DTYPE)
        tile_w = _column_sum(dy * xhat)
        tile_b = _column_sum(dy)
    else:
        c1 = tl.zeros([BLOCK_T], dtype=ACC_DTYPE)
        c2 = tl.zeros([BLOCK_T], dtype=ACC_DTYPE)
        if MODE == 0:
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_mask = cols < D
                x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
                dy = _load_tile(dy_ptr, dy_rows, cols, stride_dyd, row_valid[:, None] & col_mask[None, :],
                                CAST_DTYPE, ACC_DTYPE)
                xhat = tl.where(col_mask[None, :], (x - mean[:, None]) * rstd[:, None], 0.0)
                if HAS_WEIGHT:
                    wdy = dy * _load_vector(w_ptr, cols, stride_w, col_mask, ACC_DTYPE)[None, :]
                else:
                    wdy = dy
                c1 += _row_sum(xhat * wdy)
                c2 += _row_sum(wdy)
            c1 = c1 * inv_d
            c2 = c2 * inv_d
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_mask = cols < D
            x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
            dy = _load_tile(dy_ptr, dy_rows, cols, stride_dyd, row_valid[:, None] & col_mask[None, :],
                            CAST_DTYPE, ACC_DTYPE)
            xhat = tl.where(col_mask[None, :], (x - mean[:, None]) * rstd[:, None], 0.0)
            if MODE == 0:
                if HAS_WEIGHT:
                    wdy = dy * _load_vector(w_ptr, cols, stride_w, col_mask, ACC_DTYPE)[None, :]
                else:
                    wdy = dy
                dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
                _emit_dx(dx, cols, col_mask, dst_ptr, dst_rows, stride_dstd, dst_valid, MODE, CAST_DTYPE,
                         ROUND_DTYPE)
            partial_offsets = tl.cast(partial_row, tl.int64) * D + cols
            # The program's own earlier writes to its partial row must be visible to all its threads.
            tl.debug_barrier()
            pw = tl.load(partial_w_ptr + partial_offsets, mask=col_mask, other=0)
            pb = tl.load(partial_b_ptr + partial_offsets, mask=col_mask, other=0)
            tl.debug_barrier()
            tl.store(partial_w_ptr + partial_offsets, pw + _column_sum(dy * xhat), mask=col_mask)
            tl.store(partial_b_ptr + partial_offsets, pb + _column_sum(dy), mask=col_mask)
        tile_w = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
        tile_b = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    return tile_w, tile_b


@triton.jit
def layer_norm_bwd_kernel(
    x_ptr,  # (N, D) forward input; strides (stride_xn, stride_xd)
    dy_ptr,  # (N, D) output gradient, x's dtype; strides (stride_dyn, stride_dyd)
    w_ptr,  # (D,) gamma; stride stride_w (read only when HAS_WEIGHT)
    mean_ptr,  # (N,) ACC_DTYPE forward means, contiguous
    rstd_ptr,  # (N,) ACC_DTYPE forward rstds, contiguous
    dx_ptr,  # (N, D) input gradient, x's dtype; strides (stride_dxn, stride_dxd)
    partial_w_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = this program's Σ dy * xhat
    partial_b_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = this program's Σ dy
    N,
    D,
    rows_per_program,  # runtime multiple of BLOCK_T: program p owns rows [p * rows_per_program, ...)
    stride_xn,
    stride_xd,
    stride_dyn,
    stride_dyd,
    stride_w,
    stride_dxn,
    stride_dxd,
    HAS_WEIGHT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)) for its rows, and this program's dγ/dβ
    partial sums (finished by ``layer_norm_param_grad_kernel``): deterministic, no atomics."""
    pid, row_start, row_end, pw, pb = _backward_program(partial_w_ptr, partial_b_ptr, N, rows_per_program, D,
                                                        ACC_DTYPE, SINGLE_BLOCK, BLOCK_D)
    for r0 in range(row_start, row_end, BLOCK_T):
        tokens = r0 + tl.arange(0, BLOCK_T)
        valid = tokens < row_end
        tokens64 = tokens.to(tl.int64)
        tile_w, tile_b = _layer_norm_backward_rows(
            x_ptr, tokens64 * stride_xn, stride_xd, valid,
            dy_ptr, tokens64 * stride_dyn, stride_dyd, valid,
            w_ptr, stride_w,
            mean_ptr, rstd_ptr, tokens64,
            dx_ptr, tokens64 * stride_dxn, stride_dxd, valid,
            partial_w_ptr, partial_b_ptr, pid,
            D, 0, HAS_WEIGHT, x_ptr.dtype.element_ty, x_ptr.dtype.element_ty, ACC_DTYPE,
            SINGLE_BLOCK, BLOCK_T, BLOCK_D,
        )
        pw += tile_w
        pb += tile_b
    _finish_backward_program(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, SINGLE_BLOCK, BLOCK_D)


@triton.jit
def layer_norm_param_grad_kernel(
    partial_w_ptr,  # (P, D) ACC_DTYPE partial dγ sums, contiguous
    partial_b_ptr,  # (P, D) ACC_DTYPE partial dβ sums, contiguous
    dw_ptr,  # (D,) dγ, gamma's dtype; stride stride_dw (written only when HAS_WEIGHT)
    db_ptr,  # (D,) dβ, beta's dtype; stride stride_db (written only when HAS_BIAS)
    P,  # partial rows (programs of the first stage)
    D,
    stride_dw,
    stride_db,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Second stage of dγ/dβ: each program sums BLOCK_D columns of the partials in a fixed order."""
    _reduce_partials(partial_w_ptr, partial_b_ptr, dw_ptr, db_ptr, P, D, stride_dw, stride_db,
                     tl.program_id(0), HAS_WEIGHT, HAS_BIAS, BLOCK_D)
