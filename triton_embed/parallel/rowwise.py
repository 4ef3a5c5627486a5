"""Vocabulary-sharded lookups (``RowwiseParallel``): each rank holds rows ``[start, start + rows)`` of the
table and sees every (replicated) id.

Forward: one masked local lookup (``triton_embed::embedding_shard``: other shards' ids give zero rows, so the
ranks' outputs sum to the full lookup), then one collective: an all-reduce for a replicated output, or a
reduce-scatter along a batch/sequence dim. The sum is exact in the table's dtype: each row comes from one
rank, the others add zeros. StableEmbedding's LayerNorm runs after the collective (it needs whole rows),
as the fused kernel over the reduced rows.

Backward: the table's gradient is the shard's own dense gradient (written once, no communication); a
sequence-sharded output all-gathers its gradient first (the reduce-scatter's backward), and then also
all-reduces StableEmbedding's dγ/dβ, which are partial over the ranks' tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

from ..ops import sharded  # noqa: F401  (registers triton_embed::embedding_shard*)
from ..ops.stable_embedding import WEIGHT_GRAD_ROWS


#: Newer torch names the one-tensor collectives ``*_single``; older releases only have ``*_tensor``.
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def shard_range(weight: DTensor) -> tuple[int, int]:
    """(global id of this rank's first row, rows it holds) of a table sharded ``Shard(0)`` on a 1-D mesh
    (DTensor's chunking: the first ranks hold ⌈V / world⌉ rows, the last ones fewer or none)."""
    total, world = weight.shape[0], weight.device_mesh.size()
    chunk = -(-total // world)
    start = min(weight.device_mesh.get_local_rank() * chunk, total)
    return start, weight._local_tensor.shape[0]


def _scatter_dim(layout: Placement, ndim: int) -> int:
    dim = layout.dim if layout.dim >= 0 else layout.dim + ndim
    return dim


class _Reduce(torch.autograd.Function):
    """Sum the ranks' partial rows: all-reduce (``Replicate``) or reduce-scatter along ``Shard(dim)``. The
    backward is the identity, or an all-gather of the gradient along ``dim``."""

    @staticmethod
    def forward(ctx, partial: Tensor, layout: Placement, group) -> Tensor:
        ctx.layout, ctx.group = layout, group
        if isinstance(layout, Replicate):
            dist.all_reduce(partial, group=group)
            ctx.mark_dirty(partial)
            return partial
        dim = _scatter_dim(layout, partial.dim())
        world = dist.get_world_size(group)
        if dim >= partial.dim() - 1 or partial.shape[dim] % world:
            raise ValueError(
                f"RowwiseParallel output Shard({layout.dim}): the ids' dim {dim} (size "
                f"{partial.shape[dim] if dim < partial.dim() else 'none'}) must exist and divide evenly over {world} ranks"
            )
        moved = partial.movedim(dim, 0).contiguous()
        out = moved.new_empty((moved.shape[0] // world, *moved.shape[1:]))
        _REDUCE_SCATTER(out, moved, group=group)
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if isinstance(ctx.layout, Replicate):
            return grad, None, None
        return all_gather_along(grad, _scatter_dim(ctx.layout, grad.dim()), ctx.group), None, None


def all_gather_along(local: Tensor, dim: int, group) -> Tensor:
    """The ranks' ``local`` tensors concatenated along ``dim`` (one all-gather)."""
    world = dist.get_world_size(group)
    moved = local.movedim(dim, 0).contiguous()
    out = moved.new_empty((moved.shape[0] * world, *moved.shape[1:]))
    _ALL_GATHER(out, moved, group=group)
    return out.movedim(0, dim)


class _Norm(torch.autograd.Function):
    """bitsandbytes' cast → LayerNorm → cast over whole reduced rows, by the fused StableEmbedding kernels
    (the rows play the table, read in order). dγ/dβ are all-reduced when the rows are a shard of the tokens."""

    @staticmethod
    def forward(ctx, rows: Tensor, gamma: Optional[Tensor], beta: Optional[Tensor], eps: float,
                compute_dtype: torch.dtype, partial_params: bool, group) -> Tensor:
        table = rows.reshape(-1, rows.shape[-1])
        order = torch.arange(table.shape[0], device=rows.device)
        out, mean, rstd = torch.ops.triton_embed.stable_embedding(
            table, order, gamma, beta, eps, compute_dtype, -1, False, False, True
        )
        ctx.save_for_backward(table, order, gamma, beta, mean, rstd)
        ctx.options = (eps, compute_dtype, partial_params, group, rows.shape)
        return out.view(rows.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        table, order, gamma, beta, mean, rstd = ctx.saved_tensors
        eps, compute_dtype, partial_params, group, shape = ctx.options
        d_rows, d_gamma, d_beta = torch.ops.triton_embed.stable_embedding_backward(
            grad.reshape(table.shape), table, order, gamma, beta, mean, rstd, eps, compute_dtype, WEIGHT_GRAD_ROWS,
            -1, False, True,
        )
        d_gamma = d_gamma if gamma is not None else None
        d_beta = d_beta if beta is not None else None
        present = [t for t in (d_gamma, d_beta) if t is not None]
        if partial_params and present:  # the ranks' tokens are disjoint: dγ/dβ are partial sums, one all-reduce
            both = torch.cat(present)
            dist.all_reduce(both, group=group)
            parts = iter(part.to(t.dtype) for part, t in zip(both.split([t.numel() for t in present]), present))
            d_gamma = next(parts) if gamma is not None else None
            d_beta = next(parts) if beta is not None else None
        return d_rows.view(shape), d_gamma, d_beta, None, None, None, None


def _local(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.to_local() if isinstance(t, DTensor) else t


def rowwise_forward(module, ids: Tensor, layout: Placement) -> DTensor:
    """The forward of an Embedding / StableEmbedding whose table is sharded ``Shard(0)``: ``ids`` are the
    replicated local ids; returns the output as a DTensor with ``layout``."""
    weight: DTensor = module.weight
    mesh = weight.device_mesh
    group = mesh.get_group()
    start, _ = shard_range(weight)
    total = weight.shape[0]
    if module.max_norm is not None:  # in place, before any differentiable view of the shard exists
        with torch.no_grad():
            torch.ops.triton_embed.embedding_shard_renorm_(
                weight.detach().to_local(), ids, start, total, float(module.max_norm), float(module.norm_type)
            )
    local_weight = weight.to_local()
    padding = -1 if module.padding_idx is None else int(module.padding_idx)
    partial = torch.ops.triton_embed.embedding_shard(local_weight, ids, start, total, padding,
                                                      bool(module.scale_grad_by_freq))
    rows = _Reduce.apply(partial, layout, group)
    norm = getattr(module, "norm", None)
    if norm is not None:
        rows = _Norm.apply(rows, _local(norm.weight), _local(norm.bias), float(norm.eps), torch.get_default_dtype(),
                           not isinstance(layout, Replicate), group)
    return DTensor.from_local(rows, mesh, [layout], run_check=False)


def check_output_layout(layout: Placement, style: str) -> None:
    """Rowwise outputs are replicated or sharded along a batch/sequence dim, never the embedding dim."""
    if isinstance(layout, Replicate):
        return
    if isinstance(layout, Shard) and layout.dim >= 0:
        return
    raise NotImplementedError(
        f"{style}: output layout {layout} is not supported (use Replicate() or Shard(d) for a batch or sequence "
        "dim d >= 0 of the ids)"
    )


__all__ = ["rowwise_forward", "shard_range", "all_gather_along", "check_output_layout"]
