"""Device-side id checks: kernels mask every out-of-range id and note one in an error record, so a bad id
never becomes a wild pointer and the host learns of it without a sync (``triton_embed/runtime/errors.py``).

The record is four int64 (``state, bad id, number of rows, op``), in pinned host memory that kernels write
directly (or in device memory, copied to the host after each call, where that is not possible). One report
must be one consistent record, while programs of many launches may meet bad ids at once: a writer first
claims the record with a compare-and-swap of ``state`` from EMPTY to CLAIMED (one writer wins until the
host clears the record), writes the three fields, and then publishes with a release exchange of ``state``
to COMPLETE at system scope, so a host that reads COMPLETE reads the fields of that one writer. Each step is
a scalar atomic, which Triton issues from one thread of the program: the fields and the publishing
exchange keep their program order. The host treats anything but COMPLETE as no report yet.
"""
import triton
import triton.language as tl

#: ``state`` values (the host side, ``triton_embed/runtime/errors.py``, uses the same numbers).
EMPTY = tl.constexpr(0)
CLAIMED = tl.constexpr(1)
COMPLETE = tl.constexpr(2)
#: Op code of the probe below (no op of the package uses it).
OP_PROBE = tl.constexpr(0)


@triton.jit
def _valid_ids(ids, in_use, V):
    """Where ``in_use`` and the id lies in [0, V)."""
    return in_use & (ids >= 0) & (ids < V)


@triton.jit
def _write_record(err_ptr, bad_id, V, OP: tl.constexpr):
    """Claim the record (EMPTY -> CLAIMED), write (bad id, V, OP) and publish (-> COMPLETE); a record
    another writer holds is left alone. ``bad_id`` and ``V`` are scalars."""
    won = tl.atomic_cas(err_ptr, tl.full([], EMPTY, tl.int64), tl.full([], CLAIMED, tl.int64),
                        sem="relaxed", scope="sys")
    if won == EMPTY:
        tl.atomic_xchg(err_ptr + 1, bad_id.to(tl.int64), sem="relaxed", scope="sys")
        tl.atomic_xchg(err_ptr + 2, tl.cast(V, tl.int64), sem="relaxed", scope="sys")
        tl.atomic_xchg(err_ptr + 3, tl.full([], OP, tl.int64), sem="relaxed", scope="sys")
        # Release: the three fields are visible (to the host too) before the state says COMPLETE.
        tl.atomic_xchg(err_ptr, tl.full([], COMPLETE, tl.int64), sem="release", scope="sys")


@triton.jit
def _record_bad_ids(err_ptr, ids, positions, in_use, valid, V, OP: tl.constexpr):
    """If some in-use id is not valid, report the first such id (lowest position), V and OP in the record,
    unless it already holds a report."""
    bad = in_use & (valid == 0)
    if tl.sum(bad.to(tl.int32), axis=0) > 0:
        first = tl.min(tl.where(bad, positions, 2147483647), axis=0)
        bad_id = tl.sum(tl.where(bad & (positions == first), ids, 0), axis=0)
        _write_record(err_ptr, bad_id, V, OP)


@triton.jit
def error_probe_kernel(err_ptr):  # (4,) int64 record, EMPTY
    """Reports bad id -1 of a 1-row table (op OP_PROBE) the way the kernels do: shows whether kernels can
    write, with these atomics, a record in pinned host memory."""
    _write_record(err_ptr, tl.full([], -1, tl.int64), tl.full([], 1, tl.int64), OP_PROBE)
