"""DTensor sharding rules for the custom ops, so that ``torch.ops.triton_embed.*`` (and the functional API
over them) take DTensors where the sharding is natural: everything replicated, the table sharded along the
embedding dim, the ids (and the rows that follow them) sharded along a batch/sequence dim. DTensor then
redistributes other inputs to the nearest of these. A vocabulary-sharded table (``Shard(0)``) needs a
masked lookup and a collective: ``functional.embedding`` refuses it with a pointer to ``RowwiseParallel``.

Registered when ``triton_embed.parallel`` is imported.
"""
from __future__ import annotations

from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor.experimental import register_sharding

from ..ops import embedding, layer_norm, stable_embedding  # noqa: F401  (the ops must exist first)

_R = Replicate()


def _on(arg, placement):
    """``placement`` for a tensor argument; None for an absent optional one (or a non-tensor)."""
    return None if arg is None else placement


def _ops(name: str):
    import torch

    return getattr(torch.ops.triton_embed, name).default


@register_sharding(_ops("embedding"))
def _embedding(weight, indices, padding_idx, scale_grad_by_freq, sparse, deterministic):
    rules = [([_R], [_R, _R, None, None, None, None]),
             ([Shard(indices.ndim)], [Shard(1), _R, None, None, None, None])]
    rules += [([Shard(d)], [_R, Shard(d), None, None, None, None]) for d in range(indices.ndim)]
    return rules


@register_sharding(_ops("embedding_dense_backward"))
def _embedding_dense_backward(grad, indices, num_weights, padding_idx, scale_grad_by_freq, deterministic):
    rules = [([_R], [_R, _R, None, None, None, None]),
             ([Shard(1)], [Shard(grad.ndim - 1), _R, None, None, None, None])]
    if not scale_grad_by_freq:  # each shard's counts would be its own tokens': only an unscaled sum splits
        rules += [([Partial()], [Shard(d), Shard(d), None, None, None, None]) for d in range(indices.ndim)]
    return rules


@register_sharding(_ops("layer_norm"))
def _layer_norm(input, weight, bias, eps):
    params = [_on(weight, _R), _on(bias, _R)]
    rules = [([_R, _R, _R], [_R, *params, None])]
    rules += [([Shard(d)] * 3, [Shard(d), *params, None]) for d in range(input.ndim - 1)]
    return rules


@register_sharding(_ops("layer_norm_backward"))
def _layer_norm_backward(grad, input, weight, bias, mean, rstd, eps):
    params = [_on(weight, _R), _on(bias, _R)]
    rules = [([_R, _R, _R], [_R, _R, *params, _R, _R, None])]
    rules += [([Shard(d), Partial(), Partial()], [Shard(d), Shard(d), *params, Shard(d), Shard(d), None])
              for d in range(input.ndim - 1)]
    return rules


@register_sharding(_ops("stable_embedding"))
def _stable_embedding(weight, indices, norm_weight, norm_bias, eps, compute_dtype, padding_idx, scale_grad_by_freq,
                      sparse, deterministic):
    rest = [None] * 6
    params = [_on(norm_weight, _R), _on(norm_bias, _R)]
    rules = [([_R, _R, _R], [_R, _R, *params, *rest])]
    if indices.ndim:  # the flat statistics follow the ids' first dim
        rules.append(([Shard(0), Shard(0), Shard(0)], [_R, Shard(0), *params, *rest]))
    return rules


@register_sharding(_ops("stable_embedding_backward"))
def _stable_embedding_backward(grad, weight, indices, norm_weight, norm_bias, mean, rstd, eps, compute_dtype, mode,
                               padding_idx, scale_grad_by_freq, deterministic):
    rest = [None] * 6
    params = [_on(norm_weight, _R), _on(norm_bias, _R)]
    rules = [([_R, _R, _R], [_R, _R, _R, *params, _R, _R, *rest])]
    if indices.ndim and mode == stable_embedding.WEIGHT_GRAD_DENSE and not scale_grad_by_freq:
        rules.append(([Partial(), Partial(), Partial()], [Shard(0), _R, Shard(0), *params, Shard(0), Shard(0), *rest]))
    return rules


__all__: list[str] = []
