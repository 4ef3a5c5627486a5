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
from .styles import STYLE_ATTRIBUTE, ColwiseParallel, RowwiseParallel


def sharded_forward(module, input):
    """The forward of a module a style of this package has parallelized (its ids already local and replicated):
    the output as a DTensor in the style's natural layout, which the style then redistributes as asked."""
    from .colwise import colwise_forward
    from .rowwise import rowwise_forward

    style = getattr(module, STYLE_ATTRIBUTE)
    if isinstance(style, RowwiseParallel):
        return rowwise_forward(module, input, style.output_layouts)
    return colwise_forward(module, input)


__all__ = ["RowwiseParallel", "ColwiseParallel", "sharded_forward"]
