"""Dense weight gradient of a lookup, written once: ``out[v] = Σ_{t: ids[t] = v} grad[t]`` for every row v
(zero where no token names v), from the stably sorted ids.

The order of every sum is fixed by the input alone, never by a tuned block size or ``num_warps``:
sorted positions fall into chunks of ``SEG`` positions; a run of equal ids is summed token by token in
sorted (= token) order within each chunk, and a run that crosses chunks adds its per-chunk pieces in chunk
order. Columns are independent, so column blocking changes nothing either. Hence bitwise repeatable
gradients for every config, across processes, without atomics.

Two launches:

1. ``embedding_bwd_pieces_kernel``, one program per chunk: the pieces of the runs that cross the chunk's
   edges (float32, or float64 for float64 gradients), so a hot id spread over many chunks is summed in
   parallel;
2. ``embedding_bwd_rows_kernel``, one program per block of table rows: every row of the gradient, written
   once in its own dtype: a run inside one chunk is summed directly (no scan), a crossing run from its
   pieces, a row no token names (or the padding row) gets zeros. Rows outside [0, V) are never visited, so
   an out-of-range id writes nothing. Extra programs of the same launch can finish dγ/dβ for
   StableEmbedding from per-program partials (``reductions._reduce_partials``).
"""
import triton
import triton.language as tl

from .numerics import _div, _round
from .reductions import _reduce_partials

#: Sorted positions per chunk. Part of the summation order, hence a constant, not a tuned parameter.
SEG = tl.constexpr(32)
#: Rows loaded ahead in a running sum (the sum stays sequential; only the loads overlap).
UNROLL = tl.constexpr(4)
#: Columns per program of the dγ/dβ programs of embedding_bwd_rows_kernel (a PARTIAL_GROUP x this tile).
PARAM_BLOCK_D = tl.constexpr(128)


@triton.jit
def _sum_positions(grad_ptr, order_ptr, lo, hi, cols, col_mask, stride_gn, stride_gd, ACC_DTYPE: tl.constexpr):
    """Σ grad[order[p], cols] for p = lo, lo + 1, ..., hi - 1, one row after the other, in ACC_DTYPE."""
    acc = tl.zeros(cols.shape, dtype=ACC_DTYPE)
    lane = cols * 0
    col_offsets = cols.to(tl.int64) * stride_gd
    for p in range(lo, hi, UNROLL):
        t0 = tl.load(order_ptr + p).to(tl.int64)
        t1 = tl.load(order_ptr + p + 1, mask=p + 1 < hi, other=0).to(tl.int64)
        t2 = tl.load(order_ptr + p + 2, mask=p + 2 < hi, other=0).to(tl.int64)
        t3 = tl.load(order_ptr + p + 3, mask=p + 3 < hi, other=0).to(tl.int64)
        r0 = tl.load(grad_ptr + t0 * stride_gn + col_offsets, mask=col_mask, other=0)
        r1 = tl.load(grad_ptr + t1 * stride_gn + col_offsets, mask=col_mask & (lane + p + 1 < hi), other=0)
        r2 = tl.load(grad_ptr + t2 * stride_gn + col_offsets, mask=col_mask & (lane + p + 2 < hi), other=0)
        r3 = tl.load(grad_ptr + t3 * stride_gn + col_offsets, mask=col_mask & (lane + p + 3 < hi), other=0)
        acc += r0.to(ACC_DTYPE)
        acc += r1.to(ACC_DTYPE)
        acc += r2.to(ACC_DTYPE)
        acc += r3.to(ACC_DTYPE)
    return acc


@triton.jit
def _usable(row, V, padding_idx):
    """Whether a run's id gets a gradient row: in [0, V) and not the padding row."""
    return (row >= 0) & (row < V) & (row != padding_idx)


