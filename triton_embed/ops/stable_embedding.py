"""Fused StableEmbedding: the custom ops ``triton_embed::stable_embedding`` / ``triton_embed::stable_embedding_backward``
(fake implementations for tracing, a registered autograd formula), which dispatch to the launchers
(``stable_launch.py``) or to the reference path.

Launches: forward, one (``stable_embedding_fwd_kernel``); dense backward, three plus a sort of the ids (see
``stable_launch.py``). Saved for backward: the indices and float32 (float64 under a float64 default dtype) mean
and rstd per token, besides the parameters themselves; nothing N x D.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


from .. import reference
from ..runtime import errors
from ..runtime.dispatch import custom_op, run_op, use_triton
from ..runtime.validation import check_index_bounds, explained, ids_checked_by_torch
from .dtypes import accumulator_dtype
from .embedding import sparse_backward

from .stable_launch import WEIGHT_GRAD_DENSE, WEIGHT_GRAD_NONE, WEIGHT_GRAD_ROWS, backward, forward


@custom_op("triton_embed::stable_embedding", mutates_args=())
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
    kernels = use_triton(weight, norm_weight, norm_bias)
    if not kernels and not ids_checked_by_torch(indices):
        check_index_bounds(indices, weight.shape[0])
    return fused_forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype, kernels)


def fused_forward(
    weight: Tensor, indices: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], eps: float,
    compute_dtype: torch.dtype, kernels: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op's forward by the kernel (``kernels``) or the reference path, as the caller chose; bad ids are
    handled as in :func:`triton_embed.ops.embedding.lookup`."""
    if kernels:
        device = weight.device
        errors.before_call(device)
        result = forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype)
        errors.after_call(device)
        return result
    try:  # the lookup comes first: a bad id raises before anything is computed
        return reference.stable_embedding_forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype)
    except IndexError as error:
        raise explained(error, indices, weight.shape[0]) from None


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


@custom_op("triton_embed::stable_embedding_backward", mutates_args=())
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
        errors.before_call(weight.device)
        grad_weight, dw, db = backward(
            grad, weight, indices, norm_weight, norm_bias, mean, rstd, compute_dtype, mode, padding_idx,
            scale_grad_by_freq, deterministic,
        )
    else:
        rows, dw, db = reference.stable_embedding_backward(
            grad, weight, indices, norm_weight, norm_bias, eps, compute_dtype, mean, rstd
        )
        if mode == WEIGHT_GRAD_DENSE:
            grad_weight = reference.embedding_dense_backward(
                rows, indices, weight.shape[0], padding_idx, scale_grad_by_freq
            )
        elif mode == WEIGHT_GRAD_ROWS:
            grad_weight = rows
        else:
            grad_weight = weight.new_empty((0, weight.shape[1]))
    return (grad_weight, dw if dw is not None else weight.new_empty((0,)),
            db if db is not None else weight.new_empty((0,)))


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
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients
    # Indices, O(N) statistics and the parameters themselves: no N x D activation.
    ctx.save_for_backward(weight, indices, norm_weight, norm_bias, mean, rstd)
    ctx.options = (eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse, det)


def _backward(ctx, grad: Optional[Tensor], _grad_mean, _grad_rstd):
    if grad is None:  # gradients are not materialised: nothing flowed back into the output
        return (None,) * 10
    return (*gradients(ctx, grad), None, None, None, None, None, None)


def gradients(ctx, grad: Tensor) -> tuple[Optional[Tensor], None, Optional[Tensor], Optional[Tensor]]:
    """(d weight, None, dγ, dβ) of the fused forward whose ``ctx`` holds (weight, indices, γ, β, mean, rstd)
    and ``options``; a gradient its input does not need is None."""
    weight, indices, norm_weight, norm_bias, mean, rstd = ctx.saved_tensors
    eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse, deterministic = ctx.options
    if not ctx.needs_input_grad[0]:
        mode = WEIGHT_GRAD_NONE
    elif sparse:
        mode = WEIGHT_GRAD_ROWS
    else:
        mode = WEIGHT_GRAD_DENSE
    grad_weight, dw, db = run_op(
        "stable_embedding_backward", grad, weight, indices, norm_weight, norm_bias, mean, rstd, eps, compute_dtype,
        mode, padding_idx, scale_grad_by_freq, deterministic,
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
    )


stable_embedding.register_autograd(_backward, setup_context=_setup_context)


__all__ = [
    "stable_embedding",
    "stable_embedding_backward",
    "forward",
    "backward",
    "fused_forward",
    "gradients",
    "WEIGHT_GRAD_DENSE",
    "WEIGHT_GRAD_ROWS",
    "WEIGHT_GRAD_NONE",
]
