"""The reference path: every op in PyTorch alone, as bitsandbytes runs it. The oracle for the tests and
the implementation for CPU tensors outside the interpreter.

>>> import torch
>>> from triton_embed import reference
>>> reference.embedding(torch.tensor([2, 0]), torch.arange(6.).view(3, 2)).tolist()
[[4.0, 5.0], [0.0, 1.0]]
"""
from .embedding import embedding, embedding_dense_backward, embedding_renorm_, gather, shard_gather
from .layer_norm import layer_norm_backward, layer_norm_forward
from .stable_embedding import StableEmbedding, stable_embedding, stable_embedding_backward, stable_embedding_forward

__all__ = [
    "embedding", "gather", "embedding_dense_backward", "embedding_renorm_", "shard_gather",
    "layer_norm_forward", "layer_norm_backward",
    "stable_embedding", "StableEmbedding", "stable_embedding_forward", "stable_embedding_backward",
]
