"""Launcher of ``kernels/stable_embedding_runs.py``: StableEmbedding's dense backward as one LayerNorm
backward per distinct id, for tables whose dtype is the default dtype (float32, or float64 under a float64
default), where nothing is rounded between the LayerNorm backward and the sum into the gradient.

Launches: three, plus a stable sort of the ids: the crossing-run pieces of the output gradient, the runs
kernel (every gradient row once, and per-chunk dγ/dβ partials), the dγ/dβ finish. Nothing N x D is made.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from triton_embed.kernels.stable_embedding_runs import stable_embedding_runs_kernel

from .. import tuning
from ..runtime.dispatch import new_output, record_launch
from .dtypes import accumulator_dtype, tl_dtype
from .embedding_backward import sorted_pieces
from .layer_norm import reduce_param_grads
from .plans import cdiv, plan
from .tiles import row_width, runs_tile

#: The widest row this path takes (half as wide for float64): a whole row and its LayerNorm backward are held
#: in registers, and the AOT check finds spills beyond it (8192 float32 columns in 16 warps).
MAX_BLOCK_D = 4096


@functools.lru_cache(maxsize=1024)  # asked on every backward; row_width is not free
def applies(weight_dtype: torch.dtype, compute_dtype: torch.dtype, dim: int) -> bool:
    """Whether this path serves a dense StableEmbedding backward: the table in the default dtype (so no
    cast rounds each token's input gradient before the sum) and a row of at most MAX_BLOCK_D columns
    (half that for float64); other tables take the per-token path.

    >>> applies(torch.float32, torch.float32, 4096), applies(torch.bfloat16, torch.float32, 4096)
    (True, False)
    >>> applies(torch.float32, torch.float32, 5000), applies(torch.float64, torch.float64, 4096)
    (False, False)
    """
    if weight_dtype != compute_dtype or weight_dtype not in (torch.float32, torch.float64):
        return False
    wide = weight_dtype == torch.float64
    return row_width(dim, wide)[1] and dim <= MAX_BLOCK_D // (2 if wide else 1)


def dense_backward(
    grad_2d: Tensor,
    weight: Tensor,
    flat: Tensor,
    norm_weight: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    dw: Optional[Tensor],
    db: Optional[Tensor],
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> Tensor:
    """The (V, D) weight gradient of the fused forward, written once; dγ/dβ into ``dw``/``db`` (where not
    None). ``grad_2d``: (N, D) output gradient; ``flat``: (N,) ids; ``mean``/``rstd``: the forward's."""
    num_rows, dim = weight.shape
    num_tokens = flat.numel()
    acc = accumulator_dtype(weight.dtype)
    wide = acc == torch.float64
    ids, order, head, tail = sorted_pieces(grad_2d, flat, num_rows, padding_idx, every_run=True)
    num_chunks = head.shape[0]
    partial_w = new_output((num_chunks, dim), acc, weight.device)
    partial_b = new_output((num_chunks, dim), acc, weight.device)
    out = new_output((num_rows, dim), weight.dtype, weight.device)
    gamma, stride_g = (norm_weight, norm_weight.stride(0)) if norm_weight is not None else (weight, 0)

    def launch(config: tuning.Config) -> None:
        meta, options = plan(runs_tile, config, dim, wide)
        zero_programs = cdiv(num_rows, meta["BLOCK_V"])
        stable_embedding_runs_kernel[(num_chunks + zero_programs,)](
            weight, grad_2d, ids, order, head, tail, gamma, mean, rstd, out, partial_w, partial_b,
            num_tokens, dim, num_rows, padding_idx, num_chunks,
            weight.stride(0), weight.stride(1), grad_2d.stride(0), grad_2d.stride(1), stride_g,
            out.stride(0), out.stride(1),
            SCALE_BY_FREQ=scale_grad_by_freq, HAS_WEIGHT=norm_weight is not None, ACC_DTYPE=tl_dtype(acc),
            **meta, **options,
        )

    # Writes only its outputs (every row of the gradient, every partial row): timing runs may launch into them.
    launch(tuning.choose("stable_runs", weight.dtype, dim, num_tokens, bench=launch, rows=num_rows))
    record_launch("stable_embedding_runs_kernel")
    reduce_param_grads(partial_w, partial_b, dw, db)
    return out


__all__ = ["MAX_BLOCK_D", "applies", "dense_backward"]
