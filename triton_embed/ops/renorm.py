"""Launcher of the in-place max_norm renorm."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from triton_embed.kernels import renorm as kernels

from .. import tuning
from .._dispatch import device_guard, record_launch
from .scalars import float_bits


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


def renorm_(weight: torch.Tensor, indices: torch.Tensor, max_norm: float, norm_type: float) -> None:
    """Scale, in place, each row named by ``indices`` whose ``norm_type``-norm exceeds ``max_norm``.

    Ids must already be in range. Duplicate ids are safe: each row has exactly one owning program.
    """
    flat = indices.reshape(-1).contiguous()
    num_tokens = flat.numel()
    num_rows, dim = weight.shape
    if not num_tokens or not dim:
        return
    acc_dtype = tl.float64 if weight.dtype == torch.float64 else tl.float32
    kind = norm_kind(norm_type)

    def launch(config: tuning.Config, table: torch.Tensor, ids: torch.Tensor) -> None:
        meta, options = tuning.split(config)
        meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
        owner = torch.full((table.shape[0],), num_tokens, dtype=torch.int32, device=table.device)
        grid = (triton.cdiv(num_tokens, meta["BLOCK_T"]),)
        kernels.claim_rows_kernel[grid](ids, owner, num_tokens, BLOCK_T=meta["BLOCK_T"], **options)
        kernels.renorm_rows_kernel[grid](
            table, ids, owner, num_tokens, dim, float_bits(max_norm), float_bits(norm_type),
            table.stride(0), table.stride(1), NORM_KIND=kind, ACC_DTYPE=acc_dtype, **meta, **options,
        )

    def bench(config: tuning.Config) -> None:
        # Timing runs rescale a scratch copy of (at most N) rows, never the real table.
        rows = min(num_rows, num_tokens)
        launch(config, weight[:rows].clone(), torch.remainder(flat, rows))

    with device_guard(weight):
        launch(tuning.choose("renorm", weight.dtype, dim, num_tokens, bench=bench), weight, flat)
    record_launch("claim_rows_kernel")
    record_launch("renorm_rows_kernel")
