"""Dense embedding backward: scatter-add (atomic) and sorted segment reduction (deterministic)."""
import triton
import triton.language as tl


@triton.jit
def scatter_add_rows_kernel(
    grad_ptr,  # (N, D) output gradient, any float dtype; strides (stride_gn, stride_gd)
    indices_ptr,  # (N,) int32/int64 row ids, contiguous
    counts_ptr,  # (V,) int32 occurrences per id (read only when SCALE_BY_FREQ)
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
def _segmented_add(starts_a, sum_a, starts_b, sum_b):
    """Combine of a segmented prefix sum: a new run (starts_b) restarts the sum."""
    return starts_a | starts_b, tl.where(starts_b != 0, sum_b, sum_a + sum_b)


@triton.jit
def segment_sum_kernel(
    grad_ptr,  # (N, D) output gradient; strides (stride_gn, stride_gd)
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    order_ptr,  # (N,) int64 token position of each sorted id, contiguous
    counts_ptr,  # (V,) int32 occurrences per id (read only when SCALE_BY_FREQ)
    out_ptr,  # (V, D) weight gradient, weight's dtype, zero-filled; strides (stride_ov, stride_od)
    head_ptr,  # (num_chunks, D) float scratch: sum of a run continued from the previous chunk
    tail_ptr,  # (num_chunks, D) float scratch: sum of a run that starts here and spills into the next chunk
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
    """First pass: program (chunk, col block) loads the gradient rows of CHUNK consecutive sorted tokens as
    one tile and sums each run of equal ids with a segmented scan (a fixed combining order). A run that lies
    wholly inside the chunk is written to ``out`` once; a run cut by a chunk boundary leaves its partial in
    ``head``/``tail`` for ``segment_sum_carry_kernel``."""
    chunk = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    chunk_start = chunk * CHUNK
    chunk_end = tl.minimum(chunk_start + CHUNK, N)
    positions = chunk_start + tl.arange(0, CHUNK)
    in_chunk = positions < chunk_end
    ids = tl.load(sorted_ids_ptr + positions, mask=in_chunk, other=-2).to(tl.int64)
    prev_ids = tl.load(sorted_ids_ptr + positions - 1, mask=in_chunk & (positions > 0), other=-3).to(tl.int64)
    next_ids = tl.load(sorted_ids_ptr + positions + 1, mask=in_chunk & (positions + 1 < N), other=-3).to(tl.int64)
    first_id = tl.load(sorted_ids_ptr + chunk_start).to(tl.int64)
    before_chunk = tl.load(sorted_ids_ptr + tl.maximum(chunk_start - 1, 0)).to(tl.int64)
    before_chunk = tl.where(chunk_start > 0, before_chunk, -3)

    is_last = positions == chunk_end - 1
    starts = (positions == chunk_start) | (ids != prev_ids)
    ends = in_chunk & ((next_ids != ids) | is_last)
    keep = in_chunk & (ids != padding_idx)
    # The run began in an earlier chunk. (Scalars are broadcast to vectors first: the interpreter rejects
    # a scalar-and-vector mask.)
    continues = (ids == first_id) & ((tl.zeros_like(ids) + before_chunk) == first_id)
    spills = is_last & (next_ids == ids)  # the run goes on in the next chunk

    tokens = tl.load(order_ptr + positions, mask=in_chunk, other=0).to(tl.int64)
    tile_mask = keep[:, None] & col_mask[None, :]
    rows = tl.load(grad_ptr + tokens[:, None] * stride_gn + cols[None, :].to(tl.int64) * stride_gd,
                   mask=tile_mask, other=0).to(ACC_DTYPE)
    run_starts = tl.broadcast_to(starts.to(tl.int32)[:, None], (CHUNK, BLOCK_D))
    _, sums = tl.associative_scan((run_starts, rows), 0, _segmented_add)

    write = ends & keep
    partial_ptrs = chunk.to(tl.int64) * D + cols[None, :] + tl.zeros_like(positions)[:, None]
    tl.store(head_ptr + partial_ptrs, sums, mask=(write & continues)[:, None] & col_mask[None, :])
    tl.store(tail_ptr + partial_ptrs, sums, mask=(write & spills & (continues == 0))[:, None] & col_mask[None, :])
    final = write & (continues == 0) & (spills == 0)
    if SCALE_BY_FREQ:
        counts = tl.load(counts_ptr + ids, mask=final, other=1).to(ACC_DTYPE)
        sums = sums / counts[:, None]
    tl.store(out_ptr + ids[:, None] * stride_ov + cols[None, :].to(tl.int64) * stride_od,
             sums.to(out_ptr.dtype.element_ty), mask=final[:, None] & col_mask[None, :])


# Chunk partials the carry pass adds per step, as one tile: loads in flight together, a fixed sum order.
CARRY_ROWS = tl.constexpr(16)


@triton.jit
def segment_sum_carry_kernel(
    sorted_ids_ptr,  # (N,) ids sorted stably, contiguous
    counts_ptr,  # (V,) int32 occurrences per id (read only when SCALE_BY_FREQ)
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
    """Second pass: the chunk where a boundary-crossing run starts finds where the run ends (binary search
    over the sorted ids), adds the partials of the chunks it spans in a fixed order, CARRY_ROWS at a time,
    and writes the row once. One writer per row, fixed order: bitwise repeatable, and a hot id spanning
    many chunks costs a few wide steps rather than one dependent load per chunk."""
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
        # The run ends at run_end: the first position after chunk_end whose id differs.
        low = chunk_end
        high = N
        while low < high:
            mid = (low + high) // 2
            if tl.load(sorted_ids_ptr + mid).to(tl.int64) == last_value:
                low = mid + 1
            else:
                high = mid
        last_chunk = (low - 1) // CHUNK
        acc = tl.load(tail_ptr + chunk.to(tl.int64) * D + cols, mask=col_mask, other=0)
        for k0 in range(chunk + 1, last_chunk + 1, CARRY_ROWS):
            ks = k0 + tl.arange(0, CARRY_ROWS)
            partials = tl.load(head_ptr + ks[:, None].to(tl.int64) * D + cols[None, :],
                               mask=(ks <= last_chunk)[:, None] & col_mask[None, :], other=0)
            acc += tl.sum(partials, axis=0)
        if SCALE_BY_FREQ:
            acc = acc / tl.load(counts_ptr + last_value).to(acc.dtype)
        tl.store(
            out_ptr + last_value * stride_ov + cols.to(tl.int64) * stride_od,
            acc.to(out_ptr.dtype.element_ty),
            mask=col_mask,
        )


@triton.jit
def count_ids_kernel(
    indices_ptr,  # (N,) int32/int64 row ids, contiguous
    counts_ptr,  # (V,) int32 zero-filled: afterwards the occurrences of each id
    N,
    V,
    BLOCK_T: tl.constexpr,
):
    """counts[id] += 1 per token (integer atomics: exact in any order; no host sync, unlike bincount)."""
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rows = tl.load(indices_ptr + tokens, mask=tokens < N, other=0).to(tl.int64)
    valid = (tokens < N) & (rows >= 0) & (rows < V)
    tl.atomic_add(counts_ptr + rows, tl.full([BLOCK_T], 1, tl.int32), mask=valid)
