"""Argument checks shared by the functional API and the modules; PyTorch's exception types, clearer words."""
from __future__ import annotations

import operator

import torch

from .errors import index_check_enabled

INDEX_DTYPES = (torch.int32, torch.int64)


class PaddingIdxError(ValueError, AssertionError):
    """padding_idx outside [-num_embeddings, num_embeddings). An AssertionError too, as PyTorch raises."""


def check_indices_dtype(indices: torch.Tensor) -> None:
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"embedding indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype not in INDEX_DTYPES:
        raise RuntimeError(
            "Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int; "
            f"but got {indices.dtype} instead (embedding indices must be int32 or int64)"
        )


def check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"embedding weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise RuntimeError(f"'weight' must be 2-D, got a {weight.dim()}-D tensor of shape {tuple(weight.shape)}")


def normalize_padding_idx(padding_idx: int | None, num_embeddings: int) -> int | None:
    """padding_idx as a row number in [0, num_embeddings), or None; negative values count from the end."""
    if padding_idx is None:
        return None
    try:
        padding_idx = operator.index(padding_idx)  # any integral, as PyTorch: numpy ints, 0-d int tensors
    except TypeError:
        raise TypeError(f"padding_idx must be an integer or None, got {type(padding_idx).__name__}") from None
    if padding_idx >= num_embeddings or padding_idx < -num_embeddings:
        raise PaddingIdxError(
            f"Padding_idx must be within num_embeddings: got padding_idx={padding_idx} "
            f"for num_embeddings={num_embeddings}"
        )
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def _is_nan(value) -> bool:
    # x != x rather than math.isnan: under torch.compile(dynamic=True) a float option may be a SymFloat,
    # which math.isnan cannot take.
    return bool(value != value)


def check_max_norm(max_norm: float | None, norm_type: float, weight: torch.Tensor) -> None:
    if max_norm is not None:
        value = max_norm
        if _is_nan(value) or value < 0:
            raise ValueError(f"max_norm must be a non-negative number, got {max_norm}")
        if not (weight.dtype.is_floating_point or weight.dtype.is_complex):
            # PyTorch raises too (its norm() refuses integer tables); a silent integer rescale would corrupt rows.
            raise RuntimeError(
                f"max_norm rescales rows in place, which needs a floating or complex table; got {weight.dtype}"
            )
    if _is_nan(norm_type):
        raise ValueError(f"norm_type must be a number, got {norm_type}")


def check_table_placement(weight: torch.Tensor, max_norm: float | None) -> None:
    """A DTensor table: refuse what the ops cannot do on their own (they take replicated tables, tables
    sharded along the embedding dim, and ids sharded along a batch dim; see ``triton_embed.parallel``)."""
    placements = getattr(weight, "placements", None)
    if not placements:
        return
    if any(p.is_shard(dim=0) for p in placements):
        raise NotImplementedError(
            "a vocabulary-sharded (Shard(0)) DTensor table needs a masked lookup and a collective: parallelize the "
            "module with triton_embed.parallel.RowwiseParallel instead of calling the functional API on it"
        )
    if max_norm is not None:
        raise NotImplementedError(
            "max_norm on a DTensor table: use a triton_embed.parallel style (RowwiseParallel renorms each shard)"
        )


def check_same_device(indices: torch.Tensor, weight: torch.Tensor) -> None:
    if indices.device != weight.device:
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found indices on "
            f"{indices.device} and weight on {weight.device}"
        )


def check_index_bounds(indices: torch.Tensor, num_embeddings: int) -> None:
    """The reference path's check: raise IndexError if any id lies outside [0, num_embeddings) (one host
    sync on a GPU; PyTorch's own ops would assert on the device instead). Off with ``set_index_check``."""
    error = index_bounds_error(indices, num_embeddings)
    if error is not None:
        raise error


def index_bounds_error(indices: torch.Tensor, num_embeddings: int) -> IndexError | None:
    """The IndexError of :func:`check_index_bounds`, or None (every id inside, or the check off)."""
    if indices.numel() == 0 or not index_check_enabled():
        return None
    low, high = torch.aminmax(indices)
    low, high = torch.stack([low, high]).tolist()
    if low < 0 or high >= num_embeddings:
        bad = low if low < 0 else high
        return IndexError(
            f"index out of range in self: embedding id {bad} is outside [0, {num_embeddings}) "
            f"(ids span [{low}, {high}])"
        )
    return None


def ids_checked_by_torch(indices: torch.Tensor) -> bool:
    """Whether the reference path may leave the ids to PyTorch's own lookup: on the CPU it raises an
    IndexError for a bad id, before writing anything (:func:`explained` words it as ours); elsewhere a bad id
    would reach a device-side assert, so :func:`check_index_bounds` must run first."""
    return indices.device.type == "cpu"


def explained(error: IndexError, indices: torch.Tensor, num_embeddings: int) -> IndexError:
    """PyTorch's IndexError for a bad id of a CPU lookup, as :func:`check_index_bounds` words it (the error
    itself where the check is off)."""
    return index_bounds_error(indices, num_embeddings) or error
