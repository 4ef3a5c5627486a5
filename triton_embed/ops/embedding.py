"""The embedding custom ops (``torch.ops.triton_embed.*``): each dispatches to the Triton launchers or the
reference path, with a fake implementation for tracing and a registered autograd formula."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..runtime import errors
from ..runtime.dispatch import custom_op, run_op, use_triton
from ..runtime.errors import index_check_enabled
from ..runtime.validation import check_index_bounds, explained, ids_checked_by_torch
from . import embedding_backward, gather, renorm


@custom_op("triton_embed::embedding", mutates_args=())
def embedding(
    weight: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool, sparse: bool, deterministic: bool
) -> Tensor:
    """``weight[indices]``; the other arguments only shape the backward (``padding_idx=-1``: none)."""
    kernels = use_triton(weight)
    if not kernels and not ids_checked_by_torch(indices):
        check_index_bounds(indices, weight.shape[0])
    return lookup(weight, indices, kernels)


def lookup(weight: Tensor, indices: Tensor, kernels: bool) -> Tensor:
    """``weight[indices]`` by the Triton kernel (``kernels``) or the reference path, as the caller chose. The
    kernel masks bad ids and notes them in the error record; on the reference path PyTorch's CPU lookup
    raises for them (in our words), and elsewhere the caller has checked them (``check_index_bounds``)."""
    if kernels:
        device = weight.device
        errors.before_call(device)
        out = gather.gather(weight, indices)
        errors.after_call(device)
        return out
    try:
        return reference.gather(weight, indices)
    except IndexError as error:
        raise explained(error, indices, weight.shape[0]) from None


@embedding.register_fake
def _(weight, indices, padding_idx, scale_grad_by_freq, sparse, deterministic):
    return weight.new_empty((*indices.shape, weight.shape[1]))


def _embedding_setup_context(ctx, inputs, output) -> None:
    weight, indices, padding_idx, scale_grad_by_freq, sparse, deterministic = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.options = (padding_idx, scale_grad_by_freq, sparse, deterministic)


def _embedding_backward(ctx, grad: Tensor):
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    return weight_gradient(ctx, grad), None, None, None, None, None


def weight_gradient(ctx, grad: Tensor) -> Tensor:
    """The table's gradient of a lookup whose ``ctx`` holds the ids, ``num_weights`` and ``options``
    (padding_idx, scale_grad_by_freq, sparse, deterministic)."""
    (indices,) = ctx.saved_tensors
    padding_idx, scale_grad_by_freq, sparse, deterministic = ctx.options
    if sparse:
        return sparse_backward(grad, indices, ctx.num_weights, padding_idx, scale_grad_by_freq)
    return run_op("embedding_dense_backward", grad, indices, ctx.num_weights, padding_idx, scale_grad_by_freq,
                  deterministic)


embedding.register_autograd(_embedding_backward, setup_context=_embedding_setup_context)


def sparse_backward(grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool):
    """PyTorch's uncoalesced sparse COO weight gradient (``embedding_sparse_backward``), entry for entry: one
    entry per non-padding token, in token order, its values laid out as PyTorch lays them out (sparse
    gradients accumulate by that layout: on the CPU, contiguous values merge and others concatenate).

    It raises a pending out-of-range report first, as every op that runs kernels does (not inside a
    ``torch.compile`` graph, which traces this function into PyTorch ops: there the next op reports).
    Out-of-range ids (masked by the forward) name no row that no valid token named: they are dropped with
    the padding tokens (which costs a host sync, as in PyTorch), or, without a padding row, their zero
    entries go to the row of the call's first valid id (no sync). Where the host already sees a report on
    the device (the check is off), they are dropped as padding is, which covers a call with no valid id at
    all; only if the host cannot see that call's report yet (a GPU running behind) do its zero entries land
    on one row.
    """
    if scale_grad_by_freq:
        raise RuntimeError("embedding_backward: scale_grad_by_freq not supported with sparse gradients")
    seen = False
    if use_triton(grad) and not torch.compiler.is_compiling():
        errors.before_call(grad.device)
        seen = errors.reported(grad.device)  # still there after before_call: the check is off
    dim = grad.shape[-1]
    flat = indices.reshape(-1)
    values = grad.reshape(flat.numel(), dim)
    if not values.numel() or not num_weights:  # as PyTorch: no entry (no tokens, zero-width rows, no row at all)
        return _sparse(flat.new_empty((0,)), values.new_empty((0, dim)), num_weights, dim)
    valid = (flat >= 0) & (flat < num_weights)
    if padding_idx >= 0 or seen:
        # Dropping tokens has a data-dependent size: this costs a host sync (with a padding row, as in PyTorch).
        keep = torch.nonzero(valid & (flat != padding_idx)).squeeze(1)
        if seen:
            errors.forget(grad.device)  # handled exactly: later calls need not sync for this report
        return _sparse(flat.index_select(0, keep), values.index_select(0, keep), num_weights, dim)
    # (1,), no sync; clamped only for a call with no valid id whose report the host cannot see yet (a GPU
    # still behind), whose zero entries then stay in range, at the first id's nearest row.
    first_valid = flat.index_select(0, torch.argmax(valid.to(torch.uint8)).reshape(1)).clamp(0, num_weights - 1)
    return _sparse(torch.where(valid, flat, first_valid), _masked_values(values, valid), num_weights, dim)


def _masked_values(values: Tensor, valid: Tensor) -> Tensor:
    """``values`` with the rows of masked tokens zeroed, contiguous exactly where ``values`` is. PyTorch's
    entries are ``grad.reshape(-1, D)`` itself, which is not contiguous for, e.g., the expanded gradient of
    ``out.sum()``; the CPU's sparse addition concatenates such entries where it merges contiguous ones."""
    masked = torch.where(valid.unsqueeze(1), values, 0)
    if values.is_contiguous():
        return masked
    # Every other element of an (N, D, 2) tensor: not contiguous (N * D > 1). Made without writing into a
    # view, which torch.compile's graphs take too.
    return torch.stack((masked, masked), dim=-1)[..., 0]


