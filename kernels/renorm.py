"""In-place max_norm renormalisation of the referenced rows of an embedding table: two launches, one to
elect an owner for each referenced row (and to refuse the whole call if an id is out of range), one to
rescale the owned rows."""
import triton
import triton.language as tl

from .errors import _record_bad_ids, _valid_ids
from .numerics import _exact_float, _exp2_f64, _f64, _log2_f64, _pow_f64, _round, _sqrt
from .reductions import _row_sum

# NORM_KIND values (constexpr): which norm the renorm kernel computes.
NORM_GENERAL = 0  # (sum |x|^p)^(1/p) for any other p
NORM_L1 = 1
NORM_L2 = 2
NORM_INF = 3
NORM_L0 = 4  # number of non-zeros, as torch.norm(p=0)
NORM_NEG_INF = 5  # min |x|, as torch.norm(p=-inf)


#: Op code of the renorm in the error record.
OP_RENORM = tl.constexpr(2)


@triton.jit
def claim_rows_kernel(
    indices_ptr,  # (N,) int32/int64 row ids, contiguous
    owner_ptr,  # (V + 1,) int32 (int64 when N >= 2**31), filled with N: afterwards the first token position
    #             that names each row; entry V becomes -1 when some id lies outside [0, V), and the renorm
    #             then changes nothing
    err_ptr,  # (4,) int64 error record
    N,
    V,  # rows in this table (a shard holds rows [row_start, row_start + V) of the whole)
    row_start,  # global id of this table's first row
    total_rows,  # rows of the whole table: ids outside [0, total_rows) are errors
    BLOCK_T: tl.constexpr,
):
    """Duplicates of an id elect one owner (the lowest position), so exactly one program rescales each row."""
    offsets = tl.arange(0, BLOCK_T)
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + offsets
    mask = tokens < N
    ids = tl.load(indices_ptr + tokens, mask=mask, other=0).to(tl.int64)
    rows = ids - row_start
    tl.atomic_min(owner_ptr + rows, tokens.to(owner_ptr.dtype.element_ty), mask=_valid_ids(rows, mask, V),
                  sem="relaxed")
    in_range = _valid_ids(ids, mask, total_rows)
    if tl.sum((mask & (in_range == 0)).to(tl.int32), axis=0) > 0:
        tl.store(owner_ptr + V, -1)
        _record_bad_ids(err_ptr, ids, offsets, mask, in_range, total_rows, OP_RENORM)


@triton.jit(do_not_specialize=["max_norm", "norm_type"])
def renorm_rows_kernel(
    weight_ptr,  # (V, D) table, float dtype, updated in place; strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32/int64 row ids, contiguous
    owner_ptr,  # (V + 1,) int32/int64 owner positions from claim_rows_kernel; entry V < 0: leave the table alone
    N,
    D,
    V,  # rows in this table (a shard holds rows [row_start, row_start + V) of the whole)
    row_start,  # global id of this table's first row
    max_norm,  # int64 bits of the float64 largest norm a row may keep (see numerics.py)
    norm_type,  # int64 bits of the float64 p, used when NORM_KIND == NORM_GENERAL
    stride_wv,
    stride_wd,
    NORM_KIND: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Each owned row whose p-norm exceeds max_norm is scaled by max_norm / (norm + 1e-7). The norm's sums
    are ``tl.sum`` over BLOCK_D-wide pieces taken in order, BLOCK_D and the warps fixed by D (the launcher's
    ``renorm_tile``), so the rescaled bits do not depend on the config.

    Numerics (what the ahead-of-time check holds the compiled code to: no approximate instruction, no FMA):
    p = 2 takes the correctly rounded square root of its sum; a general p raises each |x| to p and the sum to
    1/p in float64 by ``numerics._pow_f64`` (IEEE adds, multiplies and one division, which the interpreter
    computes alike); the comparison with max_norm and the factor are float64, as PyTorch's CPU renorm makes
    them. The one difference the interpreter keeps is the order of the sums (numpy's, not the GPU's
    layout's): a norm may differ there in its last bit, and a row within that bit of max_norm may be
    rescaled in one and not the other."""
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < N
    rows = tl.load(indices_ptr + tokens, mask=token_mask, other=0).to(tl.int64) - row_start
    # A call that met an out-of-range id changes nothing (claim_rows_kernel marked it).
    # (The scalar is broadcast first: the interpreter rejects a scalar-and-vector mask.)
    call_ok = (tl.zeros_like(tokens) + tl.load(owner_ptr + V)) >= 0
    valid = _valid_ids(rows, token_mask, V) & call_ok
    owner = tl.load(owner_ptr + rows, mask=valid, other=-1)
    owned = valid & (owner == tokens.to(owner.dtype))
    row_offsets = rows[:, None] * stride_wv
    p = _exact_float(norm_type, tl.float64)
    total = tl.zeros([BLOCK_T], dtype=ACC_DTYPE)
    # max/min reductions drop NaN on the GPU; PyTorch's inf-norms of a row with a NaN are NaN (no rescale).
    nans = tl.zeros([BLOCK_T], dtype=tl.int32)
    if NORM_KIND == 5:
        total += float("inf")
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = owned[:, None] & (cols < D)[None, :]
        x = tl.abs(tl.load(weight_ptr + row_offsets + cols[None, :].to(tl.int64) * stride_wd,
                           mask=mask, other=0).to(ACC_DTYPE))
        if NORM_KIND == 1:
            total += _row_sum(x)
        elif NORM_KIND == 2:
            total += _row_sum(x * x)
        elif NORM_KIND == 3:
            total = tl.maximum(total, tl.max(x, axis=1))
            nans += tl.sum((x != x).to(tl.int32), axis=1)
        elif NORM_KIND == 4:
            total += _row_sum(tl.where(x != 0, 1.0, 0.0).to(ACC_DTYPE))
        elif NORM_KIND == 5:
            total = tl.minimum(total, tl.min(tl.where(mask, x, float("inf")), axis=1))
            nans += tl.sum((x != x).to(tl.int32), axis=1)
        else:
            powered = _pow_f64(x.to(tl.float64), p)
            total += _row_sum(tl.where(mask, powered, 0.0).to(ACC_DTYPE))
    if NORM_KIND == 2:
        norm = _sqrt(total, ACC_DTYPE).to(tl.float64)
    elif NORM_KIND == 0:
        norm = _exp2_f64(_log2_f64(total.to(tl.float64)) / p)
    else:
        norm = tl.where(nans > 0, float("nan"), total).to(tl.float64)
    # The test and the factor in float64, as PyTorch's CPU renorm makes them.
    limit = _exact_float(max_norm, tl.float64)
    rescale = owned & (norm > limit)
    scale = (limit / (norm + _f64(1e-7))).to(ACC_DTYPE)
    # Rows within max_norm (the steady state of training) skip the second pass altogether.
    if tl.max(rescale.to(tl.int32), axis=0) > 0:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = rescale[:, None] & (cols < D)[None, :]
            ptrs = weight_ptr + row_offsets + cols[None, :].to(tl.int64) * stride_wd
            x = tl.load(ptrs, mask=mask, other=0).to(ACC_DTYPE)
            tl.store(ptrs, _round(x * scale[:, None], weight_ptr.dtype.element_ty), mask=mask)
