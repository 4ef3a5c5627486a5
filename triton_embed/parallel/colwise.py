"""Embedding-dim-sharded lookups (``ColwiseParallel``): each rank holds every row's slice of columns, so the
lookup is local and its output is ``Shard(-1)`` with no communication; the table's gradient is local too.

StableEmbedding normalises whole rows without gathering them: each rank sums its slice per token (Σx, Σx²,
in float64), one all-reduce of those 2 numbers per token gives the mean and rstd, and each rank normalises
its slice with its slice of γ/β (``Shard(0)``). The backward likewise all-reduces 2 numbers per token (the
row sums of x̂·γ·dy and γ·dy) and then accumulates its slice of the table's gradient locally.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard

from .. import functional
from ..runtime import errors
from ..runtime.dispatch import use_triton


def _round(x: Tensor, dtype: torch.dtype, to: torch.dtype) -> Tensor:
    """bitsandbytes' casts: round to ``dtype`` (the default dtype), then to ``to`` (the table's)."""
    return x.to(dtype).to(to)


class _SlicedNorm(torch.autograd.Function):
    """LayerNorm over rows whose columns are spread over the ranks, from per-token partial sums."""

    @staticmethod
    def forward(ctx, rows: Tensor, gamma: Optional[Tensor], beta: Optional[Tensor], eps: float, dim: int,
                compute_dtype: torch.dtype, group) -> Tensor:
        acc = torch.float64 if compute_dtype == torch.float64 else torch.float32
        x = rows.to(compute_dtype).to(acc)
        sums = torch.stack([x.double().sum(-1), x.double().square().sum(-1)], dim=-1)
        dist.all_reduce(sums, group=group)
        mean = sums[..., 0] / dim
        var = (sums[..., 1] / dim - mean.square()).clamp_min(0)
        mean, rstd = mean.to(x.dtype), torch.rsqrt(var + eps).to(x.dtype)
        xhat = (x - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
        y = xhat * gamma.to(x.dtype) if gamma is not None else xhat
        y = y + beta.to(x.dtype) if beta is not None else y
        ctx.save_for_backward(rows, gamma, beta, mean, rstd)
        ctx.options = (dim, compute_dtype, group)
        return _round(y, compute_dtype, rows.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, gamma, beta, mean, rstd = ctx.saved_tensors
        dim, compute_dtype, group = ctx.options
        # The first backward of the step: a pending out-of-range report (e.g. the lookup's own) is raised
        # before dγ/dβ exist, as the fused kernels' backward does.
        if use_triton(rows) and not torch.compiler.is_compiling():  # (a traced backward: the lookup's op checks)
            errors.before_call(rows.device)
        x = rows.to(compute_dtype).to(mean.dtype)
        dy = grad.to(compute_dtype).to(mean.dtype)
        xhat = (x - mean.unsqueeze(-1)) * rstd.unsqueeze(-1)
        wdy = dy * gamma.to(x.dtype) if gamma is not None else dy
        sums = torch.stack([(xhat * wdy).double().sum(-1), wdy.double().sum(-1)], dim=-1)
        dist.all_reduce(sums, group=group)
        c1, c2 = (sums[..., 0] / dim).to(x.dtype), (sums[..., 1] / dim).to(x.dtype)
        dx = (wdy - (xhat * c1.unsqueeze(-1) + c2.unsqueeze(-1))) * rstd.unsqueeze(-1)
        # Explicit row counts: a rank may hold no column at all (D < ranks), and reshape(-1, 0) is ambiguous.
        tokens = math.prod(dy.shape[:-1])
        flat_dy, flat_xhat = dy.reshape(tokens, dy.shape[-1]), xhat.reshape(tokens, xhat.shape[-1])
        d_gamma = (flat_dy * flat_xhat).sum(0).to(gamma.dtype) if gamma is not None else None
        d_beta = flat_dy.sum(0).to(beta.dtype) if beta is not None else None
        return _round(dx, compute_dtype, rows.dtype), d_gamma, d_beta, None, None, None, None


def _local(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.to_local() if isinstance(t, DTensor) else t


def colwise_forward(module, ids: Tensor) -> DTensor:
    """The forward of an Embedding / StableEmbedding whose table is sharded ``Shard(1)``: ``ids`` are the
    replicated local ids; returns the output sharded along its last dim."""
    weight: DTensor = module.weight
    if module.max_norm is not None:
        raise NotImplementedError(
            "ColwiseParallel with max_norm: a row's norm spans the ranks' slices (it would need an all-reduce of "
            "partial p-norms before the renorm); shard the table by rows (RowwiseParallel) to use max_norm"
        )
    mesh = weight.device_mesh
    rows = functional.embedding(ids, weight.to_local(), module.padding_idx, None, module.norm_type,
                                module.scale_grad_by_freq, False)
    norm = getattr(module, "norm", None)
    if norm is not None:
        rows = _SlicedNorm.apply(rows, _local(norm.weight), _local(norm.bias), float(norm.eps), weight.shape[1],
                                 torch.get_default_dtype(), mesh.get_group())
    # The global shape, given: with D % ranks != 0 the slices differ in width, which from_local cannot infer.
    shape = (*rows.shape[:-1], weight.shape[1])
    return DTensor.from_local(rows, mesh, [Shard(rows.dim() - 1)], run_check=False, shape=shape,
                              stride=_contiguous_strides(shape))


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


__all__ = ["colwise_forward"]
