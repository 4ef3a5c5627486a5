"""LayerNorm over the last dim: launchers of the kernels in ``kernels/layer_norm_forward.py`` and ``layer_norm_backward.py`` and the custom ops
``triton_embed::layer_norm`` / ``triton_embed::layer_norm_backward`` (fake implementations for tracing, a
registered autograd formula), which dispatch to the launchers or to the reference path."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from triton_embed.kernels.layer_norm_backward import layer_norm_bwd_kernel, layer_norm_param_grad_kernel
from triton_embed.kernels.layer_norm_forward import layer_norm_fwd_kernel
from triton_embed.kernels.reductions import PARTIAL_GROUP

from .. import reference, tuning
from ..runtime import errors
from ..runtime.dispatch import custom_op, device_guard, new_output, record_launch, run_op, use_triton
from .dtypes import accumulator_dtype, tl_dtype
from .plans import cdiv, plan
from .scalars import float_bits
from .tiles import backward_tile, column_tile, forward_tile

#: Most dγ/dβ partial rows (backward programs): enough programs to fill a GPU, few rows to reduce.
MAX_PARTIALS = 1024


def backward_programs(num_tokens: int, block_t: int) -> tuple[int, int]:
    """(programs, rows per program) of a backward launch: each program owns a contiguous run of whole row
    tiles and writes one row of dγ/dβ partials. A function of the shape alone (not of the GPU or the
    config), so the partials, and the gradients, repeat bitwise everywhere."""
    tiles = cdiv(num_tokens, block_t)
    tiles_per_program = cdiv(tiles, min(tiles, MAX_PARTIALS))
    return cdiv(tiles, tiles_per_program), tiles_per_program * block_t


def reduce_param_grads(
    partial_w: Tensor, partial_b: Tensor, dw: Optional[Tensor], db: Optional[Tensor]
) -> None:
    """dγ/dβ from the (P, D) partials: fixed-order column sums (one launch)."""
    num_partials, dim = partial_w.shape
    if dw is None and db is None:
        return
    dw_arg = dw if dw is not None else partial_w
    db_arg = db if db is not None else partial_b

    def launch(config: tuning.Config) -> None:
        # Each program reduces PARTIAL_GROUP partial rows of dγ and of dβ at a time.
        meta, options = plan(column_tile, config, dim, 2 * PARTIAL_GROUP.value, partial_w.dtype == torch.float64)
        layer_norm_param_grad_kernel[(cdiv(dim, meta["BLOCK_D"]),)](
            partial_w, partial_b, dw_arg, db_arg, num_partials, dim, dw_arg.stride(0), db_arg.stride(0),
            HAS_WEIGHT=dw is not None, HAS_BIAS=db is not None, **meta, **options,
        )

    # Writes only its outputs, from inputs it never changes: timing runs need no scratch.
    launch(tuning.choose("layer_norm_param_grad", partial_w.dtype, dim, num_partials, bench=launch))
    record_launch("layer_norm_param_grad_kernel")


def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the last dim of ``x`` by the Triton kernel: (y like x, mean, rstd), statistics in
    float32 (float64 for float64 x) with shape ``x.shape[:-1]``."""
    dim = x.shape[-1]
    num_tokens = math.prod(x.shape[:-1])
    x_2d = x.reshape(num_tokens, dim)
    acc = accumulator_dtype(x.dtype)
    y = new_output((num_tokens, dim), x.dtype, x.device)
    mean = new_output((num_tokens,), acc, x.device)
    rstd = new_output((num_tokens,), acc, x.device)
    if num_tokens and dim:
        w_arg = weight if weight is not None else x_2d
        b_arg = bias if bias is not None else x_2d

        def launch(config: tuning.Config) -> None:
            meta, options, single = plan(forward_tile, config, dim, acc == torch.float64)
            grid = (cdiv(num_tokens, meta["BLOCK_T"]),)
            layer_norm_fwd_kernel[grid](
                x_2d, w_arg, b_arg, y, mean, rstd, num_tokens, dim, float_bits(eps),
                x_2d.stride(0), x_2d.stride(1),
                w_arg.stride(0) if weight is not None else 0, b_arg.stride(0) if bias is not None else 0,
                y.stride(0), y.stride(1),
                HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ACC_DTYPE=tl_dtype(acc),
                SINGLE_BLOCK=single, **meta, **options,
            )

        with device_guard(x):
            launch(tuning.choose("layer_norm", x.dtype, dim, num_tokens, bench=launch))
        record_launch("layer_norm_fwd_kernel")
    elif num_tokens:
        mean.zero_()
        rstd.fill_(1.0 / (float(eps) ** 0.5))
    return y.view(x.shape), mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


