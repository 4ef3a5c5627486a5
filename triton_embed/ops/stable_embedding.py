"""Fused StableEmbedding: launchers of ``kernels/stable_embedding.py`` and the custom ops
``triton_embed::stable_embedding`` / ``triton_embed::stable_embedding_backward`` (fake implementations for
tracing, a registered autograd formula), which dispatch to the launchers or to the reference path.

Launches: forward, one (``stable_embedding_fwd_kernel``). Dense backward, atomic: two (the fused
LayerNorm backward + scatter-add into a float accumulator, then one grid that turns the accumulator into
the weight gradient and finishes dγ/dβ); deterministic: three (LayerNorm backward writing d(emb) rows,
then segment sums + dγ/dβ in one grid, then the segment carry pass). With scale_grad_by_freq the first
launch also counts the ids (integer atomics): no host sync anywhere.
Saved for backward: the indices and float32 (float64 under a float64 default dtype) mean and rstd per
token, besides the parameters themselves; nothing N x D.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
from torch import Tensor

from triton_embed.kernels.scatter import segment_sum_carry_kernel
from triton_embed.kernels.stable_embedding import (
    stable_embedding_bwd_kernel,
    stable_embedding_fwd_kernel,
    stable_grad_finish_kernel,
    stable_segment_sum_kernel,
)

from .. import reference, tuning
from .._dispatch import device_guard, new_output, record_launch, use_triton
from .._validation import check_index_bounds
from .embedding import sparse_backward
from .layer_norm import (
    accumulator_dtype,
    backward_programs,
    reduce_param_grads,
    row_blocks,
    split_config,
    tl_dtype,
)
from .scalars import float_bits

#: ``mode`` of ``triton_embed::stable_embedding_backward``: the weight gradient it returns.
WEIGHT_GRAD_DENSE = 0  # (V, D) in the weight's dtype
WEIGHT_GRAD_ROWS = 1  # (N, D) d(emb) rows in the weight's dtype (sparse gradients are built from them)
WEIGHT_GRAD_NONE = 2  # (0, D): the table needs no gradient; only dγ/dβ

_KERNEL_DX_STORE, _KERNEL_DX_ATOMIC_ADD, _KERNEL_DX_NONE = 0, 1, 2


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
    ``indices.shape + (D,)``, flat per-token mean, flat per-token rstd)."""
    flat = indices.reshape(-1)
    num_tokens = flat.numel()
    num_rows, dim = weight.shape
    acc = accumulator_dtype(compute_dtype)
    out = new_output((num_tokens, dim), weight.dtype, weight.device)
    mean = new_output((num_tokens,), acc, weight.device)
    rstd = new_output((num_tokens,), acc, weight.device)
    if num_tokens and dim:
        gamma, stride_g = _param_arg(norm_weight, weight)
        beta, stride_b = _param_arg(norm_bias, weight)

        def launch(config: tuning.Config) -> None:
            meta, options, single = row_blocks(config, dim, acc == torch.float64)
            grid = (triton.cdiv(num_tokens, meta["BLOCK_T"]),)
            stable_embedding_fwd_kernel[grid](
                weight, flat, gamma, beta, out, mean, rstd, num_tokens, dim, num_rows, float_bits(eps),
                weight.stride(0), weight.stride(1), flat.stride(0), stride_g, stride_b, out.stride(0), out.stride(1),
                HAS_WEIGHT=norm_weight is not None, HAS_BIAS=norm_bias is not None,
                CAST_DTYPE=tl_dtype(compute_dtype), ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single,
                **meta, **options,
            )

        # The launch writes only its outputs: timing runs may rewrite them.
        with device_guard(weight):
            launch(tuning.choose("stable_forward", weight.dtype, dim, num_tokens, bench=launch))
        record_launch("stable_embedding_fwd_kernel")
    elif num_tokens:
        mean.zero_()
        rstd.fill_(1.0 / (float(eps) ** 0.5))
    return out.view(*indices.shape, dim), mean, rstd


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
    deterministic: bool,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(weight gradient as ``mode`` says, dγ, dβ) of the fused forward, by the Triton kernels."""
    # Checked here too, so that torch.use_deterministic_algorithms(True) around backward() alone is honoured.
    deterministic = deterministic or torch.are_deterministic_algorithms_enabled()
    num_rows, dim = weight.shape
    flat = indices.reshape(-1)
    num_tokens = flat.numel()
    grad_2d = grad.reshape(num_tokens, dim)
    acc = accumulator_dtype(compute_dtype)
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

    gamma, stride_g = _param_arg(norm_weight, weight)
    dense = mode == WEIGHT_GRAD_DENSE
    count_ids = dense and scale_grad_by_freq
    if dense and not deterministic:
        kernel_mode = _KERNEL_DX_ATOMIC_ADD
    elif mode == WEIGHT_GRAD_NONE:
        kernel_mode = _KERNEL_DX_NONE
    else:
        kernel_mode = _KERNEL_DX_STORE

    def allocate(config: tuning.Config):
        """(launch arguments, partial_w, partial_b, counts, dst) for one config: partials per program."""
        meta, options, single = row_blocks(config, dim, acc == torch.float64)
        programs, rows_per_program = backward_programs(device, num_tokens, meta["BLOCK_T"])
        partial_w = new_output((programs, dim), acc, device)
        partial_b = new_output((programs, dim), acc, device)
        counts = torch.zeros(num_rows, dtype=torch.int32, device=device) if count_ids else flat.new_empty(1)
        if kernel_mode == _KERNEL_DX_ATOMIC_ADD:
            dst = torch.zeros((num_rows, dim), dtype=accumulator_dtype(weight.dtype), device=device)
        elif kernel_mode == _KERNEL_DX_NONE:
            dst = partial_w
        else:
            dst = new_output((num_tokens, dim), weight.dtype, device)
        return (meta, options, single, programs, rows_per_program), partial_w, partial_b, counts, dst

    def launch(config: tuning.Config, buffers=None):
        (meta, options, single, programs, rows_per_program), partial_w, partial_b, counts, dst = (
            buffers or allocate(config)
        )
        stable_embedding_bwd_kernel[(programs,)](
            weight, flat, grad_2d, gamma, mean, rstd, counts, dst, partial_w, partial_b,
            num_tokens, dim, num_rows, padding_idx, rows_per_program,
            weight.stride(0), weight.stride(1), flat.stride(0), grad_2d.stride(0), grad_2d.stride(1), stride_g,
            dst.stride(0), dst.stride(1),
            MODE=kernel_mode, COUNT_IDS=count_ids, HAS_WEIGHT=norm_weight is not None,
            CAST_DTYPE=tl_dtype(compute_dtype), ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single,
            **meta, **options,
        )

    scratch: dict = {}

    def bench(config: tuning.Config) -> None:
        # Timing runs (bench tuning) launch into scratch buffers of their own, allocated once per config,
        # never into the real ones; what accumulates there is discarded.
        key = tuple(sorted(config.items()))
        if key not in scratch:
            scratch[key] = allocate(config)
        launch(config, scratch[key])

    with device_guard(weight):
        config = tuning.choose("stable_backward", weight.dtype, dim, num_tokens, bench=bench)
        buffers = allocate(config)
        launch(config, buffers)
        _, partial_w, partial_b, counts, dst = buffers
        record_launch("stable_embedding_bwd_kernel")
        if dense and deterministic:
            grad_weight = _segment_sum_with_param_grads(
                dst, flat, counts, num_rows, padding_idx, scale_grad_by_freq, partial_w, partial_b, dw, db
            )
        elif dense:
            grad_weight = _finish_atomic(dst, counts, weight.dtype, scale_grad_by_freq, partial_w, partial_b, dw, db)
        else:
            reduce_param_grads(partial_w, partial_b, dw, db)
            grad_weight = dst if mode == WEIGHT_GRAD_ROWS else weight.new_empty((0, dim))
    return grad_weight, dw, db


def _finish_atomic(
    acc: Tensor, counts: Tensor, dtype: torch.dtype, scale_grad_by_freq: bool,
    partial_w: Tensor, partial_b: Tensor, dw: Optional[Tensor], db: Optional[Tensor],
) -> Tensor:
    """The weight gradient from the float accumulator (divided by the id counts, rounded to ``dtype``) and
    dγ/dβ from the partials, in one launch. A float32/64 table without scaling takes the accumulator as is."""
    num_rows, dim = acc.shape
    out = acc if acc.dtype == dtype else new_output((num_rows, dim), dtype, acc.device)
    config = tuning.choose("stable_finish", dtype, dim, num_rows)
    meta, options = split_config(config)
    meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
    num_partials = partial_w.shape[0]
    meta["BLOCK_P"] = min(meta["BLOCK_P"], triton.next_power_of_2(num_partials))
    needs_rows = out is not acc or scale_grad_by_freq
    row_programs = triton.cdiv(num_rows, meta["BLOCK_V"]) if needs_rows else 0
    dw_arg = dw if dw is not None else partial_w
    db_arg = db if db is not None else partial_b
    stable_grad_finish_kernel[(row_programs + 1, triton.cdiv(dim, meta["BLOCK_D"]))](
        acc, counts, out, partial_w, partial_b, dw_arg, db_arg, num_rows, dim, num_partials, row_programs,
        out.stride(0), out.stride(1), dw_arg.stride(0), db_arg.stride(0),
        SCALE_BY_FREQ=scale_grad_by_freq, HAS_WEIGHT=dw is not None, HAS_BIAS=db is not None, **meta, **options,
    )
    record_launch("stable_grad_finish_kernel")
    return out


def _segment_sum_with_param_grads(
    rows: Tensor, flat: Tensor, counts: Tensor, num_rows: int, padding_idx: int, scale_grad_by_freq: bool,
    partial_w: Tensor, partial_b: Tensor, dw: Optional[Tensor], db: Optional[Tensor],
) -> Tensor:
    """The deterministic weight gradient from the d(emb) rows (sorted segment sums, fixed order), with
    dγ/dβ finished by extra programs of the same launch: two launches."""
    num_tokens, dim = rows.shape
    seg_acc = accumulator_dtype(rows.dtype)
    out = torch.zeros((num_rows, dim), dtype=rows.dtype, device=rows.device)
    sorted_ids, order = torch.sort(flat.contiguous(), stable=True)
    config = tuning.choose("stable_segment_sum", rows.dtype, dim, num_tokens)
    meta, options = split_config(config)
    meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
    num_partials = partial_w.shape[0]
    meta["BLOCK_P"] = min(meta["BLOCK_P"], triton.next_power_of_2(num_partials))
    num_chunks = triton.cdiv(num_tokens, meta["CHUNK"])
    head = new_output((num_chunks, dim), seg_acc, rows.device)
    tail = new_output((num_chunks, dim), seg_acc, rows.device)
    dw_arg = dw if dw is not None else partial_w
    db_arg = db if db is not None else partial_b
    col_blocks = triton.cdiv(dim, meta["BLOCK_D"])
    stable_segment_sum_kernel[(num_chunks + 1, col_blocks)](
        rows, sorted_ids, order, counts, out, head, tail, partial_w, partial_b, dw_arg, db_arg,
        num_tokens, dim, num_partials, num_chunks, padding_idx,
        rows.stride(0), rows.stride(1), out.stride(0), out.stride(1), dw_arg.stride(0), db_arg.stride(0),
        SCALE_BY_FREQ=scale_grad_by_freq, ACC_DTYPE=tl_dtype(seg_acc),
        HAS_WEIGHT=dw is not None, HAS_BIAS=db is not None, **meta, **options,
    )
    record_launch("stable_segment_sum_kernel")
    segment_sum_carry_kernel[(num_chunks, col_blocks)](
        sorted_ids, counts, out, head, tail, num_tokens, dim, padding_idx, out.stride(0), out.stride(1),
        CHUNK=meta["CHUNK"], BLOCK_D=meta["BLOCK_D"], SCALE_BY_FREQ=scale_grad_by_freq, **options,
    )
    record_launch("segment_sum_carry_kernel")
    return out


# ----------------------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("triton_embed::stable_embedding", mutates_args=())
def stable_embedding(
    weight: Tensor,
    indices: Tensor,
    norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor],
    eps: float,
    compute_dtype: torch.dtype,
    padding_idx: int,
    scale_grad_by_freq: bool,
    sparse: bool,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(``LayerNorm(weight[indices].to(compute_dtype)).to(weight.dtype)``, flat mean, flat rstd).

    ``padding_idx`` (-1: none), ``scale_grad_by_freq``, ``sparse`` and ``deterministic`` only shape the
    backward."""
    check_index_bounds(indices, weight.shape[0])
    if use_triton(weight, norm_weight, norm_bias):
        return forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype)
    return reference.stable_embedding_forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype)


