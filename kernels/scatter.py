"""Dense embedding backward: scatter-add (atomic) and sorted segment reduction (deterministic)."""
import triton
import triton.language as tl


@triton.jit
def scatter_add_rows_kernel(
    grad_ptr,  # (N, D) output gradient, any float dtype; strides (stride_gn, stride_gd)
    indices_ptr,  # (N,) int32/int64 row ids, contiguous
    counts_ptr,  # (V,) int64 occurrences per id (read only when SCALE_BY_FREQ)
    acc_ptr,  # (V, D) contiguous accumulator, float32 (float64 for float64 weights), zero-filled
    N,
    D,
    V,
    padding_idx,  # row whose gradient stays zero; -1 for none
    stride_gn,
    stride_gd,
    SCALE_BY_FREQ: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """acc[indices[t], :] += grad[t, :] (/ counts[indices[t]]) with atomics: fast, not bitwise repeatable."""
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    tokens = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    token_mask = tokens < N
    col_mask = cols < D
    rows = tl.load(indices_ptr + tokens, mask=token_mask, other=0).to(tl.int64)
    valid = token_mask & (rows >= 0) & (rows < V) & (rows != padding_idx)
    tile_mask = valid[:, None] & col_mask[None, :]
    grad = tl.load(
        grad_ptr + tokens[:, None].to(tl.int64) * stride_gn + cols[None, :].to(tl.int64) * stride_gd,
        mask=tile_mask,
        other=0,
    ).to(acc_ptr.dtype.element_ty)
    if SCALE_BY_FREQ:
        counts = tl.load(counts_ptr + rows, mask=valid, other=1).to(acc_ptr.dtype.element_ty)
        grad = grad / counts[:, None]
    tl.atomic_add(acc_ptr + rows[:, None] * D + cols[None, :], grad, mask=tile_mask)


@triton.jit
def _finish_run(
    acc, value, run_start, run_end, chunk, chunk_start, chunk_end, prev_value, next_value,
    out_ptr, stride_ov, stride_od, head_ptr, tail_ptr, counts_ptr, cols, col_mask, D,
    padding_idx, SCALE_BY_FREQ: tl.constexpr,
):
    """Write the sum of one run of equal sorted ids: final row, or a partial for the second pass."""
    continues_from_before = (run_start == chunk_start) & (prev_value == value)
    spills_over = (run_end == chunk_end) & (next_value == value)
    partial_offsets = chunk.to(tl.int64) * D + cols
    if value != padding_idx:
        if continues_from_before:
            tl.store(head_ptr + partial_offsets, acc, mask=col_mask)
        elif spills_over:
            tl.store(tail_ptr + partial_offsets, acc, mask=col_mask)
        else:
            if SCALE_BY_FREQ:
                acc = acc / tl.load(counts_ptr + value).to(acc.dtype)
            tl.store(
                out_ptr + value.to(tl.int64) * stride_ov + cols.to(tl.int64) * stride_od,
                acc.to(out_ptr.dtype.element_ty),
                mask=col_mask,
            )


@triton.jit
def segment_sum_kernel(
    grad_ptr,  # (N, D) output gradient; strides (stride_gn, stride_gd)
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    order_ptr,  # (N,) int64 token position of each sorted id, contiguous
    counts_ptr,  # (V,) int64 occurrences per id (read only when SCALE_BY_FREQ)
    out_ptr,  # (V, D) weight gradient, weight's dtype, zero-filled; strides (stride_ov, stride_od)
    head_ptr,  # (num_chunks, D) float scratch: partial sum of a run continued from the previous chunk
    tail_ptr,  # (num_chunks, D) float scratch: partial sum of a run that spills into the next chunk
    N,
    D,
    padding_idx,
    stride_gn,
    stride_gd,
    stride_ov,
    stride_od,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SCALE_BY_FREQ: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """First pass: program (chunk, col block) sums each run of equal ids inside its CHUNK sorted tokens,
    in sorted order. Runs that lie wholly inside the chunk are written to ``out``; runs cut by a chunk
    boundary leave partials that ``segment_sum_carry_kernel`` adds in a fixed order."""
    chunk = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    chunk_start = chunk * CHUNK
    chunk_end = tl.minimum(chunk_start + CHUNK, N)
    prev_value = tl.load(sorted_ids_ptr + tl.maximum(chunk_start - 1, 0)).to(tl.int64)
    prev_value = tl.where(chunk_start > 0, prev_value, -2)
    next_value = tl.load(sorted_ids_ptr + tl.minimum(chunk_end, N - 1)).to(tl.int64)
    next_value = tl.where(chunk_end < N, next_value, -2)
    value = tl.load(sorted_ids_ptr + chunk_start).to(tl.int64)
    run_start = chunk_start
    acc = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    for i in range(chunk_start, chunk_end):
        value_i = tl.load(sorted_ids_ptr + i).to(tl.int64)
        if value_i != value:
            _finish_run(acc, value, run_start, i, chunk, chunk_start, chunk_end, prev_value, next_value,
                        out_ptr, stride_ov, stride_od, head_ptr, tail_ptr, counts_ptr, cols, col_mask, D,
                        padding_idx, SCALE_BY_FREQ)
            acc = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
            value = value_i
            run_start = i
        token = tl.load(order_ptr + i).to(tl.int64)
        # Padding tokens read nothing. (The id is broadcast to a vector first: the interpreter rejects
        # a scalar-and-vector mask.)
        not_padding = (tl.zeros_like(cols) + value_i) != padding_idx
        row = tl.load(grad_ptr + token * stride_gn + cols.to(tl.int64) * stride_gd,
                      mask=col_mask & not_padding, other=0)
        acc += row.to(ACC_DTYPE)
    _finish_run(acc, value, run_start, chunk_end, chunk, chunk_start, chunk_end, prev_value, next_value,
                out_ptr, stride_ov, stride_od, head_ptr, tail_ptr, counts_ptr, cols, col_mask, D,
                padding_idx, SCALE_BY_FREQ)


@triton.jit
def segment_sum_carry_kernel(
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    counts_ptr,  # (V,) int64 occurrences per id (read only when SCALE_BY_FREQ)
    out_ptr,  # (V, D) weight gradient; strides (stride_ov, stride_od)
    head_ptr,  # (num_chunks, D) partials written by segment_sum_kernel
    tail_ptr,  # (num_chunks, D) partials written by segment_sum_kernel
    N,
    D,
    padding_idx,
    stride_ov,
    stride_od,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SCALE_BY_FREQ: tl.constexpr,
):
    """Second pass: the chunk where a boundary-crossing run starts adds the partials of the chunks it
    spans, left to right, and writes the row once. Fixed order, one writer per row: bitwise repeatable."""
    chunk = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    chunk_start = chunk * CHUNK
    chunk_end = tl.minimum(chunk_start + CHUNK, N)
    last_value = tl.load(sorted_ids_ptr + chunk_end - 1).to(tl.int64)
    first_value = tl.load(sorted_ids_ptr + chunk_start).to(tl.int64)
    prev_value = tl.load(sorted_ids_ptr + tl.maximum(chunk_start - 1, 0)).to(tl.int64)
    prev_value = tl.where(chunk_start > 0, prev_value, -2)
    next_value = tl.load(sorted_ids_ptr + tl.minimum(chunk_end, N - 1)).to(tl.int64)
    next_value = tl.where(chunk_end < N, next_value, -2)
    started_before = (first_value == last_value) & (prev_value == last_value)
    owns_spilling_run = (next_value == last_value) & (started_before == 0) & (last_value != padding_idx)
    if owns_spilling_run:
        acc = tl.load(tail_ptr + chunk.to(tl.int64) * D + cols, mask=col_mask, other=0)
        k = chunk + 1
        more = True
        while more:
            acc += tl.load(head_ptr + k.to(tl.int64) * D + cols, mask=col_mask, other=0)
            k_end = tl.minimum((k + 1) * CHUNK, N)
            after = tl.load(sorted_ids_ptr + tl.minimum(k_end, N - 1)).to(tl.int64)
            more = (k_end < N) & (after == last_value)
            k += 1
        if SCALE_BY_FREQ:
            acc = acc / tl.load(counts_ptr + last_value).to(acc.dtype)
        tl.store(
            out_ptr + last_value * stride_ov + cols.to(tl.int64) * stride_od,
            acc.to(out_ptr.dtype.element_ty),
            mask=col_mask,
        )
