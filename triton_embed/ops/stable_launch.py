"""Launchers of the fused StableEmbedding kernels (``kernels/stable_embedding.py``): the forward, one launch
(gather + cast + LayerNorm + cast), keeping a float32 (float64 under a float64 default dtype) mean and rstd per
token; the backward, which re-gathers the rows: for a table in the default dtype one LayerNorm backward per
distinct id (``stable_embedding_runs.py``), otherwise the LayerNorm backward writing the d(emb) rows of the
tokens that reach the table, then the dense gradient's two launches (``embedding_backward.accumulate_rows``),
the second of which also finishes dγ/dβ. Every sum has a fixed order: the gradients repeat bitwise for every
config.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from triton_embed.kernels.stable_embedding import stable_embedding_bwd_kernel, stable_embedding_fwd_kernel

from .. import tuning
from ..runtime import errors
from ..runtime.dispatch import device_guard, new_output, record_launch
from .dtypes import accumulator_dtype, tl_dtype
from .embedding_backward import accumulate_rows
from .layer_norm import backward_programs, reduce_param_grads
from .plans import cdiv, plan
from .scalars import float_bits
from .stable_embedding_runs import applies as runs_apply
from .stable_embedding_runs import dense_backward as runs_dense_backward
from .tiles import backward_tile, forward_tile

#: ``mode`` of ``triton_embed::stable_embedding_backward``: the weight gradient it returns.
WEIGHT_GRAD_DENSE = 0  # (V, D) in the weight's dtype
WEIGHT_GRAD_ROWS = 1  # (N, D) d(emb) rows in the weight's dtype (sparse gradients are built from them)
WEIGHT_GRAD_NONE = 2  # (0, D): the table needs no gradient; only dγ/dβ

_VARIANTS = {WEIGHT_GRAD_DENSE: "dense", WEIGHT_GRAD_ROWS: "rows", WEIGHT_GRAD_NONE: "none"}
#: The empty config: the backward's rows per tile do not depend on the tuned one (``ops/tiles.py``).
_NO_CONFIG: tuning.Config = {}


def _param_arg(param: Optional[Tensor], fallback: Tensor) -> tuple[Tensor, int]:
    return (param, param.stride(0)) if param is not None else (fallback, 0)


def forward(
    weight: Tensor,
    indices: Tensor,
    norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor],
    eps: float,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``LayerNorm(weight[indices].to(compute_dtype)).to(weight.dtype)`` in one launch: (output
    ``indices.shape + (D,)``, flat per-token mean, flat per-token rstd). Ids outside ``[0, V)`` give the
    LayerNorm of a zero row and are noted in the device's error record."""
    num_tokens = indices.numel()
    num_rows, dim = weight.shape
    acc = accumulator_dtype(compute_dtype)
    device = weight.device
    # Fresh and contiguous: as (N, D) the output's strides are (D, 1).
    out = new_output((*indices.shape, dim), weight.dtype, device)
    mean = new_output((num_tokens,), acc, device)
    rstd = new_output((num_tokens,), acc, device)
    if num_tokens and dim:
        flat = indices if indices.is_contiguous() else indices.reshape(-1)
        flat_stride = 1 if flat is indices else flat.stride(0)
        gamma, stride_g = _param_arg(norm_weight, weight)
        beta, stride_b = _param_arg(norm_bias, weight)
        record = errors.record_for(device)
        stride_v, stride_d = weight.stride()
        # float64 statistics or float64 rows: half-width tiles (the tile follows the dtypes and D only).
        wide = acc == torch.float64 or weight.dtype == torch.float64
        flags = (norm_weight is not None, norm_bias is not None)

        def launch(config: tuning.Config) -> None:
            block_t, constants = plan(_forward_constants, config, dim, wide, compute_dtype, *flags)
            stable_embedding_fwd_kernel[(cdiv(num_tokens, block_t),)](
                weight, flat, gamma, beta, out, record, mean, rstd, num_tokens, dim, num_rows, float_bits(eps),
                stride_v, stride_d, flat_stride, stride_g, stride_b, dim, 1, **constants,
            )

        # The launch writes only its outputs: timing runs may rewrite them.
        with device_guard(weight):
            launch(tuning.choose("stable_forward", weight.dtype, dim, num_tokens, bench=launch))
        record_launch("stable_embedding_fwd_kernel")
    elif num_tokens:
        mean.zero_()
        rstd.fill_(1.0 / (float(eps) ** 0.5))
    return out, mean, rstd


