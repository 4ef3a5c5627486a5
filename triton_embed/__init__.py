"""triton_embed: drop-in Triton replacements for bitsandbytes' Embedding and StableEmbedding.

>>> import torch, triton_embed
>>> emb = triton_embed.Embedding(100, 16)
>>> emb(torch.tensor([3, 1, 4])).shape
torch.Size([3, 16])
"""
from . import functional, reference, tuning
from ._version import __version__
from ._dispatch import (
    get_backend,
    index_check_enabled,
    interpreter_enabled,
    launch_counts,
    set_backend,
    set_index_check,
    use_backend,
)
from .nn import Embedding, StableEmbedding


__all__ = [
    "Embedding",
    "StableEmbedding",
    "functional",
    "reference",
    "tuning",
    "get_backend",
    "set_backend",
    "use_backend",
    "set_index_check",
    "index_check_enabled",
    "interpreter_enabled",
    "launch_counts",
]
