"""Device-side id checks: kernels mask every out-of-range id and note one in an error record, so a bad id
never becomes a wild pointer and the host learns of it without a sync (``triton_embed/errors.py``).

The record is four int64 (``flag, bad id, number of rows, op``), in pinned host memory that kernels write
directly (or in device memory, copied to the host after each call, where that is not possible). Writers
race with plain stores: any one bad id wins, which is all the error message needs.
"""
import triton
import triton.language as tl


@triton.jit
def _valid_ids(ids, in_use, V):
    """Where ``in_use`` and the id lies in [0, V)."""
    return in_use & (ids >= 0) & (ids < V)


@triton.jit
def _record_bad_ids(err_ptr, ids, positions, in_use, valid, V, OP: tl.constexpr):
    """If some in-use id is not valid, write the first such id (lowest position), V and OP to the record."""
    bad = in_use & (valid == 0)
    if tl.sum(bad.to(tl.int32), axis=0) > 0:
        first = tl.min(tl.where(bad, positions, 2147483647), axis=0)
        bad_id = tl.sum(tl.where(bad & (positions == first), ids, 0), axis=0)
        tl.store(err_ptr + 1, bad_id.to(tl.int64))
        tl.store(err_ptr + 2, tl.cast(V, tl.int64))
        tl.store(err_ptr + 3, tl.full([], OP, tl.int64))
        tl.store(err_ptr, tl.full([], 1, tl.int64))


@triton.jit
def error_probe_kernel(err_ptr):  # (4,) int64 record: each entry set to 1
    """Writes 1 to the four entries: shows whether kernels can write a record in pinned host memory."""
    tl.store(err_ptr + tl.arange(0, 4), tl.full([4], 1, tl.int64))
