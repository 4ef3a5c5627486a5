"""LayerNorm over the last dim: forward with float32 statistics (float64 for float64 data), backward with
dγ/dβ through per-program partials and a fixed-order second stage (no atomics, no locks).

The row math lives in jitted helpers that take the address of each row as a vector of offsets, so the
fused StableEmbedding kernels (``stable_embedding.py``) run the same code on gathered table rows; their
``*_source`` forms read the rows through a loader function instead, so quantized tables (``quantized.py``)
are dequantized as they are read.

Tiles: a program works on BLOCK_T rows x BLOCK_D columns, BLOCK_D fixed by D alone (the launchers take
the next power of two up to 8192). With ``SINGLE_BLOCK`` (D <= BLOCK_D) a row is loaded once and kept in
registers; wider rows are streamed in BLOCK_D pieces over several passes.

Every sum's order is fixed by D (``reductions.py``): row sums per BLOCK_D piece by ``tl.sum`` in a layout
that the launchers fix by D (BLOCK_D and ``num_warps``), pieces in order; dγ/dβ per tile of BLOCK_T rows,
tiles in order (the backward's BLOCK_T is fixed by D too). So the outputs and gradients do not depend on
the tuned config (the forward's rows per program). Launchers turn off FMA contraction for every kernel.
"""
import triton
import triton.language as tl

from .numerics import _div, _exact_float, _round, _sqrt
from .reductions import _column_sum, _reduce_partials, _row_sum

# MODE values (constexpr) of the backward helper: what happens to the input gradient of each row.
DX_STORE = 0  # dst[row, :] = dx, rounded to ROUND_DTYPE (LayerNorm's dx, or StableEmbedding's d(emb) rows)
DX_NONE = 1  # only the dγ/dβ partials


