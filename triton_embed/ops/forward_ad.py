"""Forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) for the custom ops.

A ``torch.library`` custom op carries a backward formula only, so a dual tensor flowing through one would
come out with no tangent. Each op here has an ``autograd.Function`` twin with the same inputs and outputs:
its forward calls the custom op, its backward reuses the op's backward formula, and its ``jvp`` computes the
tangent with PyTorch ops from the saved statistics. The functional API takes the twin only when a forward-mode
tangent can be present (eager mode); ``torch.compile`` sees the plain custom op.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import embedding as embedding_ops
from . import layer_norm as layer_norm_ops
from . import stable_embedding as stable_ops


def forward_mode_active(*tensors: Optional[Tensor]) -> bool:
    """Whether a forward-mode tangent can reach the op: a dual level is open, or a tensor is wrapped by a
    ``torch.func`` transform. Never under ``torch.compile`` (dynamo graph-breaks on a custom jvp)."""
    if torch.compiler.is_compiling():
        return False
    if forward_ad._current_level >= 0:
        return True
    return any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def layer_norm_tangent(
    x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
    dx: Optional[Tensor], dweight: Optional[Tensor], dbias: Optional[Tensor],
) -> Tensor:
    """The tangent of ``LayerNorm(x) * weight + bias`` over the last dim, in the statistics' dtype:
    ``rstd * (dx - mean(dx) - xhat * mean(xhat * dx)) * weight + xhat * dweight + dbias``."""
    acc = mean.dtype
    xhat = (x.to(acc) - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
    tangent = torch.zeros_like(xhat)
    if dx is not None:
        d = dx.to(acc)
        if d.shape[-1]:
            d = d - d.mean(-1, keepdim=True) - xhat * (xhat * d).mean(-1, keepdim=True)
        d = d * rstd.unsqueeze(-1)
        tangent = tangent + (d * weight.to(acc) if weight is not None else d)
    if dweight is not None:
        tangent = tangent + xhat * dweight.to(acc)
    if dbias is not None:
        tangent = tangent + dbias.to(acc)
    return tangent


class EmbeddingWithForwardAD(torch.autograd.Function):
    """``triton_embed::embedding`` with a jvp: the tangent is the gather of the table's tangent."""

    @staticmethod
    def forward(weight, indices, padding_idx, scale_grad_by_freq, sparse, deterministic):
        return torch.ops.triton_embed.embedding(weight, indices, padding_idx, scale_grad_by_freq, sparse, deterministic)

    @staticmethod
    def setup_context(ctx, inputs, output):
        embedding_ops._embedding_setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        return embedding_ops._embedding_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, weight_tangent, *_):
        (indices,) = ctx.saved_tensors
        return torch.ops.triton_embed.embedding(weight_tangent, indices, -1, False, False, False)


class LayerNormWithForwardAD(torch.autograd.Function):
    """``triton_embed::layer_norm`` with a jvp in x, γ and β."""

    @staticmethod
    def forward(input, weight, bias, eps):
        return torch.ops.triton_embed.layer_norm(input, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        layer_norm_ops._layer_norm_setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_forward(inputs[0], inputs[1], output[1], output[2])

    @staticmethod
    def backward(ctx, grad, grad_mean, grad_rstd):
        return layer_norm_ops._layer_norm_autograd(ctx, grad, grad_mean, grad_rstd)

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _deps):
        x, weight, mean, rstd = ctx.saved_tensors
        tangent = layer_norm_tangent(x, weight, mean, rstd, dx, dweight, dbias).to(x.dtype)
        return tangent, None, None


class StableEmbeddingWithForwardAD(torch.autograd.Function):
    """``triton_embed::stable_embedding`` with a jvp in the table, γ and β: the table tangent's rows are
    gathered and cast as the rows are, then through the LayerNorm's tangent and the final cast."""

    @staticmethod
    def forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype, padding_idx, scale_grad_by_freq,
                sparse, deterministic):
        return torch.ops.triton_embed.stable_embedding(
            weight, indices, norm_weight, norm_bias, eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse,
            deterministic,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        stable_ops._setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_forward(inputs[0], inputs[1], inputs[2], output[1], output[2])
        ctx.compute_dtype = inputs[5]

    @staticmethod
    def backward(ctx, grad, grad_mean, grad_rstd):
        return stable_ops._backward(ctx, grad, grad_mean, grad_rstd)

    @staticmethod
    def jvp(ctx, dweight, _dindices, dnorm_weight, dnorm_bias, *_):
        weight, indices, norm_weight, mean, rstd = ctx.saved_tensors
        dim = weight.shape[1]
        flat = indices.reshape(-1)
        rows = torch.ops.triton_embed.embedding(weight, flat, -1, False, False, False).to(ctx.compute_dtype)
        drows = None
        if dweight is not None:
            drows = torch.ops.triton_embed.embedding(dweight, flat, -1, False, False, False).to(ctx.compute_dtype)
        tangent = layer_norm_tangent(rows, norm_weight, mean, rstd, drows, dnorm_weight, dnorm_bias)
        tangent = tangent.to(ctx.compute_dtype).to(weight.dtype).reshape(*indices.shape, dim)
        return tangent, None, None


__all__ = [
    "forward_mode_active",
    "layer_norm_tangent",
    "EmbeddingWithForwardAD",
    "LayerNormWithForwardAD",
    "StableEmbeddingWithForwardAD",
]
