"""Fused StableEmbedding: lookup + cast + LayerNorm + cast in one forward kernel, and a backward that
re-gathers the rows (nothing N x D is kept from the forward), runs the LayerNorm backward and writes the
input gradient rounded as bitsandbytes' casts do; ``embedding_backward.py`` sums those rows into the
weight gradient, written once.

bitsandbytes' graph: ``weight -> F.embedding -> .to(default dtype) -> LayerNorm -> .to(weight dtype)``.
Forward: rows are rounded to CAST_DTYPE (the default dtype), normalised in ACC_DTYPE with the LayerNorm
parameters, rounded to CAST_DTYPE, then stored in the weight's dtype. Backward: the output gradient is
rounded to CAST_DTYPE, the LayerNorm input gradient is rounded to CAST_DTYPE then to the weight's dtype
(the backward of the first cast), and only then summed into the table's gradient.
"""
import triton
import triton.language as tl

from .errors import _record_bad_ids, _valid_ids
from .layer_norm_backward import _layer_norm_backward_rows
from .layer_norm_forward import _layer_norm_forward_rows
from .layer_norm_rows import _backward_program, _finish_backward_program, _token_rows
from .numerics import _exact_float

#: Op code of the fused forward in the error record.
OP_STABLE_EMBEDDING = tl.constexpr(3)


@triton.jit(do_not_specialize=["eps"])
def stable_embedding_fwd_kernel(
    weight_ptr,  # (V, D) table, any float dtype; strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32/int64 row ids; stride stride_i
    gamma_ptr,  # (D,) LayerNorm weight, any float dtype; stride stride_g (read only when HAS_WEIGHT)
    beta_ptr,  # (D,) LayerNorm bias, any float dtype; stride stride_b (read only when HAS_BIAS)
    out_ptr,  # (N, D) output, weight's dtype; strides (stride_on, stride_od)
    err_ptr,  # (4,) int64 error record: an id outside [0, V) is noted there
    mean_ptr,  # (N,) ACC_DTYPE, contiguous: per-token mean (saved for backward)
    rstd_ptr,  # (N,) ACC_DTYPE, contiguous: per-token 1 / sqrt(var + eps) (saved for backward)
    N,  # tokens (runtime: never recompile per batch)
    D,  # embedding dim
    V,  # rows in the table; ids outside [0, V) read nothing (a zero row)
    eps,  # int64 bits of the float64 epsilon (see numerics.py)
    stride_wv,
    stride_wd,
    stride_i,
    stride_g,
    stride_b,
    stride_on,
    stride_od,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CAST_DTYPE: tl.constexpr,  # torch.get_default_dtype() at the call: the dtype bitsandbytes casts to
    ACC_DTYPE: tl.constexpr,  # float32 (float64 when CAST_DTYPE is float64)
    SINGLE_BLOCK: tl.constexpr,  # D <= BLOCK_D: each row is loaded once
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[t] = LayerNorm(weight[indices[t]] as CAST_DTYPE) as weight's dtype; BLOCK_T tokens per program."""
    offsets = tl.arange(0, BLOCK_T)
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + offsets
    token_mask = tokens < N
    tokens64 = tokens.to(tl.int64)
    rows = tl.load(indices_ptr + tokens64 * stride_i, mask=token_mask, other=0).to(tl.int64)
    valid = _valid_ids(rows, token_mask, V)
    _record_bad_ids(err_ptr, rows, offsets, token_mask, valid, V, OP_STABLE_EMBEDDING)
    _layer_norm_forward_rows(
        weight_ptr, rows * stride_wv, stride_wd, valid,
        gamma_ptr, stride_g, beta_ptr, stride_b,
        out_ptr, tokens64 * stride_on, stride_od, token_mask,
        mean_ptr, rstd_ptr, tokens64,
        D, _exact_float(eps, ACC_DTYPE), HAS_WEIGHT, HAS_BIAS, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D,
    )


@triton.jit
def stable_embedding_bwd_kernel(
    weight_ptr,  # (V, D) table (re-gathered); strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32/int64 row ids; stride stride_i
    grad_ptr,  # (N, D) output gradient, weight's dtype; strides (stride_gn, stride_gd)
    gamma_ptr,  # (D,) LayerNorm weight; stride stride_g (read only when HAS_WEIGHT)
    mean_ptr,  # (N,) ACC_DTYPE forward means, contiguous
    rstd_ptr,  # (N,) ACC_DTYPE forward rstds, contiguous
    dst_ptr,  # (N, D) d(emb) rows, weight's dtype (MODE 0); strides (stride_dn, stride_dd)
    partial_w_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = program p's Σ dy * xhat
    partial_b_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = program p's Σ dy
    N,
    D,
    V,
    padding_idx,  # with ALL_ROWS off, the padding token's d(emb) row is not written; -1 for none
    rows_per_program,  # runtime multiple of BLOCK_T: program p owns tokens [p * rows_per_program, ...)
    stride_wv,
    stride_wd,
    stride_i,
    stride_gn,
    stride_gd,
    stride_g,
    stride_dn,
    stride_dd,
    MODE: tl.constexpr,  # 0: write d(emb) rows; 1: only the dγ/dβ partials (a frozen table)
    ALL_ROWS: tl.constexpr,  # write every token's row (sparse gradients), not only those of rows in [0, V)
    #                          other than the padding row (all the dense gradient reads)
    HAS_WEIGHT: tl.constexpr,
    CAST_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Re-gather each token's row, run the LayerNorm backward and write d(emb), rounded to the default dtype
    then to the weight's dtype as bitsandbytes' casts do; the weight gradient is then summed from these rows
    by ``embedding_backward.py``. Padding tokens add to the dγ/dβ partials but never to the weight
    gradient. BLOCK_T is fixed by D: the partials' sums do not depend on the config."""
    pid, row_start, row_end, pw, pb = _backward_program(partial_w_ptr, partial_b_ptr, N, rows_per_program, D,
                                                        ACC_DTYPE, SINGLE_BLOCK, BLOCK_D)
    for r0 in range(row_start, row_end, BLOCK_T):
        tokens64, token_mask, rows, valid = _token_rows(indices_ptr, r0, row_end, stride_i, V, BLOCK_T)
        if ALL_ROWS:
            dst_valid = token_mask
        else:
            dst_valid = valid & (rows != padding_idx)
        tile_w, tile_b = _layer_norm_backward_rows(
            weight_ptr, rows * stride_wv, stride_wd, valid,
            grad_ptr, tokens64 * stride_gn, stride_gd, token_mask,
            gamma_ptr, stride_g,
            mean_ptr, rstd_ptr, tokens64,
            dst_ptr, tokens64 * stride_dn, stride_dd, dst_valid,
            partial_w_ptr, partial_b_ptr, pid,
            D, MODE, HAS_WEIGHT, CAST_DTYPE, weight_ptr.dtype.element_ty, ACC_DTYPE,
            SINGLE_BLOCK, BLOCK_T, BLOCK_D,
        )
        pw += tile_w
        pb += tile_b
    _finish_backward_program(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, SINGLE_BLOCK, BLOCK_D)