@triton.jit
def _load_tile(base_ptr, row_offsets, cols, stride_d, mask, CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """The [rows, cols] tile at ``base_ptr + row_offsets[:, None] + cols[None, :] * stride_d``, rounded to
    CAST_DTYPE (the cast the caller's model makes) and widened to ACC_DTYPE; zeros where masked."""
    x = tl.load(base_ptr + row_offsets[:, None] + cols[None, :].to(tl.int64) * stride_d, mask=mask, other=0)
    return _round(x, CAST_DTYPE).to(ACC_DTYPE)


@triton.jit
def _load_rows(src, cols, mask, CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """The row loader of a dense source ``src = (x_ptr, x_rows, stride_xd)``: ``_load_tile`` of those rows.

    The ``*_source`` helpers below read their rows only through such a loader, ``LOAD(src, cols, mask,
    CAST_DTYPE, ACC_DTYPE)`` -> the [rows, cols] tile rounded to CAST_DTYPE, in ACC_DTYPE, zeros where masked;
    other sources (a quantized table: ``quantized.py``) bring their own loader and ``src`` tuple."""
    x_ptr, x_rows, stride_xd = src
    return _load_tile(x_ptr, x_rows, cols, stride_xd, mask, CAST_DTYPE, ACC_DTYPE)


@triton.jit
def _load_vector(ptr, cols, stride, col_mask, ACC_DTYPE: tl.constexpr):
    """A (D,) parameter slice in ACC_DTYPE; zeros where masked."""
    return tl.load(ptr + cols.to(tl.int64) * stride, mask=col_mask, other=0).to(ACC_DTYPE)


@triton.jit
def _rstd(var, eps, ACC_DTYPE: tl.constexpr):
    """1 / sqrt(var + eps), ``eps`` in ACC_DTYPE: the hardware reciprocal square root in float32 (as
    PyTorch's CUDA LayerNorm; no subroutine call, so no call-clobbered registers to spill: the one
    approximate instruction the kernels use, allowed to the LayerNorm family alone by the ahead-of-time
    check), IEEE sqrt and division in float64. A variance that overflowed (a row with elements beyond ~1e19 in float32) gives NaN,
    as PyTorch's CPU LayerNorm does, not 0: the row would otherwise come out as β, finite and wrong."""
    shifted = var + eps
    if ACC_DTYPE == tl.float64:
        rstd = _div(tl.full([], 1.0, ACC_DTYPE), _sqrt(shifted, ACC_DTYPE), ACC_DTYPE)
    else:
        rstd = tl.math.rsqrt(shifted)
    overflow = shifted * 0.0  # NaN exactly where the variance is inf (or NaN already)
    return tl.where(overflow != overflow, overflow, rstd)


@triton.jit
def _inverse(D, ACC_DTYPE: tl.constexpr):
    """1 / D once per program, correctly rounded: the row means multiply by it (one division, not one
    per row)."""
    return _div(tl.full([], 1.0, ACC_DTYPE), tl.cast(D, ACC_DTYPE), ACC_DTYPE)


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
    y_ty = y_ptr.dtype.element_ty
    inv_d = _inverse(D, ACC_DTYPE)
    if SINGLE_BLOCK:
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < D
        x = LOAD(src, cols, x_valid[:, None] & col_mask[None, :], CAST_DTYPE, ACC_DTYPE)
        shifted = tl.where(col_mask[None, :], x - pivot[:, None], 0.0)
        offset = _row_sum(shifted) * inv_d
        xc = tl.where(col_mask[None, :], shifted - offset[:, None], 0.0)
        rstd = _rstd(_row_sum(xc * xc) * inv_d, eps, ACC_DTYPE)
        y = xc * rstd[:, None]
        if HAS_WEIGHT:
            y = y * _load_vector(w_ptr, cols, stride_w, col_mask, ACC_DTYPE)[None, :]
        if HAS_BIAS:
            y = y + _load_vector(b_ptr, cols, stride_b, col_mask, ACC_DTYPE)[None, :]
        tl.store(
            y_ptr + y_rows[:, None] + cols[None, :].to(tl.int64) * stride_yd,
            _round(_round(y, CAST_DTYPE), y_ty),
            mask=y_valid[:, None] & col_mask[None, :],
        )
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
            y = ((x - pivot[:, None]) - offset[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                y = y * _load_vector(w_ptr, cols, stride_w, col_mask, ACC_DTYPE)[None, :]
            if HAS_BIAS:
                y = y + _load_vector(b_ptr, cols, stride_b, col_mask, ACC_DTYPE)[None, :]
            tl.store(
                y_ptr + y_rows[:, None] + cols[None, :].to(tl.int64) * stride_yd,
                _round(_round(y, CAST_DTYPE), y_ty),
                mask=y_valid[:, None] & col_mask[None, :],
            )
    tl.store(mean_ptr + stat_index, pivot + offset, mask=y_valid)
    tl.store(rstd_ptr + stat_index, rstd, mask=y_valid)


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
def _zero_partial_row(partial_w_ptr, partial_b_ptr, partial_row, D, ACC_DTYPE: tl.constexpr, BLOCK_D: tl.constexpr):
    """Zero row ``partial_row`` of both (P, D) partial buffers (the multi-block path adds into them)."""
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        offsets = tl.cast(partial_row, tl.int64) * D + cols
        zero = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
        tl.store(partial_w_ptr + offsets, zero, mask=cols < D)
        tl.store(partial_b_ptr + offsets, zero, mask=cols < D)


@triton.jit
def _store_partial_row(partial_w_ptr, partial_b_ptr, partial_row, pw, pb, D, BLOCK_D: tl.constexpr):
    """Write one program's register-held [BLOCK_D] dγ/dβ sums (single-block path) as its partial row."""
    cols = tl.arange(0, BLOCK_D)
    offsets = tl.cast(partial_row, tl.int64) * D + cols
    tl.store(partial_w_ptr + offsets, pw, mask=cols < D)
    tl.store(partial_b_ptr + offsets, pb, mask=cols < D)


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
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    pw = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    pb = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    if not SINGLE_BLOCK:
        _zero_partial_row(partial_w_ptr, partial_b_ptr, pid, D, ACC_DTYPE, BLOCK_D)
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
    if SINGLE_BLOCK:
        _store_partial_row(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, BLOCK_D)


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
