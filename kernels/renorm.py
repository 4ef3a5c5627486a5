"""In-place max_norm renormalisation of the referenced rows of an embedding table."""
import triton
import triton.language as tl

from .numerics import _exact_float, _round

# NORM_KIND values (constexpr): which norm the renorm kernel computes.
NORM_GENERAL = 0  # (sum |x|^p)^(1/p) for any other p
NORM_L1 = 1
NORM_L2 = 2
NORM_INF = 3
NORM_L0 = 4  # number of non-zeros, as torch.norm(p=0)
NORM_NEG_INF = 5  # min |x|, as torch.norm(p=-inf)


@triton.jit
def claim_rows_kernel(
    indices_ptr,  # (N,) int32/int64 row ids, contiguous, all in [0, V)
    owner_ptr,  # (V,) int32, filled with N: afterwards the first token position that names each row
    N,
    BLOCK_T: tl.constexpr,
):
    """Duplicates of an id elect one owner (the lowest position), so exactly one program rescales each row."""
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = tokens < N
    rows = tl.load(indices_ptr + tokens, mask=mask, other=0).to(tl.int64)
    tl.atomic_min(owner_ptr + rows, tokens.to(tl.int32), mask=mask)


@triton.jit(do_not_specialize=["max_norm", "norm_type"])
def renorm_rows_kernel(
    weight_ptr,  # (V, D) table, float dtype, updated in place; strides (stride_wv, stride_wd)
    indices_ptr,  # (N,) int32/int64 row ids, contiguous, all in [0, V)
    owner_ptr,  # (V,) int32 owner positions from claim_rows_kernel
    N,
    D,
    max_norm,  # int64 bits of the float64 largest norm a row may keep (see numerics.py)
    norm_type,  # int64 bits of the float64 p, used when NORM_KIND == NORM_GENERAL
    stride_wv,
    stride_wd,
    NORM_KIND: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Each owned row whose p-norm exceeds max_norm is scaled by max_norm / (norm + 1e-7)."""
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < N
    rows = tl.load(indices_ptr + tokens, mask=token_mask, other=0).to(tl.int64)
    owner = tl.load(owner_ptr + rows, mask=token_mask, other=-1)
    owned = token_mask & (owner == tokens)
    row_offsets = rows[:, None] * stride_wv
    p = _exact_float(norm_type, ACC_DTYPE)
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
            total += tl.sum(x, axis=1)
        elif NORM_KIND == 2:
            total += tl.sum(x * x, axis=1)
        elif NORM_KIND == 3:
            total = tl.maximum(total, tl.max(x, axis=1))
            nans += tl.sum((x != x).to(tl.int32), axis=1)
        elif NORM_KIND == 4:
            total += tl.sum(tl.where(x != 0, 1.0, 0.0).to(ACC_DTYPE), axis=1)
        elif NORM_KIND == 5:
            total = tl.minimum(total, tl.min(tl.where(mask, x, float("inf")), axis=1))
            nans += tl.sum((x != x).to(tl.int32), axis=1)
        else:
            powered = tl.exp(p * tl.log(x))
            total += tl.sum(tl.where(mask, powered, 0.0).to(ACC_DTYPE), axis=1)
    if NORM_KIND == 2:
        norm = tl.sqrt(total)
    elif NORM_KIND == 0:
        norm = tl.exp(tl.log(total) / p)
    else:
        norm = tl.where(nans > 0, float("nan"), total)
    # The test and the factor in float64, as PyTorch's CPU renorm makes them (tl.full: a bare 1e-7
    # literal would be rounded to float32 first).
    limit = _exact_float(max_norm, tl.float64)
    norm64 = norm.to(tl.float64)
    rescale = owned & (norm64 > limit)
    scale = (limit / (norm64 + tl.full([], 1e-7, tl.float64))).to(ACC_DTYPE)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rescale[:, None] & (cols < D)[None, :]
        ptrs = weight_ptr + row_offsets + cols[None, :].to(tl.int64) * stride_wd
        x = tl.load(ptrs, mask=mask, other=0).to(ACC_DTYPE)
        tl.store(ptrs, _round(x * scale[:, None], weight_ptr.dtype.element_ty), mask=mask)
