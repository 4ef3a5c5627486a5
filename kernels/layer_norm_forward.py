"""LayerNorm forward over the last dim, with float32 statistics (float64 for float64 data): the row helpers the
fused StableEmbedding and quantized kernels share (``_layer_norm_forward_rows`` on rows given by their offsets,
``_layer_norm_forward_source`` on rows read through a loader) and the plain LayerNorm kernel.

Tiles: a program works on BLOCK_T rows x BLOCK_D columns, BLOCK_D fixed by D alone (the launchers take the next
power of two up to 8192). With ``SINGLE_BLOCK`` (D <= BLOCK_D) a row is loaded once and kept in registers; wider
rows are streamed in BLOCK_D pieces over several passes.

Every sum's order is fixed by D (``reductions.py``): row sums per BLOCK_D piece by ``tl.sum`` in a layout that
the launchers fix by D (BLOCK_D and ``num_warps``), pieces in order. So the outputs do not depend on the tuned
config (the rows per program). Launchers turn off FMA contraction for every kernel.
"""
import triton
import triton.language as tl

from .layer_norm_rows import _inverse, _load_rows, _load_vector, _rstd
from .numerics import _exact_float, _round
from .reductions import _row_sum


@triton.jit
def _layer_norm_forward_rows(
    x_ptr, x_rows, stride_xd, x_valid,
    w_ptr, stride_w, b_ptr, stride_b,
    y_ptr, y_rows, stride_yd, y_valid,
    mean_ptr, rstd_ptr, stat_index,
    D, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """LayerNorm of BLOCK_T rows. Row t is read at ``x_ptr + x_rows[t]`` (where ``x_valid[t]``; zeros
    otherwise), rounded to CAST_DTYPE, normalised in ACC_DTYPE (``eps`` is an ACC_DTYPE value), and
    written, rounded to CAST_DTYPE then to y's dtype, at ``y_ptr + y_rows[t]`` (where ``y_valid[t]``), with
    mean and rstd at ``stat_index[t]``.

    The statistics are taken about each row's first element (the pivot): a constant row then centres to
    exact zeros (sum(x) / D alone is an ulp off, which rstd ~ 1/sqrt(eps) would magnify), and rows far from
    zero lose no bits to cancellation."""
    pivot = _round(tl.load(x_ptr + x_rows, mask=x_valid, other=0), CAST_DTYPE).to(ACC_DTYPE)
    _layer_norm_forward_source(
        _load_rows, (x_ptr, x_rows, stride_xd), pivot, x_valid,
        w_ptr, stride_w, b_ptr, stride_b,
        y_ptr, y_rows, stride_yd, y_valid,
        mean_ptr, rstd_ptr, stat_index,
        D, eps, HAS_WEIGHT, HAS_BIAS, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D,
    )


@triton.jit
def _layer_norm_forward_source(
    LOAD: tl.constexpr, src, pivot, x_valid,
    w_ptr, stride_w, b_ptr, stride_b,
    y_ptr, y_rows, stride_yd, y_valid,
    mean_ptr, rstd_ptr, stat_index,
    D, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``_layer_norm_forward_rows`` on rows read through ``LOAD(src, ...)`` (see ``_load_rows``), about
    each row's ``pivot`` (its first element as the loader gives it, in ACC_DTYPE), which the caller loads."""
    inv_d = _inverse(D, ACC_DTYPE)
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < D
        x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
        shifted = tl.where(col_mask[None, :], x - pivot[:, None], 0.0)
        offset = _row_sum(shifted) * inv_d
        xc = tl.where(col_mask[None, :], shifted - offset[:, None], 0.0)
        rstd = _rstd(_row_sum(xc * xc) * inv_d, eps, ACC_DTYPE)
        _scale_shift_store(xc * rstd[:, None], w_ptr, stride_w, b_ptr, stride_b, y_ptr, y_rows, stride_yd, y_valid,
                           cols, col_mask, HAS_WEIGHT, HAS_BIAS, CAST_DTYPE, ACC_DTYPE)
    else:
        # Two statistics passes (the mean's offset from the pivot, then the centred sum of squares), then
        # the normalising pass.
        total = tl.zeros([BLOCK_T], dtype=ACC_DTYPE)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_mask = cols < D
            x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
            total += _row_sum(tl.where(col_mask[None, :], x - pivot[:, None], 0.0))
        offset = total * inv_d
        squares = tl.zeros([BLOCK_T], dtype=ACC_DTYPE)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_mask = cols < D
            x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
            xc = tl.where(col_mask[None, :], (x - pivot[:, None]) - offset[:, None], 0.0)
            squares += _row_sum(xc * xc)
        rstd = _rstd(squares * inv_d, eps, ACC_DTYPE)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_mask = cols < D
            x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
            _scale_shift_store(((x - pivot[:, None]) - offset[:, None]) * rstd[:, None], w_ptr, stride_w, b_ptr,
                               stride_b, y_ptr, y_rows, stride_yd, y_valid, cols, col_mask, HAS_WEIGHT, HAS_BIAS,
                               CAST_DTYPE, ACC_DTYPE)
    tl.store(mean_ptr + stat_index, pivot + offset, mask=y_valid)
    tl.store(rstd_ptr + stat_index, rstd, mask=y_valid)


@triton.jit
def _scale_shift_store(
    y, w_ptr, stride_w, b_ptr, stride_b, y_ptr, y_rows, stride_yd, y_valid, cols, col_mask,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    """The normalised [BLOCK_T, BLOCK_D] tile ``y`` times γ plus β, rounded to CAST_DTYPE then to y's dtype,
    stored at ``y_ptr + y_rows[t]`` (where ``y_valid[t]``) in columns ``cols``."""
    if HAS_WEIGHT:
        y = y * _load_vector(w_ptr, cols, stride_w, col_mask, ACC_DTYPE)[None, :]
    if HAS_BIAS:
        y = y + _load_vector(b_ptr, cols, stride_b, col_mask, ACC_DTYPE)[None, :]
    tl.store(
        y_ptr + y_rows[:, None] + cols[None, :].to(tl.int64) * stride_yd,
        _round(_round(y, CAST_DTYPE), y_ptr.dtype.element_ty),
        mask=y_valid[:, None] & col_mask[None, :],
    )


@triton.jit(do_not_specialize=["eps"])
def layer_norm_fwd_kernel(
    x_ptr,  # (N, D) input, any float dtype; strides (stride_xn, stride_xd)
    w_ptr,  # (D,) gamma, any float dtype; stride stride_w (read only when HAS_WEIGHT)
    b_ptr,  # (D,) beta, any float dtype; stride stride_b (read only when HAS_BIAS)
    y_ptr,  # (N, D) output, x's dtype; strides (stride_yn, stride_yd)
    mean_ptr,  # (N,) ACC_DTYPE, contiguous: per-row mean
    rstd_ptr,  # (N,) ACC_DTYPE, contiguous: per-row 1 / sqrt(var + eps)
    N,  # rows (runtime: never recompile per batch)
    D,  # normalised size
    eps,  # int64 bits of the float64 epsilon (see numerics.py)
    stride_xn,
    stride_xd,
    stride_w,
    stride_b,
    stride_yn,
    stride_yd,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,  # float32, or float64 for float64 inputs
    SINGLE_BLOCK: tl.constexpr,  # D <= BLOCK_D: one load per row
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """y = (x - mean) * rstd * gamma + beta over the last dim; each program normalises BLOCK_T rows."""
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = tokens < N
    tokens64 = tokens.to(tl.int64)
    _layer_norm_forward_rows(
        x_ptr, tokens64 * stride_xn, stride_xd, valid,
        w_ptr, stride_w, b_ptr, stride_b,
        y_ptr, tokens64 * stride_yn, stride_yd, valid,
        mean_ptr, rstd_ptr, tokens64,
        D, _exact_float(eps, ACC_DTYPE), HAS_WEIGHT, HAS_BIAS, x_ptr.dtype.element_ty, ACC_DTYPE, SINGLE_BLOCK,
        BLOCK_T, BLOCK_D,
    )
