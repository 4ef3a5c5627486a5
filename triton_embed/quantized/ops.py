"""Quantized tables: launchers of ``kernels/quantized.py`` and the custom ops
``triton_embed::quantized_embedding``, ``triton_embed::quantized_stable_embedding`` and its backward (fake
implementations for tracing, a registered autograd formula), which dispatch to the launchers or to the
reference path (``quantized/reference.py``).

A table is ``(codes, scales, quant_map)`` in one of bitsandbytes' formats, told apart by the codes' dtype:
int8 codes (V, D) with (V,) float32 row absmax, or uint8 packed 4-bit codes (⌈V·D/2⌉ bytes) with
(⌈V·D/blocksize⌉,) float32 block absmax and the (16,) float32 codebook ``quant_map``.

Launches: lookup, one (``quantized_gather_kernel``). StableEmbedding forward, one
(``quantized_stable_fwd_kernel``); backward, two: the dγ/dβ partials from the re-dequantized rows
(``quantized_stable_bwd_kernel``), then ``layer_norm_param_grad_kernel``. The table is frozen: no weight
gradient. Saved for backward: the ids and a float32 mean and rstd per token; nothing N x D.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from triton_embed.kernels.quantized import (
    quantized_gather_kernel,
    quantized_stable_bwd_kernel,
    quantized_stable_fwd_kernel,
)

from .. import tuning
from ..ops.dtypes import accumulator_dtype, tl_dtype
from ..ops.layer_norm import backward_programs, reduce_param_grads
from ..ops.scalars import float_bits
from ..ops.tiles import backend_options, backward_tile, forward_tile
from ..runtime import errors
from ..runtime.dispatch import custom_op, device_guard, new_output, record_launch, use_triton
from ..runtime.validation import check_index_bounds
from . import reference

INT8_ROWS, BLOCKWISE_4BIT = 0, 1
_VARIANTS = {INT8_ROWS: "int8", BLOCKWISE_4BIT: "4bit"}


def table_format(codes: Tensor) -> int:
    """INT8_ROWS for int8 codes, BLOCKWISE_4BIT for packed 4-bit codes (any other dtype is a byte view)."""
    return INT8_ROWS if codes.dtype == torch.int8 else BLOCKWISE_4BIT


def _table_args(codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], dim: int, blocksize: int) -> tuple:
    """(codes, scales, codebook, block_shift, stride_cv, stride_cd, FORMAT) as the kernels take them."""
    fmt = table_format(codes)
    if fmt == INT8_ROWS:
        return codes, scales.contiguous(), scales, 0, codes.stride(0), codes.stride(1), fmt
    packed = codes.reshape(-1).view(torch.uint8).contiguous()
    return packed, scales.contiguous(), quant_map.contiguous(), blocksize.bit_length() - 1, dim, 1, fmt


def stable_forward_tile(config: tuning.Config, dim: int, wide: bool, fmt: int, backend: str | None = None
                        ) -> tuple[dict, dict, bool]:
    """``tiles.forward_tile``, but an int8 table's rows spread as its 16-byte code loads are (16 values per
    thread: otherwise the warps along a row would depend on the rows per program, and so would the row
    sums), and a 4-bit table's rows streamed in pieces (D > BLOCK_D) one per program: each element is three
    gathers (byte, block absmax, code value), whose addresses would otherwise spill. The forward's rows per
    program do not change any result; the warps follow D alone."""
    meta, options, single = forward_tile(config, dim, wide, backend, values=16 if fmt == INT8_ROWS else 8)
    if fmt == BLOCKWISE_4BIT and not single:
        meta["BLOCK_T"] = 1
    return meta, options, single


def _param_arg(param: Optional[Tensor], fallback: Tensor) -> tuple[Tensor, int]:
    return (param, param.stride(0)) if param is not None else (fallback, 0)


def gather(codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], indices: Tensor, num_rows: int, dim: int,
           blocksize: int, dtype: torch.dtype) -> Tensor:
    """The dequantized rows ``indices.shape + (D,)`` in ``dtype`` by the Triton kernel, reading only their
    codes and scales. Ids outside ``[0, V)`` give zero rows and are noted in the device's error record."""
    flat = indices.reshape(-1)
    num_tokens = flat.numel()
    out = new_output((*indices.shape, dim), dtype, codes.device)
    out_2d = out.view(num_tokens, dim)
    if num_tokens and dim:
        table, scale, book, shift, stride_cv, stride_cd, fmt = _table_args(codes, scales, quant_map, dim, blocksize)
        record = errors.record_for(codes.device)

        def launch(config: tuning.Config) -> None:
            meta, options = tuning.split(config)
            options = backend_options(options)
            meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
            grid = (triton.cdiv(num_tokens, meta["BLOCK_T"]), triton.cdiv(dim, meta["BLOCK_D"]))
            quantized_gather_kernel[grid](
                table, scale, book, flat, out_2d, record, num_tokens, dim, num_rows, shift, stride_cv, stride_cd,
                flat.stride(0), out_2d.stride(0), out_2d.stride(1), FORMAT=fmt, **meta, **options,
            )

        with device_guard(codes):  # timing runs rewrite only this call's output
            launch(tuning.choose("quantized_gather", dtype, dim, num_tokens, bench=launch, variant=_VARIANTS[fmt]))
        record_launch("quantized_gather_kernel")
    return out


