"""Launcher of the in-place max_norm renorm."""
from __future__ import annotations

import math

import torch
import triton.language as tl

from triton_embed.kernels import renorm as kernels

from .. import errors, tuning
from .._dispatch import device_guard, record_launch
from .scalars import float_bits
from .plans import cdiv, plan
from .tiles import forward_tile

#: Ids per program of the owner election (a fixed launch: it only scatters atomic minima).
CLAIM_BLOCK = 1024


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
        meta, options, _ = plan(forward_tile, config, dim, wide)
        # Entry V of the owners says whether the call may change the table (claim_rows_kernel).
        owner = torch.full((table.shape[0] + 1,), num_tokens, dtype=torch.int32, device=table.device)
        kernels.claim_rows_kernel[(cdiv(num_tokens, CLAIM_BLOCK),)](
            ids, owner, record, num_tokens, table.shape[0], start, total, BLOCK_T=CLAIM_BLOCK, num_warps=4,
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
