"""Launcher of the row-gather kernel."""
from __future__ import annotations

import torch
import triton

from triton_embed.kernels.gather import gather_rows_kernel

from .. import tuning
from ..runtime import errors
from ..runtime.dispatch import device_guard, new_output, record_launch
from .plans import cdiv, plan
from .tiles import backend_options


def gather(weight: torch.Tensor, indices: torch.Tensor, row_start: int = 0, total_rows: int | None = None
           ) -> torch.Tensor:
    """``weight[indices]`` by the Triton kernel; output ``indices.shape + (D,)`` in weight's dtype.

    Ids outside ``[0, V)`` give zero rows and are noted in the device's error record (``runtime/errors.py``). For a
    shard of a vocabulary-sharded table, ``weight`` holds rows ``[row_start, row_start + V)`` of a table of
    ``total_rows``: ids of other shards give zero rows, only ids outside ``[0, total_rows)`` are errors.
    """
    num_rows, dim = weight.shape
    total_rows = num_rows if total_rows is None else total_rows
    # Made in its final shape (not a view of a 2-D buffer): ops may then modify their output in place. It is
    # contiguous: as (N, D) its strides are (D, 1). Contiguous ids are read as they are (stride 1).
    out = new_output((*indices.shape, dim), weight.dtype, weight.device)
    num_tokens = indices.numel()
    if num_tokens and dim:
        flat = indices if indices.is_contiguous() else indices.reshape(-1)
        flat_stride = 1 if flat is indices else flat.stride(0)
        record = errors.record_for(weight.device)
        stride_v, stride_d = weight.stride()

        def launch(config: tuning.Config) -> None:
            block_t, block_d, constants = plan(_constants, config, dim)
            gather_rows_kernel[(cdiv(num_tokens, block_t), cdiv(dim, block_d))](
                weight, flat, out, record, num_tokens, dim, num_rows, row_start, total_rows,
                stride_v, stride_d, flat_stride, dim, 1, **constants,
            )

        with device_guard(weight):
            # Timing runs rewrite only this call's output.
            launch(tuning.choose("gather", weight.dtype, dim, num_tokens, bench=launch))
        record_launch("gather_rows_kernel")
    return out


def _constants(config: tuning.Config, dim: int) -> tuple[int, int, dict]:
    """(BLOCK_T, BLOCK_D, constexprs and launch options) of a gather launch: the config's, the column block
    capped at D's power of two, the options as this machine's Triton backend takes them."""
    meta, options = tuning.split(config)
    meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
    return meta["BLOCK_T"], meta["BLOCK_D"], {**meta, **backend_options(options)}
