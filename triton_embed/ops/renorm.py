"""Launcher of the in-place max_norm renorm."""
from __future__ import annotations

import math

import torch
import triton.language as tl

from triton_embed.kernels import renorm as kernels

from .. import tuning
from ..runtime import errors
from ..runtime.dispatch import device_guard, record_launch
from .plans import cdiv, plan
from .scalars import float_bits
from .tiles import backend_options, forward_tile

#: Ids per program of the owner election (a fixed launch: it only scatters atomic minima).
CLAIM_BLOCK = 1024
#: Widest piece of a row whose norm takes a general p (a function of nothing else: it orders the sum).
GENERAL_P_BLOCK_D = 2048
#: Launch options of the owner election (made per backend at the launch).
CLAIM_OPTIONS = {"num_warps": 4}


def norm_kind(norm_type: float) -> int:
    """The renorm kernel's NORM_KIND for a p: the common norms get exact special cases."""
    if norm_type == 1:
        return kernels.NORM_L1
    if norm_type == 2:
        return kernels.NORM_L2
    if norm_type == math.inf:
        return kernels.NORM_INF
    if norm_type == -math.inf:
        return kernels.NORM_NEG_INF
    if norm_type == 0:
        return kernels.NORM_L0
    return kernels.NORM_GENERAL


def renorm_tile(config: tuning.Config, dim: int, wide: bool, kind: int, backend: str | None = None
                ) -> tuple[dict, dict]:
    """(constexprs, launch options) of ``renorm_rows_kernel``: the forward LayerNorm tile (BLOCK_D and the
    warps fixed by D: they order the norm's sum) with 32 values of a row per thread (one row-sized value
    is live: the sum's shuffles and barriers are paid per warp, so few warps); for a general p one row per
    program in pieces of at most :data:`GENERAL_P_BLOCK_D` columns, 4 values of a piece per thread: each
    value goes through a float64 logarithm and exponential, whose temporaries would otherwise spill."""
    if kind != kernels.NORM_GENERAL:
        meta, options, _ = forward_tile(config, dim, wide, backend, values=32, most=32)
        return meta, options
    meta, options, _ = forward_tile(config, min(dim, GENERAL_P_BLOCK_D), wide, backend, values=4)
    meta["BLOCK_T"] = 1
    return meta, options


def owner_dtype(num_tokens: int) -> torch.dtype:
    """The dtype of the row owners (token positions, and N itself for a row no token names).

    >>> owner_dtype(2**31 - 1), owner_dtype(2**31)
    (torch.int32, torch.int64)
    """
    return torch.int32 if num_tokens < 2**31 else torch.int64


def renorm_(weight: torch.Tensor, indices: torch.Tensor, max_norm: float, norm_type: float, row_start: int = 0,
            total_rows: int | None = None) -> None:
    """Scale, in place, each row named by ``indices`` whose ``norm_type``-norm exceeds ``max_norm``.

    Duplicate ids are safe: each row has exactly one owning program. If any id lies outside ``[0, V)`` the
    table is left unchanged and the id is noted in the device's error record. A shard of a
    vocabulary-sharded table (rows ``[row_start, row_start + V)`` of ``total_rows``) renorms its own rows.
    """
    flat = indices.reshape(-1).contiguous()
    num_tokens = flat.numel()
    num_rows, dim = weight.shape
    total_rows = num_rows if total_rows is None else total_rows
    if not num_tokens or not dim:
        return
    wide = weight.dtype == torch.float64
    acc_dtype = tl.float64 if wide else tl.float32
    kind = norm_kind(norm_type)
    record = errors.record_for(weight.device)

    def launch(config: tuning.Config, table: torch.Tensor, ids: torch.Tensor, start: int = row_start,
               total: int = total_rows) -> None:
        meta, options = plan(renorm_tile, config, dim, wide, kind)
        # Entry V of the owners says whether the call may change the table (claim_rows_kernel). Owners are
        # token positions: int64 once they no longer fit in int32.
        owner = torch.full((table.shape[0] + 1,), num_tokens, dtype=owner_dtype(num_tokens), device=table.device)
        kernels.claim_rows_kernel[(cdiv(num_tokens, CLAIM_BLOCK),)](
            ids, owner, record, num_tokens, table.shape[0], start, total, BLOCK_T=CLAIM_BLOCK,
            **plan(backend_options, CLAIM_OPTIONS),
        )
        kernels.renorm_rows_kernel[(cdiv(num_tokens, meta["BLOCK_T"]),)](
            table, ids, owner, num_tokens, dim, table.shape[0], start, float_bits(max_norm), float_bits(norm_type),
            table.stride(0), table.stride(1), NORM_KIND=kind, ACC_DTYPE=acc_dtype, **meta, **options,
        )

    def bench(config: tuning.Config) -> None:
        # Timing runs rescale a scratch copy of (at most N) rows, never the real table.
        rows = min(num_rows, num_tokens)
        launch(config, weight[:rows].clone(), torch.remainder(flat, rows), 0, rows)

    with device_guard(weight):
        launch(tuning.choose("renorm", weight.dtype, dim, num_tokens, bench=bench), weight, flat)
    record_launch("claim_rows_kernel")
    record_launch("renorm_rows_kernel")
