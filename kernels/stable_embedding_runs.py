"""StableEmbedding's dense backward when nothing is rounded between the LayerNorm backward and the sum into
the table's gradient (the table in the default dtype: float32, or float64 under a float64 default): one
LayerNorm backward per distinct id, on the sum of its tokens' output gradients.

Why that is exact: for a fixed row, LayerNorm's input gradient
``dx = rstd * (γ·dy - mean(γ·dy) - x̂ * mean(γ·dy * x̂))`` is linear in dy, and every token of one id has the
same row, hence the same x̂ and rstd. So id v's gradient row, Σ dx over its tokens, is the LayerNorm
backward of ``S_v = Σ dy`` over them, and dγ = Σ_v S_v * x̂_v, dβ = Σ_v S_v. The backward reads each id's
row once and each token's dy once, and writes the gradient once: no N x D d(emb) rows are written and read
back. (With a bf16/fp16 table bitsandbytes' cast rounds each token's dx before the sum, which is not linear:
``stable_embedding.py``'s per-token path serves those tables.)

After a stable sort of the ids and ``embedding_bwd_pieces_kernel`` with EVERY_RUN (S of runs that cross
chunks of SEG sorted positions, in per-chunk pieces), one launch of ``stable_embedding_runs_kernel``:

- program c < C takes the runs that start in chunk c: S in the fixed order of
  ``embedding_backward.py``, the row's LayerNorm backward, the row written once (÷ the count with
  SCALE_BY_FREQ; nothing for the padding row or an id outside [0, V), whose row reads as zeros), and the
  chunk's dγ/dβ partial row, its runs in sorted order;
- programs from C on write zeros into every row that no usable id names (the padding row included),
  BLOCK_V rows each (``embedding_backward._gradient_rows``). The latency-bound run programs come first, so
  that the GPU starts them early and the bandwidth-bound zeroing hides them.

``layer_norm_param_grad_kernel`` then sums the partial rows in chunk order. Every sum's order is a function
of the ids alone (the launcher also turns off FMA contraction): the same bits for every config.
"""
import triton
import triton.language as tl

from .embedding_backward import SEG, _gradient_rows, _run_sum, _search
from .layer_norm_rows import _inverse, _load_vector, _store_partial_row
from .numerics import _div, _round
from .reductions import _row_sum