def _forward_constants(config: tuning.Config, dim: int, wide: bool, compute_dtype: torch.dtype, has_weight: bool,
                       has_bias: bool) -> tuple[int, dict]:
    """(BLOCK_T, every constexpr and launch option) of a forward launch: what follows from the config, D and the
    dtypes, derived once (``plans.plan``)."""
    meta, options, single = forward_tile(config, dim, wide)
    return meta["BLOCK_T"], {
        "HAS_WEIGHT": has_weight, "HAS_BIAS": has_bias, "CAST_DTYPE": tl_dtype(compute_dtype),
        "ACC_DTYPE": tl_dtype(accumulator_dtype(compute_dtype)), "SINGLE_BLOCK": single, **meta, **options,
    }


def backward(
    grad: Tensor,
    weight: Tensor,
    indices: Tensor,
    norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    compute_dtype: torch.dtype,
    mode: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    deterministic: bool = True,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(weight gradient as ``mode`` says, dγ, dβ) of the fused forward, by the Triton kernels. Bitwise
    repeatable whatever ``deterministic`` says (it is accepted for the API's sake)."""
    num_rows, dim = weight.shape
    flat = indices if indices.dim() == 1 else indices.reshape(-1)
    num_tokens = flat.numel()
    grad_2d = grad if grad.dim() == 2 else grad.reshape(num_tokens, dim)
    acc = accumulator_dtype(compute_dtype)
    wide = acc == torch.float64 or weight.dtype == torch.float64
    device = weight.device
    dw = new_output(norm_weight.shape, norm_weight.dtype, device) if norm_weight is not None else None
    db = new_output(norm_bias.shape, norm_bias.dtype, device) if norm_bias is not None else None
    if not num_tokens or not dim:
        for t in (dw, db):
            if t is not None:
                t.zero_()
        if mode == WEIGHT_GRAD_DENSE:
            return torch.zeros_like(weight), dw, db
        return weight.new_zeros((num_tokens if mode == WEIGHT_GRAD_ROWS else 0, dim)), dw, db

    if mode == WEIGHT_GRAD_DENSE and runs_apply(weight.dtype, compute_dtype, dim):
        with device_guard(weight):
            return runs_dense_backward(grad_2d, weight, flat, norm_weight, mean, rstd, dw, db, padding_idx,
                                       scale_grad_by_freq), dw, db
    gamma, stride_g = _param_arg(norm_weight, weight)
    block_t = plan(backward_tile, _NO_CONFIG, dim, wide)[0]["BLOCK_T"]
    programs, rows_per_program = backward_programs(num_tokens, block_t)
    partial_w = new_output((programs, dim), acc, device)
    partial_b = new_output((programs, dim), acc, device)
    write_rows = mode != WEIGHT_GRAD_NONE
    dst = new_output((num_tokens, dim), weight.dtype, device) if write_rows else partial_w

    def launch(config: tuning.Config) -> None:
        meta, options, single = plan(backward_tile, config, dim, wide)
        stable_embedding_bwd_kernel[(programs,)](
            weight, flat, grad_2d, gamma, mean, rstd, dst, partial_w, partial_b,
            num_tokens, dim, num_rows, padding_idx, rows_per_program,
            weight.stride(0), weight.stride(1), flat.stride(0), grad_2d.stride(0), grad_2d.stride(1), stride_g,
            dst.stride(0), dst.stride(1),
            MODE=0 if write_rows else 1, ALL_ROWS=mode == WEIGHT_GRAD_ROWS, HAS_WEIGHT=norm_weight is not None,
            CAST_DTYPE=tl_dtype(compute_dtype), ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single,
            **meta, **options,
        )

    with device_guard(weight):
        # Writes only d(emb) and its own partial rows (zeroed first): timing runs may launch into them.
        launch(tuning.choose("stable_backward", weight.dtype, dim, num_tokens, bench=launch,
                             variant=_VARIANTS[mode]))
        record_launch("stable_embedding_bwd_kernel")
        if mode == WEIGHT_GRAD_DENSE:
            grad_weight = accumulate_rows(dst, flat.contiguous(), num_rows, padding_idx, scale_grad_by_freq,
                                          param_grads=(partial_w, partial_b, dw, db), tuning_name="stable_rows")
        else:
            reduce_param_grads(partial_w, partial_b, dw, db)
            grad_weight = dst if mode == WEIGHT_GRAD_ROWS else weight.new_empty((0, dim))
    return grad_weight, dw, db
