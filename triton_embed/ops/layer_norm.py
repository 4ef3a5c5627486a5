"""LayerNorm over the last dim: launchers of the kernels in ``kernels/layer_norm.py`` and the custom ops
``triton_embed::layer_norm`` / ``triton_embed::layer_norm_backward`` (fake implementations for tracing, a
registered autograd formula), which dispatch to the launchers or to the reference path."""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from triton_embed.kernels.layer_norm import layer_norm_bwd_kernel, layer_norm_fwd_kernel, layer_norm_param_grad_kernel

from .. import reference, tuning
from .._dispatch import device_guard, interpreter_enabled, new_output, record_launch, use_triton
from .scalars import float_bits

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}

#: Largest token tile edge: when D is small the tile grows in tokens instead, up to this many rows.
MAX_BLOCK_T = 128
#: Register cap passed to ptxas (``maxnreg``) when a config names none. Without one, ptxas sometimes
#: squeezes a tile into 40-64 registers with a small spill to gain occupancy; with it, the kernels compile
#: spill-free (128 is also the hardware limit at 16 warps).
MAX_REGISTERS = 128


def split_config(config: tuning.Config) -> tuple[dict[str, int], dict[str, int]]:
    """``tuning.split`` with ``maxnreg`` (a ptxas option that some of these families' configs carry) moved
    from the constexprs to the launch options."""
    meta, options = tuning.split(config)
    if "maxnreg" in meta:
        options["maxnreg"] = meta.pop("maxnreg")
    return meta, options
