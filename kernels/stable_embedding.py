"""Fused StableEmbedding: lookup + cast + LayerNorm + cast in one forward kernel, and a backward that
re-gathers the rows (nothing N x D is kept from the forward), runs the LayerNorm backward, rounds the
input gradient as bitsandbytes' casts do, and accumulates it into the weight gradient.

bitsandbytes' graph: ``weight -> F.embedding -> .to(default dtype) -> LayerNorm -> .to(weight dtype)``.
Forward: rows are rounded to CAST_DTYPE (the default dtype), normalised in ACC_DTYPE with the LayerNorm
parameters, rounded to CAST_DTYPE, then stored in the weight's dtype. Backward: the output gradient is
rounded to CAST_DTYPE, the LayerNorm input gradient is rounded to CAST_DTYPE then to the weight's dtype
(the backward of the first cast), and only then summed into the table's gradient.
"""
import triton
import triton.language as tl

from .layer_norm import (
    _layer_norm_backward_rows,
    _layer_norm_forward_rows,
    _reduce_partials,
    _store_partial_row,
    _zero_partial_row,
)
from .numerics import _exact_float, _round
from .scatter import segment_sum_kernel


@triton.jit(do_not_specialize=["eps"])
def stable_embedding_fwd_kernel(
    weight_ptr,  # (V, D) table, any float dtype; strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32/int64 row ids; stride stride_i
    gamma_ptr,  # (D,) LayerNorm weight, any float dtype; stride stride_g (read only when HAS_WEIGHT)
    beta_ptr,  # (D,) LayerNorm bias, any float dtype; stride stride_b (read only when HAS_BIAS)
    out_ptr,  # (N, D) output, weight's dtype; strides (stride_on, stride_od)
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
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < N
    tokens64 = tokens.to(tl.int64)
    rows = tl.load(indices_ptr + tokens64 * stride_i, mask=token_mask, other=0).to(tl.int64)
    # An id that escaped the host-side check must never become a wild pointer.
    valid = token_mask & (rows >= 0) & (rows < V)
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
    counts_ptr,  # (V,) int32, zero-filled: each token adds 1 to its id's count (only when COUNT_IDS)
    dst_ptr,  # MODE 0: (N, D) d(emb) rows, weight's dtype; MODE 1: (V, D) float32/64 accumulator,
    #           zero-filled; MODE 2: unused. Strides (stride_dn, stride_dd)
    partial_w_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = program p's Σ dy * xhat
    partial_b_ptr,  # (P, D) ACC_DTYPE, contiguous: row p = program p's Σ dy
    N,
    D,
    V,
    padding_idx,  # row whose gradient stays zero in MODE 1 (and that is not counted); -1 for none
    rows_per_program,  # runtime multiple of BLOCK_T: program p owns tokens [p * rows_per_program, ...)
    stride_wv,
    stride_wd,
    stride_i,
    stride_gn,
    stride_gd,
    stride_g,
    stride_dn,
    stride_dd,
    MODE: tl.constexpr,  # 0: write d(emb) rows; 1: atomically add them into the accumulator; 2: neither
    COUNT_IDS: tl.constexpr,  # count the ids for scale_grad_by_freq (integer atomics: exact in any order)
    HAS_WEIGHT: tl.constexpr,
    CAST_DTYPE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Re-gather each token's row, run the LayerNorm backward, round d(emb) to the weight's dtype, and
    write it (MODE 0) or scatter-add it into the float accumulator of the weight gradient (MODE 1; the
    division by the id counts, if any, comes in ``stable_grad_finish_kernel``). Padding tokens add to the
    dγ/dβ partials but never to the weight gradient."""
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    pw = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    pb = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    if not SINGLE_BLOCK:
        _zero_partial_row(partial_w_ptr, partial_b_ptr, pid, D, ACC_DTYPE, BLOCK_D)
    for r0 in range(row_start, row_end, BLOCK_T):
        tokens = r0 + tl.arange(0, BLOCK_T)
        token_mask = tokens < row_end
        tokens64 = tokens.to(tl.int64)
        rows = tl.load(indices_ptr + tokens64 * stride_i, mask=token_mask, other=0).to(tl.int64)
        valid = token_mask & (rows >= 0) & (rows < V)
        if COUNT_IDS:
            counted = valid & (rows != padding_idx)
            tl.atomic_add(counts_ptr + rows, tl.full([BLOCK_T], 1, tl.int32), mask=counted)
        if MODE == 1:
            dst_rows = rows * stride_dn
            dst_valid = valid & (rows != padding_idx)
        else:
            dst_rows = tokens64 * stride_dn
            dst_valid = token_mask
        tile_w, tile_b = _layer_norm_backward_rows(
            weight_ptr, rows * stride_wv, stride_wd, valid,
            grad_ptr, tokens64 * stride_gn, stride_gd, token_mask,
            gamma_ptr, stride_g,
            mean_ptr, rstd_ptr, tokens64,
            dst_ptr, dst_rows, stride_dd, dst_valid,
            partial_w_ptr, partial_b_ptr, pid,
            D, MODE, HAS_WEIGHT, CAST_DTYPE, weight_ptr.dtype.element_ty, ACC_DTYPE,
            SINGLE_BLOCK, BLOCK_T, BLOCK_D,
        )
        pw += tile_w
        pb += tile_b
    if SINGLE_BLOCK:
        _store_partial_row(partial_w_ptr, partial_b_ptr, pid, pw, pb, D, BLOCK_D)


@triton.jit
def stable_segment_sum_kernel(
    grad_ptr,  # (N, D) d(emb) rows, weight's dtype; strides (stride_gn, stride_gd)
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    order_ptr,  # (N,) int64 token position of each sorted id, contiguous
    counts_ptr,  # (V,) int32 occurrences per id (read only when SCALE_BY_FREQ)
    out_ptr,  # (V, D) weight gradient, weight's dtype, zero-filled; strides (stride_ov, stride_od)
    head_ptr,  # (num_chunks, D) float scratch for segment_sum_kernel
    tail_ptr,  # (num_chunks, D) float scratch for segment_sum_kernel
    partial_w_ptr,  # (P, D) dγ partials from stable_embedding_bwd_kernel, contiguous
    partial_b_ptr,  # (P, D) dβ partials, contiguous
    dw_ptr,  # (D,) dγ, gamma's dtype; stride stride_dw (written only when HAS_WEIGHT)
    db_ptr,  # (D,) dβ, beta's dtype; stride stride_db (written only when HAS_BIAS)
    N,
    D,
    P,
    num_chunks,  # programs along axis 0 below this run the segment sum; the one at num_chunks reduces dγ/dβ
    padding_idx,
    stride_gn,
    stride_gd,
    stride_ov,
    stride_od,
    stride_dw,
    stride_db,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SCALE_BY_FREQ: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The deterministic backward's second launch, two jobs in one grid: programs (chunk < num_chunks, j)
    are ``segment_sum_kernel``'s (fixed-order sums of the sorted d(emb) rows); the extra row of programs
    (num_chunks, j) finishes dγ/dβ for column block j from the partials, in a fixed order."""
    if tl.program_id(0) < num_chunks:
        segment_sum_kernel(
            grad_ptr, sorted_ids_ptr, order_ptr, counts_ptr, out_ptr, head_ptr, tail_ptr, N, D, padding_idx,
            stride_gn, stride_gd, stride_ov, stride_od, CHUNK, BLOCK_D, SCALE_BY_FREQ, ACC_DTYPE,
        )
    else:
        _reduce_partials(partial_w_ptr, partial_b_ptr, dw_ptr, db_ptr, P, D, stride_dw, stride_db,
                         tl.program_id(1), HAS_WEIGHT, HAS_BIAS, BLOCK_P, BLOCK_D)


@triton.jit
def stable_grad_finish_kernel(
    acc_ptr,  # (V, D) float32 (float64 for float64 tables) accumulated weight gradient, contiguous
    counts_ptr,  # (V,) int32 occurrences per id (read only when SCALE_BY_FREQ)
    out_ptr,  # (V, D) weight gradient, weight's dtype (acc_ptr itself for float32/64 tables);
    #           strides (stride_ov, stride_od)
    partial_w_ptr,  # (P, D) dγ partials from stable_embedding_bwd_kernel, contiguous
    partial_b_ptr,  # (P, D) dβ partials, contiguous
    dw_ptr,  # (D,) dγ, gamma's dtype; stride stride_dw (written only when HAS_WEIGHT)
    db_ptr,  # (D,) dβ, beta's dtype; stride stride_db (written only when HAS_BIAS)
    V,
    D,
    P,
    row_programs,  # programs along axis 0 below this finish BLOCK_V table rows each; the next one dγ/dβ
    stride_ov,
    stride_od,
    stride_dw,
    stride_db,
    SCALE_BY_FREQ: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """The atomic backward's second launch, two jobs in one grid: programs (i < row_programs, j) turn the
    accumulator's rows into the weight gradient (divided by the id counts when SCALE_BY_FREQ, rounded to
    the weight's dtype); the extra row of programs (row_programs, j) finishes dγ/dβ for column block j from
    the partials, in a fixed order. With a float32 table and no scaling, row_programs is 0."""
    pid = tl.program_id(0)
    if pid < row_programs:
        rows = pid * BLOCK_V + tl.arange(0, BLOCK_V)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        row_mask = rows < V
        mask = row_mask[:, None] & (cols < D)[None, :]
        grad = tl.load(acc_ptr + rows[:, None].to(tl.int64) * D + cols[None, :], mask=mask, other=0)
        if SCALE_BY_FREQ:
            counts = tl.maximum(tl.load(counts_ptr + rows, mask=row_mask, other=1), 1)
            grad = grad / counts.to(grad.dtype)[:, None]
        tl.store(
            out_ptr + rows[:, None].to(tl.int64) * stride_ov + cols[None, :].to(tl.int64) * stride_od,
            _round(grad, out_ptr.dtype.element_ty),
            mask=mask,
        )
    else:
        _reduce_partials(partial_w_ptr, partial_b_ptr, dw_ptr, db_ptr, P, D, stride_dw, stride_db,
                         tl.program_id(1), HAS_WEIGHT, HAS_BIAS, BLOCK_P, BLOCK_D)
