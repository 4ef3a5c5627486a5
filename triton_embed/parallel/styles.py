"""The parallel styles: ``parallelize_module(module, mesh, RowwiseParallel())`` (or ``ColwiseParallel()``) for
triton_embed's ``Embedding`` and ``StableEmbedding``, in the manner of ``torch.distributed.tensor.parallel``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

from .colwise import colwise_forward
from .rowwise import check_output_layout, rowwise_forward

#: The attribute a parallelized module keeps its style in: its forward calls the style's ``sharded_forward``.
STYLE_ATTRIBUTE = "_triton_embed_parallel"


def _check_module(module: nn.Module, style: str, mesh: DeviceMesh) -> None:
    from ..nn import Embedding

    if not isinstance(module, Embedding):
        raise NotImplementedError(
            f"{style} applies to triton_embed.Embedding and StableEmbedding, not {type(module).__name__} "
            "(use torch.distributed.tensor.parallel's styles for other modules)"
        )
    if mesh.ndim != 1:
        raise ValueError(f"{style} needs a 1-D device mesh, got {mesh.ndim} dims (slice the tensor-parallel dim)")
    if module.sparse:
        raise NotImplementedError(f"{style} with sparse=True: DTensor has no sparse gradients")


def _distribute(module: nn.Module, name: str, mesh: DeviceMesh, placement: Placement, src_data_rank) -> None:
    param = getattr(module, name)
    if param is None or isinstance(param, DTensor):
        return
    module.register_parameter(name, nn.Parameter(
        distribute_tensor(param.data, mesh, [placement], src_data_rank=src_data_rank),
        requires_grad=param.requires_grad,
    ))


def _replicated_ids(ids: Any, layout: Placement, mesh: DeviceMesh) -> torch.Tensor:
    """The ids as a local tensor every rank holds whole (ids given sharded are all-gathered first)."""
    if not isinstance(ids, DTensor):
        if isinstance(layout, Replicate):
            return ids
        ids = DTensor.from_local(ids, mesh, [layout], run_check=False)
    return ids.redistribute(mesh, [Replicate()]).to_local()


class _EmbeddingStyle(ParallelStyle):
    _name = ""
    _table = Shard(0)

    def __init__(self, *, input_layouts: Placement | None = None, output_layouts: Placement | None = None,
                 use_local_output: bool = True) -> None:
        super().__init__()
        self.input_layouts = input_layouts or Replicate()
        self.output_layouts = output_layouts or self._default_output()
        self.use_local_output = use_local_output

    def _default_output(self) -> Placement:
        raise NotImplementedError

    def sharded_forward(self, module: nn.Module, input: torch.Tensor) -> DTensor:
        """The forward of a module this style parallelized (its ids already local and replicated): the output
        as a DTensor in the style's natural layout, which ``_output`` then redistributes as asked. The module
        calls it (``module.forward``) without importing this package."""
        raise NotImplementedError

    def _norm_placement(self) -> Placement:
        raise NotImplementedError

    def _partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        if name == "":
            _distribute(module, "weight", mesh, self._table, self.src_data_rank)
        elif name == "norm":
            for param in ("weight", "bias"):
                _distribute(module, param, mesh, self._norm_placement(), self.src_data_rank)

    def _input(self, module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
        return (_replicated_ids(inputs[0], self.input_layouts, mesh), *inputs[1:])

    def _output(self, module: nn.Module, output: DTensor, mesh: DeviceMesh):
        if tuple(output.placements) != (self.output_layouts,):
            output = output.redistribute(mesh, [self.output_layouts])
        return output.to_local() if self.use_local_output else output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _check_module(module, self._name, device_mesh)
        setattr(module, STYLE_ATTRIBUTE, self)
        return distribute_module(module, device_mesh, self._partition, self._input, self._output)


class RowwiseParallel(_EmbeddingStyle):
    """Shard a triton_embed ``Embedding``/``StableEmbedding`` by vocabulary rows (``Shard(0)``; uneven when V
    is not a multiple of the mesh size): replicated ids in, a masked local lookup in one kernel, one
    collective out (an all-reduce for ``Replicate()``, the default; a reduce-scatter for
    ``output_layouts=Shard(1)``, sequence parallel). StableEmbedding's LayerNorm runs after the collective
    (its γ/β are replicated). The table's gradient needs no communication; ``max_norm`` renorms locally.

    Args:
        input_layouts: layout of the ids (default ``Replicate()``; sharded ids are all-gathered first).
        output_layouts: ``Replicate()`` (default) or ``Shard(d)`` for a batch/sequence dim d of the ids.
        use_local_output: return a plain tensor (default) instead of a DTensor.

    Example (two processes, e.g. ``torchrun --nproc-per-node 2``)::

        mesh = init_device_mesh("cuda", (2,))
        emb = parallelize_module(triton_embed.StableEmbedding(32000, 2048), mesh, RowwiseParallel())
    """

    _name = "RowwiseParallel"
    _table = Shard(0)

    def __init__(self, *, input_layouts: Placement | None = None, output_layouts: Placement | None = None,
                 use_local_output: bool = True) -> None:
        super().__init__(input_layouts=input_layouts, output_layouts=output_layouts, use_local_output=use_local_output)
        check_output_layout(self.output_layouts, self._name)

    def _default_output(self) -> Placement:
        return Replicate()

    def _norm_placement(self) -> Placement:
        return Replicate()

    def sharded_forward(self, module: nn.Module, input: torch.Tensor) -> DTensor:
        return rowwise_forward(module, input, self.output_layouts)


class ColwiseParallel(_EmbeddingStyle):
    """Shard a triton_embed ``Embedding``/``StableEmbedding`` along the embedding dim (``Shard(1)``): the lookup
    is local and its output ``Shard(-1)`` (the default ``output_layouts``; ``Replicate()`` all-gathers it).
    StableEmbedding's γ/β are sharded ``Shard(0)`` alike; its statistics come from one all-reduce of 2
    numbers per token, forward and backward, never from gathered rows. ``max_norm`` is not supported
    (``NotImplementedError``): use RowwiseParallel.

    Args:
        input_layouts: layout of the ids (default ``Replicate()``).
        output_layouts: ``Shard(-1)`` (default) or ``Replicate()``.
        use_local_output: return a plain tensor (default) instead of a DTensor.
    """

    _name = "ColwiseParallel"
    _table = Shard(1)

    def _default_output(self) -> Placement:
        return Shard(-1)

    def _norm_placement(self) -> Placement:
        return Shard(0)

    def sharded_forward(self, module: nn.Module, input: torch.Tensor) -> DTensor:
        return colwise_forward(module, input)

    def _output(self, module: nn.Module, output: DTensor, mesh: DeviceMesh):
        layout = self.output_layouts
        if isinstance(layout, Shard) and layout.dim < 0:
            layout = Shard(layout.dim + output.ndim)
        if tuple(output.placements) != (layout,):
            output = output.redistribute(mesh, [layout])
        return output.to_local() if self.use_local_output else output


__all__ = ["RowwiseParallel", "ColwiseParallel", "STYLE_ATTRIBUTE"]
