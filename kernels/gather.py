"""Row gather: ``out[t, :] = weight[indices[t], :]``."""
import triton
import triton.language as tl

from .errors import _record_bad_ids, _valid_ids

#: Op code of this kernel in the error record (``triton_embed/runtime/errors.py`` names it).
OP_GATHER = tl.constexpr(1)


@triton.jit
def gather_rows_kernel(
    weight_ptr,  # (V, D) table, any dtype; strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32/int64 row ids, stride stride_i
    out_ptr,  # (N, D) output, weight's dtype; strides (stride_on, stride_od)
    err_ptr,  # (4,) int64 error record: an id outside [0, V) is noted there
    N,  # tokens (runtime: never recompile per batch)
    D,  # embedding dim
    V,  # rows in this table (a shard of a vocabulary-sharded table holds rows [row_start, row_start + V))
    row_start,  # global id of this table's first row (0 unless the table is a shard)
    total_rows,  # rows of the whole table: ids outside [0, total_rows) are errors, noted in the record
    stride_wv,
    stride_wd,
    stride_i,
    stride_on,
    stride_od,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Each program copies a BLOCK_T x BLOCK_D tile of gathered rows; ids outside this table's rows (another
    shard's, or out of range) give zero rows."""
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    offsets = tl.arange(0, BLOCK_T)
    tokens = pid_t.to(tl.int64) * BLOCK_T + offsets
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    token_mask = tokens < N
    col_mask = cols < D
    ids = tl.load(indices_ptr + tokens.to(tl.int64) * stride_i, mask=token_mask, other=0).to(tl.int64)
    if pid_d == 0:
        _record_bad_ids(err_ptr, ids, offsets, token_mask, _valid_ids(ids, token_mask, total_rows), total_rows,
                        OP_GATHER)
    rows = ids - row_start
    valid = _valid_ids(rows, token_mask, V)
    values = tl.load(
        weight_ptr + rows[:, None] * stride_wv + cols[None, :].to(tl.int64) * stride_wd,
        mask=valid[:, None] & col_mask[None, :],
        other=0,
    )
    tl.store(
        out_ptr + tokens[:, None].to(tl.int64) * stride_on + cols[None, :].to(tl.int64) * stride_od,
        values,
        mask=token_mask[:, None] & col_mask[None, :],
    )