@triton.jit
def embedding_bwd_pieces_kernel(
    grad_ptr,  # (N, D) output gradient (or StableEmbedding's d(emb) rows); strides (stride_gn, stride_gd)
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    order_ptr,  # (N,) int64 token of each sorted position, contiguous
    head_ptr,  # (num_chunks, D) ACC_DTYPE: piece of the run that enters chunk c from chunk c - 1
    tail_ptr,  # (num_chunks, D) ACC_DTYPE: piece of the run that starts in chunk c and leaves it
    N,
    D,
    V,
    padding_idx,  # -1 for none
    stride_gn,
    stride_gd,
    ACC_DTYPE: tl.constexpr,
    EVERY_RUN: tl.constexpr,  # pieces of every run, the padding row's and out-of-range ids' too (their sums
    #                           still reach StableEmbedding's dγ/dβ); else only of runs that get a row
    BLOCK_D: tl.constexpr,
):
    """Program c: the (at most two) pieces of runs that cross the edges of chunk c."""
    chunk = tl.program_id(0).to(tl.int64)
    start = chunk * SEG
    end = tl.minimum(start + SEG, N)
    positions = start + tl.arange(0, SEG)
    ids = tl.load(sorted_ids_ptr + positions, mask=positions < end, other=-1).to(tl.int64)
    first = tl.load(sorted_ids_ptr + start).to(tl.int64)
    last = tl.load(sorted_ids_ptr + end - 1).to(tl.int64)
    before = tl.load(sorted_ids_ptr + tl.maximum(start - 1, 0)).to(tl.int64)
    after = tl.load(sorted_ids_ptr + tl.minimum(end, N - 1)).to(tl.int64)
    enters = (start > 0) & (before == first)
    leaves = (end < N) & (after == last)
    head_end = start + tl.sum(((ids == first) & (positions < end)).to(tl.int32), axis=0)
    tail_start = end - tl.sum(((ids == last) & (positions < end)).to(tl.int32), axis=0)
    # A run that fills the chunk and goes on is the head piece already.
    do_head = enters
    do_tail = leaves & ((enters & (first == last)) == 0)
    if not EVERY_RUN:
        do_head = do_head & _usable(first, V, padding_idx)
        do_tail = do_tail & _usable(last, V, padding_idx)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        col_mask = cols < D
        partial_offsets = tl.cast(chunk, tl.int64) * D + cols
        if do_head:
            piece = _sum_positions(grad_ptr, order_ptr, start, head_end, cols, col_mask, stride_gn, stride_gd,
                                   ACC_DTYPE)
            tl.store(head_ptr + partial_offsets, piece, mask=col_mask)
        if do_tail:
            piece = _sum_positions(grad_ptr, order_ptr, tail_start, end, cols, col_mask, stride_gn, stride_gd,
                                   ACC_DTYPE)
            tl.store(tail_ptr + partial_offsets, piece, mask=col_mask)


@triton.jit
def _midpoint(lo, hi):
    """(lo + hi) // 2 for 0 <= lo <= hi without forming lo + hi (which overflows from 2**30 on in int32)."""
    return lo + (hi - lo) // 2


@triton.jit
def _search(sorted_ids_ptr, N, value, AFTER: tl.constexpr):
    """By binary search, the first sorted position whose id is >= value (> value with AFTER; N if none), as
    an int64. AFTER rather than value + 1: an id may be the largest int64. The bounds are int64 (an int64 N,
    2**31 or more, would otherwise change the loop variables' type) and the midpoint never forms lo + hi."""
    lo = tl.full([], 0, tl.int64)
    hi = lo + N
    while lo < hi:
        mid = _midpoint(lo, hi)
        current = tl.load(sorted_ids_ptr + mid).to(tl.int64)
        if AFTER:
            below = current <= value
        else:
            below = current < value
        if below:
            lo = mid + 1
        else:
            hi = mid
    return lo


@triton.jit
def _add_pieces(acc, head_ptr, c_lo, c_hi, cols, col_mask, D):
    """acc + head[c_lo] + head[c_lo + 1] + ... + head[c_hi - 1], in that order (loads overlap)."""
    lane = cols * 0
    for c in range(c_lo, c_hi, UNROLL):
        h0 = tl.load(head_ptr + tl.cast(c, tl.int64) * D + cols, mask=col_mask, other=0)
        h1 = tl.load(head_ptr + tl.cast(c + 1, tl.int64) * D + cols, mask=col_mask & (lane + c + 1 < c_hi), other=0)
        h2 = tl.load(head_ptr + tl.cast(c + 2, tl.int64) * D + cols, mask=col_mask & (lane + c + 2 < c_hi), other=0)
        h3 = tl.load(head_ptr + tl.cast(c + 3, tl.int64) * D + cols, mask=col_mask & (lane + c + 3 < c_hi), other=0)
        acc += h0
        acc += h1
        acc += h2
        acc += h3
    return acc


