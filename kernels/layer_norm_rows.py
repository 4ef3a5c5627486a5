"""What the LayerNorm family's kernels share (``layer_norm_forward.py``, ``layer_norm_backward.py``, the fused
StableEmbedding and quantized kernels): the row loaders, the statistics' pieces, and a backward program's
dγ/dβ partials — its rows, their accumulators and its row of the (P, D) partial buffers.

The row math takes the address of each row as a vector of offsets, so the fused kernels run the same code on
gathered table rows; the ``*_source`` forms of the forward and backward read their rows through a loader
function (``_load_rows`` here; ``quantized.py`` brings its own), so quantized tables are dequantized as they are
read.
"""
import triton
import triton.language as tl

from .errors import _valid_ids
from .numerics import _div, _round, _sqrt


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


@triton.jit
def _backward_program(partial_w_ptr, partial_b_ptr, N, rows_per_program, D, ACC_DTYPE: tl.constexpr,
                      SINGLE_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """The start of a backward program p of the LayerNorm family: (p, its first row, its end, zeroed [BLOCK_D]
    dγ and dβ accumulators). Program p owns rows [p * rows_per_program, ...); with SINGLE_BLOCK its partial sums
    stay in the returned registers (``_finish_backward_program`` stores them), else they are added in place to
    row p of the partial buffers, zeroed here."""
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    if not SINGLE_BLOCK:
        _zero_partial_row(partial_w_ptr, partial_b_ptr, pid, D, ACC_DTYPE, BLOCK_D)
    return pid, row_start, row_end, tl.zeros([BLOCK_D], dtype=ACC_DTYPE), tl.zeros([BLOCK_D], dtype=ACC_DTYPE)


@triton.jit
def _finish_backward_program(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, SINGLE_BLOCK: tl.constexpr,
                             BLOCK_D: tl.constexpr):
    """The end of a backward program: with SINGLE_BLOCK, its register sums become row ``pid`` of the partials."""
    if SINGLE_BLOCK:
        _store_partial_row(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, BLOCK_D)


@triton.jit
def _token_rows(indices_ptr, r0, row_end, stride_i, V, BLOCK_T: tl.constexpr):
    """The fused kernels' BLOCK_T tokens from ``r0`` (before ``row_end``): (tokens as int64, in use, their table
    rows as int64, in use with a row in [0, V))."""
    tokens = r0 + tl.arange(0, BLOCK_T)
    token_mask = tokens < row_end
    tokens64 = tokens.to(tl.int64)
    rows = tl.load(indices_ptr + tokens64 * stride_i, mask=token_mask, other=0).to(tl.int64)
    return tokens64, token_mask, rows, _valid_ids(rows, token_mask, V)