@stable_embedding.register_fake
def _(weight, indices, norm_weight, norm_bias, eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse,
      deterministic):
    acc = accumulator_dtype(compute_dtype)
    num_tokens = indices.numel()
    return (
        weight.new_empty((*indices.shape, weight.shape[1])),
        weight.new_empty((num_tokens,), dtype=acc),
        weight.new_empty((num_tokens,), dtype=acc),
    )


@torch.library.custom_op("triton_embed::stable_embedding_backward", mutates_args=())
def stable_embedding_backward(
    grad: Tensor,
    weight: Tensor,
    indices: Tensor,
    norm_weight: Optional[Tensor],
    norm_bias: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    eps: float,
    compute_dtype: torch.dtype,
    mode: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(weight gradient per ``mode``: WEIGHT_GRAD_DENSE (V, D), WEIGHT_GRAD_ROWS (N, D) d(emb) rows,
    WEIGHT_GRAD_NONE (0, D); dγ; dβ), dγ/dβ empty (0,) where the parameter is None."""
    if use_triton(weight, grad, norm_weight, norm_bias):
        grad_weight, dw, db = backward(
            grad, weight, indices, norm_weight, norm_bias, mean, rstd, compute_dtype, mode, padding_idx,
            scale_grad_by_freq, deterministic,
        )
    else:
        rows, dw, db = reference.stable_embedding_backward(
            grad, weight, indices, norm_weight, norm_bias, eps, compute_dtype
        )
        if mode == WEIGHT_GRAD_DENSE:
            grad_weight = reference.embedding_dense_backward(
                rows, indices, weight.shape[0], padding_idx, scale_grad_by_freq
            )
        elif mode == WEIGHT_GRAD_ROWS:
            grad_weight = rows
        else:
            grad_weight = weight.new_empty((0, weight.shape[1]))
    empty = weight.new_empty((0,))
    return grad_weight, dw if dw is not None else empty, db if db is not None else empty.clone()


@stable_embedding_backward.register_fake
def _(grad, weight, indices, norm_weight, norm_bias, mean, rstd, eps, compute_dtype, mode, padding_idx,
      scale_grad_by_freq, deterministic):
    dim = weight.shape[1]
    if mode == WEIGHT_GRAD_DENSE:
        grad_weight = weight.new_empty(weight.shape)
    elif mode == WEIGHT_GRAD_ROWS:
        grad_weight = weight.new_empty((indices.numel(), dim))
    else:
        grad_weight = weight.new_empty((0, dim))
    dw = norm_weight.new_empty(norm_weight.shape) if norm_weight is not None else weight.new_empty((0,))
    db = norm_bias.new_empty(norm_bias.shape) if norm_bias is not None else weight.new_empty((0,))
    return grad_weight, dw, db


def _setup_context(ctx, inputs, output) -> None:
    weight, indices, norm_weight, norm_bias, eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse, det = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    # Indices, O(N) statistics and the parameters themselves: no N x D activation.
    ctx.save_for_backward(weight, indices, norm_weight, norm_bias, mean, rstd)
    ctx.options = (eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse, det)


def _backward(ctx, grad: Tensor, _grad_mean, _grad_rstd):
    weight, indices, norm_weight, norm_bias, mean, rstd = ctx.saved_tensors
    eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse, deterministic = ctx.options
    if not ctx.needs_input_grad[0]:
        mode = WEIGHT_GRAD_NONE
    elif sparse:
        mode = WEIGHT_GRAD_ROWS
    else:
        mode = WEIGHT_GRAD_DENSE
    grad_weight, dw, db = torch.ops.triton_embed.stable_embedding_backward(
        grad, weight, indices, norm_weight, norm_bias, mean, rstd, eps, compute_dtype, mode, padding_idx,
        scale_grad_by_freq, deterministic,
    )
    if mode == WEIGHT_GRAD_NONE:
        grad_weight = None
    elif mode == WEIGHT_GRAD_ROWS:
        grad_weight = sparse_backward(grad_weight, indices, weight.shape[0], padding_idx, scale_grad_by_freq)
    return (
        grad_weight,
        None,
        dw if norm_weight is not None and ctx.needs_input_grad[2] else None,
        db if norm_bias is not None and ctx.needs_input_grad[3] else None,
        None, None, None, None, None, None,
    )


stable_embedding.register_autograd(_backward, setup_context=_setup_context)


__all__ = [
    "stable_embedding",
    "stable_embedding_backward",
    "forward",
    "backward",
    "WEIGHT_GRAD_DENSE",
    "WEIGHT_GRAD_ROWS",
    "WEIGHT_GRAD_NONE",
]