def stable_forward(codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], indices: Tensor,
                   norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], num_rows: int, dim: int, blocksize: int,
                   eps: float, compute_dtype: torch.dtype, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``LayerNorm(rows.to(compute_dtype)).to(dtype)`` of the dequantized rows in one launch: (output
    ``indices.shape + (D,)``, flat mean, flat rstd)."""
    flat = indices.reshape(-1)
    num_tokens = flat.numel()
    acc = accumulator_dtype(compute_dtype)
    out = new_output((num_tokens, dim), dtype, codes.device)
    mean = new_output((num_tokens,), acc, codes.device)
    rstd = new_output((num_tokens,), acc, codes.device)
    if num_tokens and dim:
        table, scale, book, shift, stride_cv, stride_cd, fmt = _table_args(codes, scales, quant_map, dim, blocksize)
        gamma, stride_g = _param_arg(norm_weight, scale)
        beta, stride_b = _param_arg(norm_bias, scale)
        record = errors.record_for(codes.device)
        wide = acc == torch.float64

        def launch(config: tuning.Config) -> None:
            meta, options, single = stable_forward_tile(config, dim, wide, fmt)
            quantized_stable_fwd_kernel[(triton.cdiv(num_tokens, meta["BLOCK_T"]),)](
                table, scale, book, flat, gamma, beta, out, record, mean, rstd, num_tokens, dim, num_rows, shift,
                float_bits(eps), stride_cv, stride_cd, flat.stride(0), stride_g, stride_b, out.stride(0), out.stride(1),
                FORMAT=fmt, HAS_WEIGHT=norm_weight is not None, HAS_BIAS=norm_bias is not None,
                CAST_DTYPE=tl_dtype(compute_dtype), ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single, **meta, **options,
            )

        with device_guard(codes):  # the launch writes only its outputs: timing runs may rewrite them
            launch(tuning.choose("quantized_stable_forward", dtype, dim, num_tokens, bench=launch,
                                 variant=_VARIANTS[fmt]))
        record_launch("quantized_stable_fwd_kernel")
    elif num_tokens:
        mean.zero_()
        rstd.fill_(1.0 / (float(eps) ** 0.5))
    return out.view(*indices.shape, dim), mean, rstd


def stable_backward(grad: Tensor, codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], indices: Tensor,
                    norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
                    num_rows: int, dim: int, blocksize: int, compute_dtype: torch.dtype
                    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(dγ, dβ) of :func:`stable_forward` by the Triton kernels: two launches, the same bits for every config."""
    flat = indices.reshape(-1)
    num_tokens = flat.numel()
    device = codes.device
    dw = new_output(norm_weight.shape, norm_weight.dtype, device) if norm_weight is not None else None
    db = new_output(norm_bias.shape, norm_bias.dtype, device) if norm_bias is not None else None
    if dw is None and db is None:
        return dw, db
    if not num_tokens or not dim:
        for t in (dw, db):
            if t is not None:
                t.zero_()
        return dw, db
    grad_2d = grad.reshape(num_tokens, dim)
    acc = accumulator_dtype(compute_dtype)
    wide = acc == torch.float64
    table, scale, book, shift, stride_cv, stride_cd, fmt = _table_args(codes, scales, quant_map, dim, blocksize)
    gamma, stride_g = _param_arg(norm_weight, scale)
    programs, rows_per_program = backward_programs(num_tokens, backward_tile({}, dim, wide)[0]["BLOCK_T"])
    partial_w = new_output((programs, dim), acc, device)
    partial_b = new_output((programs, dim), acc, device)

    def launch(config: tuning.Config) -> None:
        meta, options, single = backward_tile(config, dim, wide)
        quantized_stable_bwd_kernel[(programs,)](
            table, scale, book, flat, grad_2d, gamma, mean, rstd, partial_w, partial_b, num_tokens, dim, num_rows,
            shift, rows_per_program, stride_cv, stride_cd, flat.stride(0), grad_2d.stride(0), grad_2d.stride(1),
            stride_g, FORMAT=fmt, HAS_WEIGHT=norm_weight is not None, CAST_DTYPE=tl_dtype(compute_dtype),
            ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single, **meta, **options,
        )

    with device_guard(codes):  # writes only its own partial rows (zeroed first): timing runs may rewrite them
        launch(tuning.choose("quantized_stable_backward", grad.dtype, dim, num_tokens, bench=launch,
                             variant=_VARIANTS[fmt]))
        record_launch("quantized_stable_bwd_kernel")
        reduce_param_grads(partial_w, partial_b, dw, db)
    return dw, db


