"""triton_embed: drop-in Triton replacements for bitsandbytes' Embedding and StableEmbedding.

>>> import torch, triton_embed
>>> emb = triton_embed.Embedding(100, 16)
>>> emb(torch.tensor([3, 1, 4])).shape
torch.Size([3, 16])
"""
from . import functional, reference, tuning
from ._version import __version__
from .convert import replace_embeddings
from .nn import Embedding, StableEmbedding
from .quantized import (
    Embedding4bit,
    Embedding8bit,
    EmbeddingFP4,
    EmbeddingNF4,
    StableEmbedding4bit,
    StableEmbedding8bit,
)
from .runtime.dispatch import get_backend, interpreter_enabled, launch_counts, set_backend, use_backend
from .runtime.errors import check_errors, index_check_enabled, index_check_mode, set_index_check

__all__ = [
    "Embedding",
    "StableEmbedding",
    "Embedding8bit",
    "Embedding4bit",
    "EmbeddingNF4",
    "EmbeddingFP4",
    "StableEmbedding8bit",
    "StableEmbedding4bit",
    "replace_embeddings",
    "functional",
    "reference",
    "tuning",
    "get_backend",
    "set_backend",
    "use_backend",
    "set_index_check",
    "index_check_mode",
    "index_check_enabled",
    "check_errors",
    "interpreter_enabled",
    "launch_counts",
]
