"""The lookup on the reference path: ``F.embedding`` with all seven options, its pieces (gather, dense weight
gradient, max_norm renorm) and the lookup of one shard of a vocabulary-sharded table."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding(
    indices: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> torch.Tensor:
    """bitsandbytes.nn.Embedding.forward: one F.embedding call with all seven options.

    >>> import torch
    >>> embedding(torch.tensor([2, 0]), torch.arange(6.).view(3, 2)).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """
    return F.embedding(indices, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)


def gather(weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` for ``indices`` (any shape); output ``indices.shape + (D,)``."""
    return F.embedding(indices, weight)


def embedding_dense_backward(
    grad: torch.Tensor,
    indices: torch.Tensor,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> torch.Tensor:
    """The dense weight gradient of a lookup, as ATen computes it (``padding_idx=-1``: none). Ids outside
    ``[0, num_weights)`` (another shard's rows) contribute nothing, as on the kernels."""
    flat = indices.reshape(-1)
    grad_2d = grad.reshape(flat.numel(), grad.shape[-1])
    inside = (flat >= 0) & (flat < num_weights)
    if not bool(inside.all()):
        flat, grad_2d = flat[inside], grad_2d[inside]
    return torch.ops.aten.embedding_dense_backward(grad_2d, flat, num_weights, padding_idx, scale_grad_by_freq)


def embedding_renorm_(weight: torch.Tensor, indices: torch.Tensor, max_norm: float, norm_type: float,
                      row_start: int = 0) -> None:
    """In place: rows named by ``indices`` with a ``norm_type``-norm above ``max_norm`` are scaled down. For
    a vocabulary shard (rows ``[row_start, row_start + V)`` of a larger table) only its own rows."""
    local = indices.reshape(-1) - row_start
    local = local[(local >= 0) & (local < weight.shape[0])]
    with torch.no_grad():
        torch.embedding_renorm_(weight, local.contiguous(), max_norm, norm_type)


def shard_gather(weight: torch.Tensor, indices: torch.Tensor, row_start: int) -> torch.Tensor:
    """Rows of a vocabulary shard holding rows ``[row_start, row_start + V)`` of a larger table: ids of other
    shards give zero rows, so the sum of all shards' outputs is the full lookup.

    >>> shard_gather(torch.arange(4.0).view(2, 2), torch.tensor([0, 3, 4]), row_start=3).tolist()
    [[0.0, 0.0], [0.0, 1.0], [2.0, 3.0]]
    """
    local = indices - row_start
    inside = (local >= 0) & (local < weight.shape[0])
    if not weight.shape[0]:
        return weight.new_zeros((*indices.shape, weight.shape[1]))
    rows = F.embedding(torch.where(inside, local, 0), weight)
    return torch.where(inside.unsqueeze(-1), rows, torch.zeros((), dtype=weight.dtype, device=weight.device))
