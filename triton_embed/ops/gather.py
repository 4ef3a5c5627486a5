"""Launcher of the row-gather kernel."""
from __future__ import annotations

import torch
import triton

from triton_embed.kernels.gather import gather_rows_kernel

from .. import errors, tuning
from .._dispatch import device_guard, new_output, record_launch
from .tiles import backend_options


def gather(weight: torch.Tensor, indices: torch.Tensor, row_start: int = 0, total_rows: int | None = None
           ) -> torch.Tensor:
    """``weight[indices]`` by the Triton kernel; output ``indices.shape + (D,)`` in weight's dtype.

    Ids outside ``[0, V)`` give zero rows and are noted in the device's error record (``errors.py``). For a
    shard of a vocabulary-sharded table, ``weight`` holds rows ``[row_start, row_start + V)`` of a table of
    ``total_rows``: ids of other shards give zero rows, only ids outside ``[0, total_rows)`` are errors.
    """
    flat = indices.reshape(-1)
    num_tokens = flat.numel()
    num_rows, dim = weight.shape
    total_rows = num_rows if total_rows is None else total_rows
    # Made in its final shape (not a view of a 2-D buffer): ops may then modify their output in place.
    out = new_output((*indices.shape, dim), weight.dtype, weight.device)
    out_2d = out.view(num_tokens, dim)
    if num_tokens and dim:
        record = errors.record_for(weight.device)

        def launch(config: tuning.Config) -> None:
            meta, options = tuning.split(config)
            options = backend_options(options)
            meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
            grid = (triton.cdiv(num_tokens, meta["BLOCK_T"]), triton.cdiv(dim, meta["BLOCK_D"]))
            gather_rows_kernel[grid](
                weight, flat, out_2d, record, num_tokens, dim, num_rows, row_start, total_rows,
                weight.stride(0), weight.stride(1), flat.stride(0), out_2d.stride(0), out_2d.stride(1),
                **meta, **options,
            )

        with device_guard(weight):
            # Timing runs rewrite only this call's output.
            launch(tuning.choose("gather", weight.dtype, dim, num_tokens, bench=launch))
        record_launch("gather_rows_kernel")
    return out
