"""The reference path: every op in PyTorch alone, as bitsandbytes runs it. The oracle for the tests and
the implementation for CPU tensors outside the interpreter."""
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
    """The dense weight gradient of a lookup, as ATen computes it (``padding_idx=-1``: none)."""
    return torch.ops.aten.embedding_dense_backward(
        grad.reshape(-1, grad.shape[-1]) if grad.dim() else grad, indices.reshape(-1), num_weights,
        padding_idx, scale_grad_by_freq,
    )


def embedding_renorm_(weight: torch.Tensor, indices: torch.Tensor, max_norm: float, norm_type: float) -> None:
    """In place: rows named by ``indices`` with a ``norm_type``-norm above ``max_norm`` are scaled down."""
    with torch.no_grad():
        torch.embedding_renorm_(weight, indices.contiguous(), max_norm, norm_type)
