"""Functional API: drop-in for ``torch.nn.functional.embedding``, on the Triton kernels."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _validation as check
from .ops import embedding as ops


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    deterministic: bool | None = None,
) -> Tensor:
    """Look up rows of ``weight`` for the ids in ``input``, as ``torch.nn.functional.embedding``.

    Args:
        input: int32/int64 ids of any shape, each in ``[0, weight.shape[0])``.
        weight: the ``(num_embeddings, embedding_dim)`` table.
        padding_idx: a row whose gradient stays zero (negative counts from the end).
        max_norm: if set, rows named by ``input`` whose ``norm_type``-norm exceeds it are rescaled
            to ``max_norm`` in place, without grad, before the lookup.
        norm_type: the p of the p-norm for ``max_norm`` (1, 2, inf are special-cased; any p works).
        scale_grad_by_freq: divide each id's gradient by its count in ``input``.
        sparse: give ``weight`` a sparse COO gradient.
        deterministic: force the bitwise-repeatable backward; it is also used whenever
            ``torch.are_deterministic_algorithms_enabled()``.

    Returns:
        ``input.shape + (embedding_dim,)`` rows, in ``weight``'s dtype.

    >>> import torch, triton_embed
    >>> weight = torch.arange(6.0).view(3, 2)
    >>> triton_embed.functional.embedding(torch.tensor([[2, 0]]), weight).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    check.check_weight(weight)
    check.check_indices_dtype(input)
    check.check_same_device(input, weight)
    check.check_max_norm(max_norm, norm_type)
    padding = check.normalize_padding_idx(padding_idx, weight.shape[0])
    padding = -1 if padding is None else padding
    deterministic = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
    if max_norm is not None:
        with torch.no_grad():
            torch.ops.triton_embed.embedding_renorm_(weight, input, float(max_norm), float(norm_type))
    if _forward_mode_ad(weight):
        return ops.EmbeddingWithForwardAD.apply(weight, input, padding, scale_grad_by_freq, sparse, deterministic)
    return torch.ops.triton_embed.embedding(weight, input, padding, scale_grad_by_freq, sparse, deterministic)


def _forward_mode_ad(weight: Tensor) -> bool:
    """Dual tensors or torch.func transforms need the jvp formula only the autograd.Function carries."""
    if torch.compiler.is_compiling():
        return False
    return forward_ad._current_level >= 0 or torch._C._functorch.is_functorch_wrapped_tensor(weight)


__all__ = ["embedding"]