@triton.jit
def _runs_of_chunk(
    weight_ptr, grad_ptr, sorted_ids_ptr, order_ptr, head_ptr, tail_ptr, gamma_ptr, mean_ptr, rstd_ptr,
    out_ptr, partial_w_ptr, partial_b_ptr, chunk, N, D, V, padding_idx,
    stride_wv, stride_wd, stride_gn, stride_gd, stride_g, stride_ov, stride_od,
    SCALE_BY_FREQ: tl.constexpr, HAS_WEIGHT: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The runs that start in chunk ``chunk``: their gradient rows and the chunk's dγ/dβ partial row."""
    start = chunk * SEG
    end = tl.minimum(start + SEG, N)
    positions = start + tl.arange(0, SEG)
    in_chunk = positions < end
    ids = tl.load(sorted_ids_ptr + positions, mask=in_chunk, other=0).to(tl.int64)
    first = tl.load(sorted_ids_ptr + start).to(tl.int64)
    before = tl.load(sorted_ids_ptr + tl.maximum(start - 1, 0)).to(tl.int64)
    after = tl.load(sorted_ids_ptr + tl.minimum(end, N - 1)).to(tl.int64)
    # A run that enters from the previous chunk belongs to the chunk where it starts.
    p = start
    if (start > 0) & (before == first):
        p = start + tl.sum(((ids == first) & in_chunk).to(tl.int32), axis=0)

    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    cols64 = cols.to(tl.int64)
    if HAS_WEIGHT:
        gamma = _load_vector(gamma_ptr, cols, stride_g, col_mask, ACC_DTYPE)
    inv_d = _inverse(D, ACC_DTYPE)
    pw = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    pb = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    while p < end:
        v = tl.load(sorted_ids_ptr + p).to(tl.int64)
        run_end = start + tl.sum(((ids <= v) & in_chunk).to(tl.int32), axis=0)
        crosses = (run_end == end) & (end < N) & (after == v)
        if crosses:
            run_end = _search(sorted_ids_ptr, N, v, True)
        s = _run_sum(grad_ptr, order_ptr, head_ptr, tail_ptr, p, run_end, crosses, cols, col_mask, D,
                     stride_gn, stride_gd, ACC_DTYPE)
        # The statistics of the run's first token are every token's: they normalised the same row.
        token = tl.load(order_ptr + p)
        mean = tl.load(mean_ptr + token).to(ACC_DTYPE)
        rstd = tl.load(rstd_ptr + token).to(ACC_DTYPE)
        valid = (v >= 0) & (v < V)
        row = cols64 * 0 + v  # the mask must be a vector (a scalar-and-vector mask fails in the interpreter)
        x = tl.load(weight_ptr + v * stride_wv + cols64 * stride_wd, mask=col_mask & (row >= 0) & (row < V),
                    other=0)
        xhat = tl.where(col_mask, (x.to(ACC_DTYPE) - mean) * rstd, 0.0)
        if HAS_WEIGHT:
            ws = s * gamma
        else:
            ws = s
        c1 = tl.sum(_row_sum(tl.reshape(xhat * ws, [1, BLOCK_D])), axis=0) * inv_d
        c2 = tl.sum(_row_sum(tl.reshape(ws, [1, BLOCK_D])), axis=0) * inv_d
        if valid & (v != padding_idx):
            dx = (ws - (xhat * c1 + c2)) * rstd
            if SCALE_BY_FREQ:
                dx = _div(dx, tl.cast(run_end - p, ACC_DTYPE), ACC_DTYPE)
            tl.store(out_ptr + v * stride_ov + cols64 * stride_od, _round(dx, out_ptr.dtype.element_ty),
                     mask=col_mask)
        pw += s * xhat
        pb += s
        p = run_end
    _store_partial_row(partial_w_ptr, partial_b_ptr, chunk, pw, pb, D, BLOCK_D)


@triton.jit
def stable_embedding_runs_kernel(
    weight_ptr,  # (V, D) table, the default dtype; strides (stride_wv, stride_wd)
    grad_ptr,  # (N, D) output gradient, the table's dtype; strides (stride_gn, stride_gd)
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    order_ptr,  # (N,) int64 token of each sorted position, contiguous
    head_ptr,  # (C, D) ACC_DTYPE pieces from embedding_bwd_pieces_kernel (EVERY_RUN), contiguous
    tail_ptr,  # (C, D) ACC_DTYPE pieces from embedding_bwd_pieces_kernel (EVERY_RUN), contiguous
    gamma_ptr,  # (D,) LayerNorm weight; stride stride_g (read only when HAS_WEIGHT)
    mean_ptr,  # (N,) ACC_DTYPE forward means, contiguous
    rstd_ptr,  # (N,) ACC_DTYPE forward rstds, contiguous
    out_ptr,  # (V, D) weight gradient, the table's dtype, written whole; strides (stride_ov, stride_od)
    partial_w_ptr,  # (C, D) ACC_DTYPE, contiguous: row c = Σ S * x̂ over the runs starting in chunk c
    partial_b_ptr,  # (C, D) ACC_DTYPE, contiguous: row c = Σ S over them
    N,  # tokens
    D,  # embedding dim, at most BLOCK_D
    V,  # rows in the table
    padding_idx,  # -1 for none
    run_programs,  # C: program c < C takes chunk c; program C + i zeroes rows [i * BLOCK_V, (i + 1) * BLOCK_V)
    stride_wv,
    stride_wd,
    stride_gn,
    stride_gd,
    stride_g,
    stride_ov,
    stride_od,
    SCALE_BY_FREQ: tl.constexpr,  # divide each row by its id's count in the batch
    HAS_WEIGHT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,  # float32 (float64 for float64 tables)
    BLOCK_V: tl.constexpr,  # rows per zeroing program
    ZERO_BLOCK_D: tl.constexpr,  # columns per store of the zeroing programs
    BLOCK_D: tl.constexpr,  # a whole row: the next power of two of D
):
    """Every row of the weight gradient, written once: the rows of the ids that occur by the first
    ``run_programs`` programs (one chunk of sorted positions each, with dγ/dβ partials), zeros by the others."""
    pid = tl.program_id(0)
    if pid < run_programs:
        _runs_of_chunk(weight_ptr, grad_ptr, sorted_ids_ptr, order_ptr, head_ptr, tail_ptr, gamma_ptr, mean_ptr,
                       rstd_ptr, out_ptr, partial_w_ptr, partial_b_ptr, pid.to(tl.int64), N, D, V, padding_idx,
                       stride_wv, stride_wd, stride_gn, stride_gd, stride_g, stride_ov, stride_od,
                       SCALE_BY_FREQ, HAS_WEIGHT, ACC_DTYPE, BLOCK_D)
    else:
        _gradient_rows(grad_ptr, sorted_ids_ptr, order_ptr, head_ptr, tail_ptr, out_ptr, N, D, V, padding_idx,
                       tl.cast(pid - run_programs, tl.int64) * BLOCK_V, stride_gn, stride_gd, stride_ov, stride_od,
                       False, ACC_DTYPE, False, BLOCK_V, ZERO_BLOCK_D)