def backward(
    grad: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(dx, dγ, dβ) of LayerNorm by the Triton kernels: two launches, deterministic (no atomics), the same
    bits for every config."""
    dim = x.shape[-1]
    num_tokens = math.prod(x.shape[:-1])
    x_2d = x.reshape(num_tokens, dim)
    grad_2d = grad.reshape(num_tokens, dim)
    acc = accumulator_dtype(x.dtype)
    dx = new_output((num_tokens, dim), x.dtype, x.device)
    dw = new_output(weight.shape, weight.dtype, weight.device) if weight is not None else None
    db = new_output(bias.shape, bias.dtype, bias.device) if bias is not None else None
    if not num_tokens or not dim:
        for t in (dw, db):
            if t is not None:
                t.zero_()
        return dx.view(x.shape), dw, db
    mean_1d = mean.reshape(-1)
    rstd_1d = rstd.reshape(-1)
    w_arg = weight if weight is not None else x_2d
    wide = acc == torch.float64
    block_t = backward_tile({}, dim, wide)[0]["BLOCK_T"]
    programs, rows_per_program = backward_programs(num_tokens, block_t)
    partial_w = new_output((programs, dim), acc, x.device)
    partial_b = new_output((programs, dim), acc, x.device)

    def launch(config: tuning.Config) -> None:
        meta, options, single = plan(backward_tile, config, dim, wide)
        layer_norm_bwd_kernel[(programs,)](
            x_2d, grad_2d, w_arg, mean_1d, rstd_1d, dx, partial_w, partial_b,
            num_tokens, dim, rows_per_program,
            x_2d.stride(0), x_2d.stride(1), grad_2d.stride(0), grad_2d.stride(1),
            w_arg.stride(0) if weight is not None else 0, dx.stride(0), dx.stride(1),
            HAS_WEIGHT=weight is not None, ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single, **meta, **options,
        )

    with device_guard(x):
        # Writes only dx and its own partial rows (zeroed first): timing runs may launch into them.
        launch(tuning.choose("layer_norm_backward", x.dtype, dim, num_tokens, bench=launch))
        record_launch("layer_norm_bwd_kernel")
        reduce_param_grads(partial_w, partial_b, dw, db)
    return dx.view(x.shape), dw, db


# ----------------------------------------------------------------------------------------------------------
# Custom ops


@custom_op("triton_embed::layer_norm", mutates_args=())
def layer_norm(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the last dim: (output like ``input``, mean, rstd), statistics ``input.shape[:-1]``
    in float32 (float64 for float64 input)."""
    if use_triton(input, weight, bias):
        errors.before_call(input.device)  # a pending out-of-range report is raised by every op on the device
        return forward(input, weight, bias, eps)
    return reference.layer_norm_forward(input, weight, bias, eps)


@layer_norm.register_fake
def _(input, weight, bias, eps):
    acc = accumulator_dtype(input.dtype)
    stats_shape = input.shape[:-1]
    return input.new_empty(input.shape), input.new_empty(stats_shape, dtype=acc), input.new_empty(stats_shape, dtype=acc)


@custom_op("triton_embed::layer_norm_backward", mutates_args=())
def layer_norm_backward(
    grad: Tensor, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dγ, dβ) of ``triton_embed::layer_norm``; dγ/dβ are empty (0,) tensors where weight/bias are None."""
    if use_triton(input, weight, bias):
        errors.before_call(input.device)
        dx, dw, db = backward(grad, input, weight, bias, mean, rstd)
    else:
        dx, dw, db = reference.layer_norm_backward(grad, input, weight, bias, mean, rstd, eps)
    return dx, _or_empty(dw, input), _or_empty(db, input)


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return t if t is not None else like.new_empty((0,))


@layer_norm_backward.register_fake
def _(grad, input, weight, bias, mean, rstd, eps):
    dw = weight.new_empty(weight.shape) if weight is not None else input.new_empty((0,))
    db = bias.new_empty(bias.shape) if bias is not None else input.new_empty((0,))
    return input.new_empty(input.shape), dw, db


def _layer_norm_setup_context(ctx, inputs, output) -> None:
    input, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) gradients
    ctx.save_for_backward(input, weight, bias, mean, rstd)
    ctx.eps = eps


def _layer_norm_autograd(ctx, grad: Optional[Tensor], _grad_mean, _grad_rstd):
    if grad is None:  # gradients are not materialised: nothing flowed back into the output
        return None, None, None, None
    input, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = run_op("layer_norm_backward", grad, input, weight, bias, mean, rstd, ctx.eps)
    return (
        dx if ctx.needs_input_grad[0] else None,
        dw if weight is not None and ctx.needs_input_grad[1] else None,
        db if bias is not None and ctx.needs_input_grad[2] else None,
        None,
    )


layer_norm.register_autograd(_layer_norm_autograd, setup_context=_layer_norm_setup_context)


__all__ = ["layer_norm", "layer_norm_backward", "forward", "backward", "reduce_param_grads", "backward_programs",
           "accumulator_dtype", "tl_dtype"]
