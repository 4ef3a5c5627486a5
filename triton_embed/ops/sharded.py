"""Custom ops on one shard of a vocabulary-sharded table (``triton_embed.parallel.RowwiseParallel``): the
shard holds rows ``[row_start, row_start + V)`` of a table of ``num_embeddings`` rows.

``triton_embed::embedding_shard`` is the masked local lookup: ids of other shards give zero rows, so summing
every shard's output gives the full lookup; only ids outside ``[0, num_embeddings)`` are errors. Its
gradient is the shard's own dense gradient (tokens of other shards contribute nothing), written once, with
no communication. ``triton_embed::embedding_shard_renorm_`` renorms the shard's own referenced rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..runtime import errors
from ..runtime.dispatch import custom_op, use_triton
from ..runtime.validation import check_index_bounds
from . import gather, renorm


def local_padding(padding_idx: int, row_start: int, rows: int) -> int:
    """A global padding row as a row of the shard, or -1 when another shard holds it.

    >>> local_padding(7, 5, 4), local_padding(2, 5, 4), local_padding(-1, 0, 4)
    (2, -1, -1)
    """
    local = padding_idx - row_start
    return local if padding_idx >= 0 and 0 <= local < rows else -1


@custom_op("triton_embed::embedding_shard", mutates_args=())
def embedding_shard(
    weight: Tensor, indices: Tensor, row_start: int, num_embeddings: int, padding_idx: int, scale_grad_by_freq: bool
) -> Tensor:
    """This shard's part of ``full_table[indices]``: its own rows, zeros for other shards' ids."""
    if use_triton(weight):
        errors.before_call(weight.device)
        out = gather.gather(weight, indices, row_start, num_embeddings)
        errors.after_call(weight.device)
        return out
    check_index_bounds(indices, num_embeddings)
    return reference.shard_gather(weight, indices, row_start)


@embedding_shard.register_fake
def _(weight, indices, row_start, num_embeddings, padding_idx, scale_grad_by_freq):
    return weight.new_empty((*indices.shape, weight.shape[1]))


def _setup_context(ctx, inputs, output) -> None:
    weight, indices, row_start, num_embeddings, padding_idx, scale_grad_by_freq = inputs
    ctx.save_for_backward(indices)
    ctx.options = (weight.shape[0], row_start, padding_idx, scale_grad_by_freq)


def _backward(ctx, grad: Tensor):
    (indices,) = ctx.saved_tensors
    rows, row_start, padding_idx, scale_grad_by_freq = ctx.options
    grad_weight = None
    if ctx.needs_input_grad[0]:
        # Local ids: other shards' tokens fall outside [0, rows) and add nothing. Every token of an id is on
        # every rank (the ids are replicated), so scale_grad_by_freq's counts are the global ones.
        grad_weight = torch.ops.triton_embed.embedding_dense_backward(
            grad, indices - row_start, rows, local_padding(padding_idx, row_start, rows), scale_grad_by_freq, True
        )
    return grad_weight, None, None, None, None, None


embedding_shard.register_autograd(_backward, setup_context=_setup_context)


@custom_op("triton_embed::embedding_shard_renorm_", mutates_args=("weight",))
def embedding_shard_renorm_(
    weight: Tensor, indices: Tensor, row_start: int, num_embeddings: int, max_norm: float, norm_type: float
) -> None:
    """In place and without grad: this shard's rows named by ``indices`` whose norm exceeds ``max_norm``."""
    if use_triton(weight):
        errors.before_call(weight.device)
        renorm.renorm_(weight, indices, max_norm, norm_type, row_start, num_embeddings)
        errors.after_call(weight.device)
    else:
        check_index_bounds(indices, num_embeddings)
        reference.embedding_renorm_(weight, indices, max_norm, norm_type, row_start)


@embedding_shard_renorm_.register_fake
def _(weight, indices, row_start, num_embeddings, max_norm, norm_type):
    return None


__all__ = ["embedding_shard", "embedding_shard_renorm_", "local_padding"]