def _sparse(rows: Tensor, values: Tensor, num_weights: int, dim: int) -> Tensor:
    # Every index is in [0, num_weights) by construction: the invariants need no check (a check would sync).
    return torch.sparse_coo_tensor(
        rows.reshape(1, -1).to(torch.int64), values, (num_weights, dim), is_coalesced=False, check_invariants=False,
    )


@custom_op("triton_embed::embedding_dense_backward", mutates_args=())
def embedding_dense_backward(
    grad: Tensor, indices: Tensor, num_weights: int, padding_idx: int, scale_grad_by_freq: bool, deterministic: bool
) -> Tensor:
    """The dense (num_weights, D) weight gradient of a lookup."""
    if use_triton(grad):
        errors.before_call(grad.device)
        return embedding_backward.dense_backward(
            grad, indices, num_weights, padding_idx, scale_grad_by_freq, deterministic
        )
    return reference.embedding_dense_backward(grad, indices, num_weights, padding_idx, scale_grad_by_freq)


@embedding_dense_backward.register_fake
def _(grad, indices, num_weights, padding_idx, scale_grad_by_freq, deterministic):
    return grad.new_empty((num_weights, grad.shape[-1]))


def _dense_backward_setup_context(ctx, inputs, output) -> None:
    grad, indices, num_weights, padding_idx, scale_grad_by_freq, deterministic = inputs
    ctx.save_for_backward(indices)
    ctx.options = (num_weights, padding_idx, scale_grad_by_freq, deterministic)


def _dense_backward_backward(ctx, grad_grad_weight: Tensor):
    """The gradient w.r.t. the output gradient: gather, zero at padding, divide by the id counts."""
    (indices,) = ctx.saved_tensors
    num_weights, padding_idx, scale_grad_by_freq, deterministic = ctx.options
    grad_grad = torch.ops.triton_embed.embedding(grad_grad_weight, indices, -1, False, False, deterministic)
    if padding_idx >= 0 or scale_grad_by_freq:
        factor = (indices != padding_idx).to(grad_grad.dtype)
        if scale_grad_by_freq:
            counts = torch.bincount(indices.reshape(-1), minlength=num_weights)
            factor = factor / counts[indices].to(grad_grad.dtype)
        grad_grad = grad_grad * factor.unsqueeze(-1)
    return grad_grad, None, None, None, None, None


embedding_dense_backward.register_autograd(_dense_backward_backward, setup_context=_dense_backward_setup_context)


@custom_op("triton_embed::embedding_renorm_", mutates_args=("weight",))
def embedding_renorm_(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float) -> None:
    """In place and without grad: rows named by ``indices`` whose norm exceeds ``max_norm`` are scaled."""
    kernels = use_triton(weight)
    if not kernels:
        check_index_bounds(indices, weight.shape[0])  # raises on a bad id, unless the check is off
    renorm_rows_(weight, indices, max_norm, norm_type, kernels)


def renorm_rows_(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float, kernels: bool) -> None:
    """The renorm by the kernels (``kernels``) or the reference path, the ids trusted as in :func:`lookup`."""
    if kernels:
        device = weight.device
        errors.before_call(device)
        renorm.renorm_(weight, indices, max_norm, norm_type)
        errors.after_call(device)
        # A kernel's write is invisible to autograd: bump the table's version as an in-place aten op would
        # (called through the op it is bumped again: harmless, versions need only grow).
        torch.autograd.graph.increment_version(weight)
        return
    if not index_check_enabled() and not _all_in_range(indices, weight.shape[0]):
        return  # with the check off: a call that met a bad id changes nothing (its lookup raises, as PyTorch's)
    reference.embedding_renorm_(weight, indices, max_norm, norm_type)


def _all_in_range(indices: Tensor, num_weights: int) -> bool:
    return bool(((indices >= 0) & (indices < num_weights)).all())


@embedding_renorm_.register_fake
def _(weight, indices, max_norm, norm_type):
    return None


__all__ = ["embedding", "embedding_dense_backward", "embedding_renorm_", "sparse_backward", "lookup", "renorm_rows_",
           "weight_gradient"]