@triton.jit
def _run_sum(grad_ptr, order_ptr, head_ptr, tail_ptr, run_start, run_end, crosses, cols, col_mask, D,
             stride_gn, stride_gd, ACC_DTYPE: tl.constexpr):
    """Σ grad over the sorted positions [run_start, run_end) of one run, in the fixed order: token by token
    when the run stays in its chunk; else the piece in its first chunk, then the other chunks' pieces."""
    if crosses:
        first_chunk = run_start // SEG
        total = tl.load(tail_ptr + tl.cast(first_chunk, tl.int64) * D + cols, mask=col_mask, other=0)
        total = _add_pieces(total, head_ptr, first_chunk + 1, (run_end - 1) // SEG + 1, cols, col_mask, D)
    else:
        total = _sum_positions(grad_ptr, order_ptr, run_start, run_end, cols, col_mask, stride_gn, stride_gd,
                               ACC_DTYPE)
    return total


@triton.jit
def _gradient_rows(
    grad_ptr, sorted_ids_ptr, order_ptr, head_ptr, tail_ptr, out_ptr, N, D, V, padding_idx, v0,
    stride_gn, stride_gd, stride_ov, stride_od,
    SCALE_BY_FREQ: tl.constexpr, ACC_DTYPE: tl.constexpr, SUMS: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Rows [v0, v0 + BLOCK_V) of the gradient, each written once: the sum of its run, or zeros where no
    token names the row (or it is the padding row). With SUMS off only the zeros are written: a row that
    gets a sum is left to the caller (``stable_embedding_runs.py``)."""
    out_ty = out_ptr.dtype.element_ty
    p = _search(sorted_ids_ptr, N, v0, False)
    for r in range(0, BLOCK_V):
        v = v0 + r
        if v < V:
            current = tl.load(sorted_ids_ptr + tl.minimum(p, N - 1)).to(tl.int64)
            named = (p < N) & (current == v)
            run_start = p
            run_end = p
            crosses = False
            if named:
                chunk = run_start // SEG
                chunk_end = tl.minimum(chunk * SEG + SEG, N)
                crosses = (chunk_end < N) & (tl.load(sorted_ids_ptr + tl.minimum(chunk_end, N - 1)).to(tl.int64) == v)
                if crosses:
                    run_end = _search(sorted_ids_ptr, N, v, True)
                else:
                    positions = chunk * SEG + tl.arange(0, SEG)
                    ids = tl.load(sorted_ids_ptr + positions, mask=positions < chunk_end, other=-1).to(tl.int64)
                    run_end = chunk * SEG + tl.sum(((ids <= v) & (positions < chunk_end)).to(tl.int32), axis=0)
                p = run_end
            write_sum = named & (v != padding_idx)
            # With SUMS off a row that gets a sum is not stored here.
            if (write_sum == 0) | SUMS:
                for d0 in range(0, D, BLOCK_D):
                    cols = d0 + tl.arange(0, BLOCK_D)
                    col_mask = cols < D
                    total = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
                    if SUMS:
                        if write_sum:
                            total = _run_sum(grad_ptr, order_ptr, head_ptr, tail_ptr, run_start, run_end, crosses,
                                             cols, col_mask, D, stride_gn, stride_gd, ACC_DTYPE)
                            if SCALE_BY_FREQ:
                                total = _div(total, tl.cast(run_end - run_start, ACC_DTYPE), ACC_DTYPE)
                    tl.store(out_ptr + v * stride_ov + cols.to(tl.int64) * stride_od, _round(total, out_ty),
                             mask=col_mask)


@triton.jit
def embedding_bwd_rows_kernel(
    grad_ptr,  # (N, D) output gradient (or d(emb) rows); strides (stride_gn, stride_gd)
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    order_ptr,  # (N,) int64 token of each sorted position, contiguous
    head_ptr,  # (num_chunks, D) pieces from embedding_bwd_pieces_kernel
    tail_ptr,  # (num_chunks, D) pieces from embedding_bwd_pieces_kernel
    out_ptr,  # (V, D) weight gradient, the weight's dtype, written whole; strides (stride_ov, stride_od)
    partial_w_ptr,  # (P, D) dγ partials (read only when PARAM_GRADS)
    partial_b_ptr,  # (P, D) dβ partials (read only when PARAM_GRADS)
    dw_ptr,  # (D,) dγ, γ's dtype; stride stride_dw (written only when PARAM_GRADS and HAS_WEIGHT)
    db_ptr,  # (D,) dβ, β's dtype; stride stride_db (written only when PARAM_GRADS and HAS_BIAS)
    N,
    D,
    V,
    P,
    padding_idx,  # -1 for none
    row_programs,  # programs below this write BLOCK_V table rows each; the rest finish dγ/dβ,
    #                PARAM_BLOCK_D columns each
    stride_gn,
    stride_gd,
    stride_ov,
    stride_od,
    stride_dw,
    stride_db,
    SCALE_BY_FREQ: tl.constexpr,  # divide each row by its id's count in the batch
    ACC_DTYPE: tl.constexpr,
    PARAM_GRADS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program i < row_programs writes rows [i * BLOCK_V, (i + 1) * BLOCK_V) of the gradient, each once."""
    pid = tl.program_id(0)
    if pid >= row_programs:
        if PARAM_GRADS:
            _reduce_partials(partial_w_ptr, partial_b_ptr, dw_ptr, db_ptr, P, D, stride_dw, stride_db,
                            pid - row_programs, HAS_WEIGHT, HAS_BIAS, PARAM_BLOCK_D)
        return
    _gradient_rows(grad_ptr, sorted_ids_ptr, order_ptr, head_ptr, tail_ptr, out_ptr, N, D, V, padding_idx,
                   tl.cast(pid, tl.int64) * BLOCK_V, stride_gn, stride_gd, stride_ov, stride_od,
                   SCALE_BY_FREQ, ACC_DTYPE, True, BLOCK_V, BLOCK_D)