# ----------------------------------------------------------------------------------------------------------
# Custom ops


@custom_op("triton_embed::quantized_embedding", mutates_args=())
def quantized_embedding(codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], indices: Tensor,
                        num_embeddings: int, embedding_dim: int, blocksize: int, out_dtype: torch.dtype) -> Tensor:
    """The dequantized rows ``indices.shape + (embedding_dim,)`` in ``out_dtype``."""
    if use_triton(codes, scales, quant_map):
        errors.before_call(codes.device)
        out = gather(codes, scales, quant_map, indices, num_embeddings, embedding_dim, blocksize, out_dtype)
        errors.after_call(codes.device)
        return out
    check_index_bounds(indices, num_embeddings)
    return reference.gather_rows(codes, scales, quant_map, indices, num_embeddings, embedding_dim,
                                           blocksize, out_dtype)


@quantized_embedding.register_fake
def _(codes, scales, quant_map, indices, num_embeddings, embedding_dim, blocksize, out_dtype):
    return codes.new_empty((*indices.shape, embedding_dim), dtype=out_dtype)


@custom_op("triton_embed::quantized_stable_embedding", mutates_args=())
def quantized_stable_embedding(
    codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], indices: Tensor, norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor], num_embeddings: int, embedding_dim: int, blocksize: int, eps: float,
    compute_dtype: torch.dtype, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """(``LayerNorm(rows.to(compute_dtype)).to(out_dtype)`` of the dequantized rows, flat mean, flat rstd)."""
    if use_triton(codes, scales, quant_map, norm_weight, norm_bias):
        errors.before_call(codes.device)
        result = stable_forward(codes, scales, quant_map, indices, norm_weight, norm_bias, num_embeddings,
                                embedding_dim, blocksize, eps, compute_dtype, out_dtype)
        errors.after_call(codes.device)
        return result
    check_index_bounds(indices, num_embeddings)
    rows = reference.gather_rows(codes, scales, quant_map, indices, num_embeddings, embedding_dim,
                                           blocksize, out_dtype)
    return reference.stable_forward(rows, norm_weight, norm_bias, eps, compute_dtype)


