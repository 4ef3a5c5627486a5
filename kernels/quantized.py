"""Quantized tables: gather + dequantize of the selected rows only, and the fused StableEmbedding on them.

Formats (``FORMAT`` constexpr; bitsandbytes' storage, ``triton_embed/quantized/formats.py`` defines them):

- ``INT8_ROWS`` (0): ``codes`` (V, D) int8, strides (stride_cv, stride_cd); ``scales`` (V,) float32, contiguous,
  one absmax per row. Value: ``code * (absmax / 127)`` in float32.
- ``BLOCKWISE_4BIT`` (1): the table flattened row-major, element ``e = row * D + col``; ``codes`` (⌈V·D/2⌉,)
  uint8, contiguous, element e in byte ``e // 2``, in its high nibble when e is even (a row of odd D may
  start mid-byte); ``scales`` (⌈V·D/B⌉,) float32, contiguous, one absmax per block of B = 2**block_shift
  consecutive elements (blocks cross rows when D % B != 0); ``codebook`` (16,) float32, contiguous.
  Value: ``codebook[nibble] * absmax[e // B]`` in float32.

Values are then rounded to the table's dtype (the output's), as bitsandbytes' dequantization is. Only the
codes and scales of the rows that the ids name are read. Ids outside [0, V) read nothing (zero rows) and
are noted in the error record, as in ``gather.py``.
"""
import triton
import triton.language as tl

from .errors import _record_bad_ids, _valid_ids
from .gather import OP_GATHER
from .layer_norm_backward import _layer_norm_backward_source
from .layer_norm_forward import _layer_norm_forward_source
from .layer_norm_rows import _backward_program, _finish_backward_program, _token_rows
from .numerics import _exact_float, _round
from .stable_embedding import OP_STABLE_EMBEDDING

INT8_ROWS = tl.constexpr(0)
BLOCKWISE_4BIT = tl.constexpr(1)


@triton.jit
def _dequantize(codes_ptr, scales_ptr, codebook_ptr, rows, row_valid, cols, mask, D, block_shift, stride_cv, stride_cd,
                FORMAT: tl.constexpr):
    """float32 values of the [rows, cols] tile (``rows`` int64 table rows, valid where ``row_valid``), 0 where
    not ``mask``: the codes of those elements and their scales, nothing else."""
    if FORMAT == INT8_ROWS:
        codes = tl.load(codes_ptr + rows[:, None] * stride_cv + cols[None, :].to(tl.int64) * stride_cd, mask=mask,
                        other=0)
        absmax = tl.load(scales_ptr + rows, mask=row_valid, other=0)
        # IEEE division, as PyTorch divides (Triton's `/` on float32 is an approximate one).
        values = codes.to(tl.float32) * tl.math.div_rn(absmax, 127.0)[:, None]
    else:
        # Element e = row * D + col, split as (row's first element, in int64) + (col, in int32): its byte is
        # first // 2 + (first % 2 + col) // 2, its block first // B + (first % B + col) // B.
        first = rows * D
        in_byte = (first & 1).to(tl.int32)[:, None] + cols[None, :]
        in_block = (first & ((1 << block_shift) - 1)).to(tl.int32)[:, None] + cols[None, :]
        byte = tl.load(codes_ptr + (first >> 1)[:, None] + (in_byte >> 1), mask=mask, other=0)
        nibble = tl.where((in_byte & 1) == 0, byte >> 4, byte & 15).to(tl.int32)
        absmax = tl.load(scales_ptr + (first >> block_shift)[:, None] + (in_block >> block_shift), mask=mask, other=0)
        values = tl.load(codebook_ptr + nibble) * absmax
    return tl.where(mask, values, 0.0)


@triton.jit
def _load_dequantized(src, cols, mask, CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr, FORMAT: tl.constexpr):
    """The dequantized tile of a quantized source ``(codes_ptr, scales_ptr, codebook_ptr, rows, row_valid, D,
    block_shift, stride_cv, stride_cd, table_ptr)``, rounded to the table's dtype (``table_ptr``'s element
    type), then to CAST_DTYPE, in ACC_DTYPE."""
    codes_ptr, scales_ptr, codebook_ptr, rows, row_valid, D, block_shift, stride_cv, stride_cd, table_ptr = src
    values = _dequantize(codes_ptr, scales_ptr, codebook_ptr, rows, row_valid, cols, mask, D, block_shift,
                         stride_cv, stride_cd, FORMAT)
    return _round(_round(values, table_ptr.dtype.element_ty), CAST_DTYPE).to(ACC_DTYPE)