#: Backward programs per SM: each owns a contiguous run of rows and writes one row of dγ/dβ partials.
PROGRAMS_PER_SM = 4
#: Backward programs under the interpreter: few, so that each one loops over several row blocks.
INTERPRETER_PROGRAMS = 3


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of a floating torch dtype."""
    try:
        return _TL_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"triton_embed: unsupported floating dtype {dtype}") from None


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and reductions run in float32, or float64 when the data are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_blocks(
    config: tuning.Config, dim: int, wide_accumulator: bool = False
) -> tuple[dict[str, int], dict[str, int], bool]:
    """(constexprs, launch options, single_block) of a config for rows of ``dim`` elements.

    ``BLOCK_D`` is capped at the next power of two of ``dim``; when that shrinks it, ``BLOCK_T`` grows so
    the tile keeps (at most) the config's BLOCK_T x BLOCK_D elements. With ``wide_accumulator`` (float64
    statistics) the config's BLOCK_D is halved first. The options carry ``maxnreg``."""
    meta, options = split_config(config)
    options.setdefault("maxnreg", MAX_REGISTERS)
    if wide_accumulator:
        # float64 math needs twice the registers per element: half the tile.
        meta["BLOCK_D"] = max(meta["BLOCK_D"] // 2, 16)
    block_d = min(meta["BLOCK_D"], triton.next_power_of_2(max(dim, 1)))
    meta["BLOCK_T"] = min(meta["BLOCK_T"] * (meta["BLOCK_D"] // block_d), max(MAX_BLOCK_T, meta["BLOCK_T"]))
    meta["BLOCK_D"] = block_d
    return meta, options, dim <= block_d


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def backward_programs(device: torch.device, num_tokens: int, block_t: int) -> tuple[int, int]:
    """(programs, rows per program) of a backward launch: a multiple of the SM count, each program owning a
    contiguous run of whole row blocks. Fixed for a device and shape, so results repeat bitwise."""
    blocks = triton.cdiv(num_tokens, block_t)
    if device.type == "cuda":
        cap = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) * PROGRAMS_PER_SM
    else:
        cap = INTERPRETER_PROGRAMS if interpreter_enabled() else 1
    blocks_per_program = triton.cdiv(blocks, min(blocks, cap))
    return triton.cdiv(blocks, blocks_per_program), blocks_per_program * block_t


def reduce_param_grads(
    partial_w: Tensor, partial_b: Tensor, dw: Optional[Tensor], db: Optional[Tensor]
) -> None:
    """dγ/dβ from the (P, D) partials: fixed-order column sums (one launch)."""
    num_partials, dim = partial_w.shape
    if dw is None and db is None:
        return
    config = tuning.choose("layer_norm_param_grad", partial_w.dtype, dim, num_partials)
    meta, options = split_config(config)
    meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
    meta["BLOCK_P"] = min(meta["BLOCK_P"], triton.next_power_of_2(num_partials))
    dw_arg = dw if dw is not None else partial_w
    db_arg = db if db is not None else partial_b
    grid = (triton.cdiv(dim, meta["BLOCK_D"]),)
    # Writes only its outputs, from inputs it never changes: timing runs need no scratch.
    layer_norm_param_grad_kernel[grid](
        partial_w, partial_b, dw_arg, db_arg, num_partials, dim,
        dw_arg.stride(0), db_arg.stride(0),
        HAS_WEIGHT=dw is not None, HAS_BIAS=db is not None, **meta, **options,
    )
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
            meta, options, single = row_blocks(config, dim, acc == torch.float64)
            grid = (triton.cdiv(num_tokens, meta["BLOCK_T"]),)
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
    """(dx, dγ, dβ) of LayerNorm by the Triton kernels: two launches, deterministic (no atomics)."""
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
    config = tuning.choose("layer_norm_backward", x.dtype, dim, num_tokens)
    meta, options, single = row_blocks(config, dim, acc == torch.float64)
    programs, rows_per_program = backward_programs(x.device, num_tokens, meta["BLOCK_T"])
    partial_w = new_output((programs, dim), acc, x.device)
    partial_b = new_output((programs, dim), acc, x.device)
    with device_guard(x):
        layer_norm_bwd_kernel[(programs,)](
            x_2d, grad_2d, w_arg, mean_1d, rstd_1d, dx, partial_w, partial_b,
            num_tokens, dim, rows_per_program,
            x_2d.stride(0), x_2d.stride(1), grad_2d.stride(0), grad_2d.stride(1),
            w_arg.stride(0) if weight is not None else 0, dx.stride(0), dx.stride(1),
            HAS_WEIGHT=weight is not None, ACC_DTYPE=tl_dtype(acc), SINGLE_BLOCK=single, **meta, **options,
        )
        record_launch("layer_norm_bwd_kernel")
        reduce_param_grads(partial_w, partial_b, dw, db)
    return dx.view(x.shape), dw, db


# ----------------------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("triton_embed::layer_norm", mutates_args=())
def layer_norm(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """LayerNorm over the last dim: (output like ``input``, mean, rstd), statistics ``input.shape[:-1]``
    in float32 (float64 for float64 input)."""
    if use_triton(input, weight, bias):
        return forward(input, weight, bias, eps)
    return reference.layer_norm_forward(input, weight, bias, eps)


@layer_norm.register_fake
def _(input, weight, bias, eps):
    acc = accumulator_dtype(input.dtype)
    stats_shape = input.shape[:-1]
    return input.new_empty(input.shape), input.new_empty(stats_shape, dtype=acc), input.new_empty(stats_shape, dtype=acc)


@torch.library.custom_op("triton_embed::layer_norm_backward", mutates_args=())
def layer_norm_backward(
    grad: Tensor, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, rstd: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dγ, dβ) of ``triton_embed::layer_norm``; dγ/dβ are empty (0,) tensors where weight/bias are None."""
    if use_triton(input, weight, bias):
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
    ctx.save_for_backward(input, weight, bias, mean, rstd)
    ctx.eps = eps


def _layer_norm_autograd(ctx, grad: Tensor, _grad_mean, _grad_rstd):
    input, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.triton_embed.layer_norm_backward(grad, input, weight, bias, mean, rstd, ctx.eps)
    return (
        dx if ctx.needs_input_grad[0] else None,
        dw if weight is not None and ctx.needs_input_grad[1] else None,
        db if bias is not None and ctx.needs_input_grad[2] else None,
        None,
    )


layer_norm.register_autograd(_layer_norm_autograd, setup_context=_layer_norm_setup_context)


__all__ = ["layer_norm", "layer_norm_backward", "forward", "backward", "reduce_param_grads", "row_blocks",
           "split_config"]