@quantized_stable_embedding.register_fake
def _(codes, scales, quant_map, indices, norm_weight, norm_bias, num_embeddings, embedding_dim, blocksize, eps,
      compute_dtype, out_dtype):
    acc = accumulator_dtype(compute_dtype)
    num_tokens = indices.numel()
    return (codes.new_empty((*indices.shape, embedding_dim), dtype=out_dtype),
            codes.new_empty((num_tokens,), dtype=acc), codes.new_empty((num_tokens,), dtype=acc))


@custom_op("triton_embed::quantized_stable_embedding_backward", mutates_args=())
def quantized_stable_embedding_backward(
    grad: Tensor, codes: Tensor, scales: Tensor, quant_map: Optional[Tensor], indices: Tensor,
    norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], mean: Tensor, rstd: Tensor, num_embeddings: int,
    embedding_dim: int, blocksize: int, eps: float, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(dγ, dβ) of ``triton_embed::quantized_stable_embedding``, each empty (0,) where the parameter is None."""
    if use_triton(codes, grad, norm_weight, norm_bias):
        errors.before_call(codes.device)
        dw, db = stable_backward(grad, codes, scales, quant_map, indices, norm_weight, norm_bias, mean, rstd,
                                 num_embeddings, embedding_dim, blocksize, compute_dtype)
    elif indices.numel() and embedding_dim:
        rows = reference.gather_rows(codes, scales, quant_map, indices, num_embeddings, embedding_dim,
                                               blocksize, grad.dtype)
        dw, db = reference.stable_backward(grad, rows, norm_weight, norm_bias, eps, compute_dtype)
    else:
        dw = torch.zeros_like(norm_weight) if norm_weight is not None else None
        db = torch.zeros_like(norm_bias) if norm_bias is not None else None
    empty = scales.new_empty((0,))
    return dw if dw is not None else empty, db if db is not None else empty.clone()


@quantized_stable_embedding_backward.register_fake
def _(grad, codes, scales, quant_map, indices, norm_weight, norm_bias, mean, rstd, num_embeddings, embedding_dim,
      blocksize, eps, compute_dtype):
    dw = norm_weight.new_empty(norm_weight.shape) if norm_weight is not None else scales.new_empty((0,))
    db = norm_bias.new_empty(norm_bias.shape) if norm_bias is not None else scales.new_empty((0,))
    return dw, db


def _setup_context(ctx, inputs, output) -> None:
    codes, scales, quant_map, indices, norm_weight, norm_bias, rows, dim, blocksize, eps, compute_dtype, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(codes, scales, quant_map, indices, norm_weight, norm_bias, mean, rstd)
    ctx.options = (rows, dim, blocksize, eps, compute_dtype)


def _backward(ctx, grad: Optional[Tensor], _grad_mean, _grad_rstd):
    if grad is None:
        return (None,) * 12
    codes, scales, quant_map, indices, norm_weight, norm_bias, mean, rstd = ctx.saved_tensors
    rows, dim, blocksize, eps, compute_dtype = ctx.options
    dw, db = torch.ops.triton_embed.quantized_stable_embedding_backward(
        grad, codes, scales, quant_map, indices, norm_weight, norm_bias, mean, rstd, rows, dim, blocksize, eps,
        compute_dtype,
    )
    return (None, None, None, None,
            dw if norm_weight is not None and ctx.needs_input_grad[4] else None,
            db if norm_bias is not None and ctx.needs_input_grad[5] else None,
            None, None, None, None, None, None)


quantized_stable_embedding.register_autograd(_backward, setup_context=_setup_context)


__all__ = ["quantized_embedding", "quantized_stable_embedding", "quantized_stable_embedding_backward", "gather",
           "stable_forward", "stable_backward", "table_format", "INT8_ROWS", "BLOCKWISE_4BIT"]
