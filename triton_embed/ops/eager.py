"""The ops in eager mode: plain ``torch.autograd.Function``s over the same launchers and reference ops as the
custom ops (``torch.ops.triton_embed.*``), without the dispatcher, schema, fake and autograd wrappers a
``torch.library`` op pays on every call (tens of µs: more than a small lookup's kernel).

The functional API takes them where nothing needs the custom op (``_dispatch.eager``: not compiling or
tracing, plain tensors, no forward-mode AD or ``torch.func``); ``torch.compile`` and the rest see the custom
ops, which run the same code. The caller has checked the arguments and chosen the path (``kernels``: the
Triton kernels, else the reference path, its ids already checked); these trust both. The backward is the
custom op's own formula, whose inner ops again skip the machinery where they can (``_dispatch.run_op``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..runtime.dispatch import IMPLEMENTATIONS
from . import embedding as embedding_ops
from . import layer_norm as layer_norm_ops
from . import stable_embedding as stable_ops


class Embedding(torch.autograd.Function):
    """``triton_embed::embedding`` in eager mode: (weight, indices, padding_idx, scale_grad_by_freq, sparse,
    deterministic, kernels) → ``weight[indices]``.

    >>> import torch
    >>> weight = torch.arange(6.0).view(3, 2).requires_grad_()
    >>> out = embedding(weight, torch.tensor([2, 2]), -1, False, False, False, False)  # the reference path
    >>> out.sum().backward(); weight.grad[2].tolist()
    [2.0, 2.0]
    """

    @staticmethod
    def forward(ctx, weight: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool, sparse: bool,
                deterministic: bool, kernels: bool) -> Tensor:
        ctx.save_for_backward(indices)
        ctx.num_weights = weight.shape[0]
        ctx.options = (padding_idx, scale_grad_by_freq, sparse, deterministic)
        return embedding_ops.lookup(weight, indices, kernels)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_weight = embedding_ops.weight_gradient(ctx, grad) if ctx.needs_input_grad[0] else None
        return grad_weight, None, None, None, None, None, None


class StableEmbedding(torch.autograd.Function):
    """``triton_embed::stable_embedding`` in eager mode: (weight, indices, γ, β, eps, compute dtype,
    padding_idx, scale_grad_by_freq, sparse, deterministic, kernels) → the output alone (the statistics are
    kept for the backward, not returned)."""

    @staticmethod
    def forward(ctx, weight: Tensor, indices: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor],
                eps: float, compute_dtype: torch.dtype, padding_idx: int, scale_grad_by_freq: bool, sparse: bool,
                deterministic: bool, kernels: bool) -> Tensor:
        out, mean, rstd = stable_ops.fused_forward(weight, indices, norm_weight, norm_bias, eps, compute_dtype,
                                                   kernels)
        ctx.save_for_backward(weight, indices, norm_weight, norm_bias, mean, rstd)
        ctx.options = (eps, compute_dtype, padding_idx, scale_grad_by_freq, sparse, deterministic)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (*stable_ops.gradients(ctx, grad), None, None, None, None, None, None, None)


class LayerNorm(torch.autograd.Function):
    """``triton_embed::layer_norm`` in eager mode: (x, γ, β, eps) → the output alone."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
        y, mean, rstd = IMPLEMENTATIONS["triton_embed::layer_norm"](input, weight, bias, eps)
        ctx.save_for_backward(input, weight, bias, mean, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        return layer_norm_ops._layer_norm_autograd(ctx, grad, None, None)


def _direct_apply(function: type[torch.autograd.Function]):
    """``function.apply`` without its Python layer, which only serves ``torch.func`` (it binds default
    arguments and unwraps tensors of finished transforms): the functional API sends such tensors, and every
    call under a transform, elsewhere (``_dispatch.eager`` and ``functional._under_torch_func``)."""
    c_apply = torch._C._FunctionBase.__dict__.get("apply")
    return c_apply.__get__(None, function) if c_apply is not None else function.apply


#: What the functional API calls: ``Embedding.apply`` etc. (see :func:`_direct_apply`).
embedding = _direct_apply(Embedding)
stable_embedding = _direct_apply(StableEmbedding)
layer_norm = _direct_apply(LayerNorm)

__all__ = ["Embedding", "StableEmbedding", "LayerNorm", "embedding", "stable_embedding", "layer_norm"]
