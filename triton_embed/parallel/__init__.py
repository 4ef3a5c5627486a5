"""Tensor-parallel triton_embed modules on ``torch.distributed`` (DeviceMesh, DTensor, ``parallelize_module``):
:class:`RowwiseParallel` shards the table by vocabulary rows, :class:`ColwiseParallel` along the embedding
dim. ``fully_shard`` (FSDP2) and DDP need nothing of their own: they shard or replicate the modules'
parameters like any others'. Importing this package also registers DTensor sharding rules for the custom
ops (``parallel.sharding``), so the functional API takes DTensors where the sharding is natural.

>>> from triton_embed.parallel import ColwiseParallel, RowwiseParallel
>>> RowwiseParallel().output_layouts, ColwiseParallel().output_layouts
(Replicate(), Shard(dim=-1))
"""
from __future__ import annotations

from . import sharding  # noqa: F401  (registers the custom ops' DTensor sharding rules)
from .styles import ColwiseParallel, RowwiseParallel


__all__ = ["RowwiseParallel", "ColwiseParallel"]