@triton.jit
def _load_int8_rows(src, cols, mask, CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """The LayerNorm helpers' row loader (``layer_norm._load_rows``) of an int8 source (``_load_dequantized``)."""
    return _load_dequantized(src, cols, mask, CAST_DTYPE, ACC_DTYPE, INT8_ROWS)


@triton.jit
def _load_4bit_rows(src, cols, mask, CAST_DTYPE: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """The LayerNorm helpers' row loader of a 4-bit source (``_load_dequantized``)."""
    return _load_dequantized(src, cols, mask, CAST_DTYPE, ACC_DTYPE, BLOCKWISE_4BIT)


@triton.jit
def quantized_gather_kernel(
    codes_ptr,  # int8 (V, D), strides (stride_cv, stride_cd); or uint8 (⌈V·D/2⌉,) packed nibbles (FORMAT 1)
    scales_ptr,  # (V,) float32 row absmax; or (⌈V·D/B⌉,) float32 block absmax (FORMAT 1); contiguous
    codebook_ptr,  # (16,) float32 code values (FORMAT 1; any pointer for FORMAT 0), contiguous
    indices_ptr,  # (N,) int32/int64 row ids, stride stride_i
    out_ptr,  # (N, D) output in the table's dtype; strides (stride_on, stride_od)
    err_ptr,  # (4,) int64 error record: an id outside [0, V) is noted there
    N,  # tokens (runtime: never recompile per batch)
    D,  # embedding dim
    V,  # rows in the table
    block_shift,  # log2 of the 4-bit block size (FORMAT 1)
    stride_cv,
    stride_cd,
    stride_i,
    stride_on,
    stride_od,
    FORMAT: tl.constexpr,  # INT8_ROWS or BLOCKWISE_4BIT
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[t, :] = dequantized table row indices[t]: a BLOCK_T x BLOCK_D tile per program."""
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    offsets = tl.arange(0, BLOCK_T)
    tokens = pid_t.to(tl.int64) * BLOCK_T + offsets
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    token_mask = tokens < N
    col_mask = cols < D
    rows = tl.load(indices_ptr + tokens.to(tl.int64) * stride_i, mask=token_mask, other=0).to(tl.int64)
    valid = _valid_ids(rows, token_mask, V)
    if pid_d == 0:
        _record_bad_ids(err_ptr, rows, offsets, token_mask, valid, V, OP_GATHER)
    values = _dequantize(codes_ptr, scales_ptr, codebook_ptr, rows, valid, cols, valid[:, None] & col_mask[None, :],
                         D, block_shift, stride_cv, stride_cd, FORMAT)
    tl.store(
        out_ptr + tokens[:, None].to(tl.int64) * stride_on + cols[None, :].to(tl.int64) * stride_od,
        _round(values, out_ptr.dtype.element_ty),
        mask=token_mask[:, None] & col_mask[None, :],
    )


@triton.jit(do_not_specialize=["eps"])
def quantized_stable_fwd_kernel(
    codes_ptr,  # as in quantized_gather_kernel
    scales_ptr,  # as in quantized_gather_kernel
    codebook_ptr,  # as in quantized_gather_kernel
    indices_ptr,  # (N,) int32/int64 row ids; stride stride_i
    gamma_ptr,  # (D,) LayerNorm weight, any float dtype; stride stride_g (read only when HAS_WEIGHT)
    beta_ptr,  # (D,) LayerNorm bias, any float dtype; stride stride_b (read only when HAS_BIAS)
    out_ptr,  # (N, D) output in the table's dtype; strides (stride_on, stride_od)
    err_ptr,  # (4,) int64 error record
    mean_ptr,  # (N,) ACC_DTYPE, contiguous: per-token mean (saved for backward)
    rstd_ptr,  # (N,) ACC_DTYPE, contiguous: per-token 1 / sqrt(var + eps) (saved for backward)
    N,
    D,
    V,
    block_shift,
    eps,  # int64 bits of the float64 epsilon (see numerics.py)
    stride_cv,
    stride_cd,
    stride_i,
    stride_g,
    stride_b,
    stride_on,
    stride_od,
    FORMAT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CAST_DTYPE: tl.constexpr,  # torch.get_default_dtype() at the call
    ACC_DTYPE: tl.constexpr,  # float32 (float64 when CAST_DTYPE is float64)
    SINGLE_BLOCK: tl.constexpr,  # D <= BLOCK_D: each row is dequantized once
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[t] = LayerNorm(dequantized row indices[t] as CAST_DTYPE) as the table's dtype: gather, dequantize,
    cast, LayerNorm and cast in one pass over BLOCK_T tokens per program (``stable_embedding.py``'s math)."""
    offsets = tl.arange(0, BLOCK_T)
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + offsets
    token_mask = tokens < N
    tokens64 = tokens.to(tl.int64)
    rows = tl.load(indices_ptr + tokens64 * stride_i, mask=token_mask, other=0).to(tl.int64)
    valid = _valid_ids(rows, token_mask, V)
    _record_bad_ids(err_ptr, rows, offsets, token_mask, valid, V, OP_STABLE_EMBEDDING)
    LOAD: tl.constexpr = _load_int8_rows if FORMAT == INT8_ROWS else _load_4bit_rows
    src = (codes_ptr, scales_ptr, codebook_ptr, rows, valid, D, block_shift, stride_cv, stride_cd, out_ptr)
    pivot = tl.reshape(LOAD(src, tl.zeros([1], dtype=tl.int32), valid[:, None], CAST_DTYPE, ACC_DTYPE), [BLOCK_T])
    _layer_norm_forward_source(
        LOAD, src, pivot, valid,
        gamma_ptr, stride_g, beta_ptr, stride_b,
        out_ptr, tokens64 * stride_on, stride_od, token_mask,
        mean_ptr, rstd_ptr, tokens64,
        D, _exact_float(eps, ACC_DTYPE), HAS_WEIGHT, HAS_BIAS, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D,
    )


@triton.jit
def quantized_stable_bwd_kernel(
    codes_ptr,  # as in quantized_gather_kernel (re-dequantized: nothing N x D is kept from the forward)
    scales_ptr,  # as in quantized_gather_kernel
    codebook_ptr,  # as in quantized_gather_kernel
    indices_ptr,  # (N,) int32/int64 row ids; stride stride_i
    grad_ptr,  # (N, D) output gradient in the table's dtype; strides (stride_gn, stride_gd)
    gamma_ptr,  # (D,) LayerNorm weight; stride stride_g (read only when HAS_WEIGHT)
    mean_ptr,  # (N,) ACC_DTYPE forward means, contiguous
    rstd_ptr,  # (N,) ACC_DTYPE forward rstds, contiguous
    partial_w_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = program p's Σ dy * xhat
    partial_b_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = program p's Σ dy
    N,
    D,
    V,
    block_shift,
    rows_per_program,  # runtime multiple of BLOCK_T: program p owns tokens [p * rows_per_program, ...)
    stride_cv,
    stride_cd,
    stride_i,
    stride_gn,
    stride_gd,
    stride_g,
    FORMAT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    CAST_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The frozen table's backward: dγ/dβ partials only (the LayerNorm backward's DX_NONE mode) from the
    re-dequantized rows; ``layer_norm_param_grad_kernel`` finishes them. Every token adds to dγ/dβ, padding
    ones too. BLOCK_T is fixed by D: the sums do not depend on the config."""
    LOAD: tl.constexpr = _load_int8_rows if FORMAT == INT8_ROWS else _load_4bit_rows
    pid, row_start, row_end, pw, pb = _backward_program(partial_w_ptr, partial_b_ptr, N, rows_per_program, D,
                                                        ACC_DTYPE, SINGLE_BLOCK, BLOCK_D)
    for r0 in range(row_start, row_end, BLOCK_T):
        tokens64, token_mask, rows, valid = _token_rows(indices_ptr, r0, row_end, stride_i, V, BLOCK_T)
        src = (codes_ptr, scales_ptr, codebook_ptr, rows, valid, D, block_shift, stride_cv, stride_cd, grad_ptr)
        tile_w, tile_b = _layer_norm_backward_source(
            LOAD, src, valid,
            grad_ptr, tokens64 * stride_gn, stride_gd, token_mask,
            gamma_ptr, stride_g,
            mean_ptr, rstd_ptr, tokens64,
            partial_w_ptr, tokens64 * 0, 1, token_mask,
            partial_w_ptr, partial_b_ptr, pid,
            D, 1, HAS_WEIGHT, CAST_DTYPE, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D,
        )
        pw += tile_w
        pb += tile_b
    _finish_backward_program(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, SINGLE_BLOCK, BLOCK_D)
