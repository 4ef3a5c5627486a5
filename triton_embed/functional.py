"""Functional API: drop-in for ``torch.nn.functional.embedding``, on the Triton kernels."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import eager as _eager
from .ops import embedding as _embedding_ops  # (also registers triton_embed::embedding*)
from .ops import layer_norm as _layer_norm_ops  # noqa: F401  (registers triton_embed::layer_norm*)
from .ops import stable_embedding as _stable_ops  # (also registers triton_embed::stable_embedding*)
from .ops.forward_ad import (
    EmbeddingWithForwardAD,
    LayerNormWithForwardAD,
    StableEmbeddingWithForwardAD,
    forward_mode_active,
)
from .runtime import dispatch
from .runtime import validation as check
from .runtime.dispatch import eager, use_triton


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    deterministic: bool | None = None,
) -> Tensor:
    """Look up rows of ``weight`` for the ids in ``input``, as ``torch.nn.functional.embedding``.

    Args:
        input: int32/int64 ids of any shape, each in ``[0, weight.shape[0])``.
        weight: the ``(num_embeddings, embedding_dim)`` table.
        padding_idx: a row whose gradient stays zero (negative counts from the end).
        max_norm: if set, rows named by ``input`` whose ``norm_type``-norm exceeds it are rescaled
            to ``max_norm`` in place, without grad, before the lookup.
        norm_type: the p of the p-norm for ``max_norm`` (1, 2, inf are special-cased; any p works).
        scale_grad_by_freq: divide each id's gradient by its count in ``input``.
        sparse: give ``weight`` a sparse COO gradient.
        deterministic: force the bitwise-repeatable backward; it is also used whenever
            ``torch.are_deterministic_algorithms_enabled()``.

    Returns:
        ``input.shape + (embedding_dim,)`` rows, in ``weight``'s dtype.

    >>> import torch, triton_embed
    >>> weight = torch.arange(6.0).view(3, 2)
    >>> triton_embed.functional.embedding(torch.tensor([[2, 0]]), weight).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    """
    if eager(input, weight):
        padding = _check(input, weight, padding_idx, max_norm, norm_type)
        deterministic = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
        return _eager_embedding(input, weight, padding, max_norm, norm_type, bool(scale_grad_by_freq), bool(sparse),
                                deterministic)
    if _under_torch_func(input, weight):
        padding = _check(input, weight, padding_idx, max_norm, norm_type)
        return F.embedding(input, weight, _none_if_negative(padding), max_norm, norm_type, scale_grad_by_freq, sparse)
    padding = _check(input, weight, padding_idx, max_norm, norm_type)
    deterministic = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
    if max_norm is not None:
        with torch.no_grad():
            torch.ops.triton_embed.embedding_renorm_(weight, input, float(max_norm), float(norm_type))
    _refuse_complex_grad(weight)
    if forward_mode_active(weight):
        return EmbeddingWithForwardAD.apply(weight, input, padding, scale_grad_by_freq, sparse, deterministic)
    return torch.ops.triton_embed.embedding(weight, input, padding, scale_grad_by_freq, sparse, deterministic)


def _eager_embedding(
    input: Tensor, weight: Tensor, padding: int, max_norm: float | None, norm_type: float, scale_grad_by_freq: bool,
    sparse: bool, deterministic: bool,
) -> Tensor:
    """The lookup in eager mode: the path chosen once, the ids checked once (the kernels on the device; on the
    reference path here, before a renorm or off the CPU, else by PyTorch's lookup itself), then the launchers
    or the reference ops directly (``ops/eager.py``)."""
    kernels = use_triton(weight)
    if not kernels and (max_norm is not None or not check.ids_checked_by_torch(input)):
        check.check_index_bounds(input, weight.shape[0])
    if max_norm is not None:
        with torch.no_grad():
            _embedding_ops.renorm_rows_(weight, input, float(max_norm), float(norm_type), kernels)
    if weight.requires_grad and torch.is_grad_enabled():
        _refuse_complex_grad(weight)
        return _eager.embedding(weight, input, padding, scale_grad_by_freq, sparse, deterministic, kernels)
    return _embedding_ops.lookup(weight, input, kernels)


def _refuse_complex_grad(weight: Tensor) -> None:
    if weight.is_complex() and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("embedding does not support automatic differentiation for outputs with complex dtype "
                           "(as in PyTorch); detach the table or use a real dtype")


def _under_torch_func(*tensors: Tensor | None) -> bool:
    """Whether a ``torch.func`` transform (grad, vjp, jacrev, jacfwd, hessian, vmap) wraps an input. The ops
    then run as their PyTorch composition, which every transform supports: a ``torch.library`` op's
    backward can be neither differentiated nor batched by them."""
    if torch.compiler.is_compiling():
        return False
    return any(isinstance(t, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _none_if_negative(padding: int) -> int | None:
    return None if padding < 0 else padding


def _check(input: Tensor, weight: Tensor, padding_idx: int | None, max_norm: float | None, norm_type: float) -> int:
    """The checks every lookup makes; the padding row (non-negative) or -1."""
    check.check_weight(weight)
    check.check_indices_dtype(input)
    check.check_same_device(input, weight)
    check.check_table_placement(weight, max_norm)
    check.check_max_norm(max_norm, norm_type, weight)
    padding = check.normalize_padding_idx(padding_idx, weight.shape[0])
    return -1 if padding is None else padding


def _check_norm_param(param: Tensor | None, name: str, shape: tuple[int, ...], device: torch.device) -> None:
    if param is None:
        return
    if not isinstance(param, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(param).__name__}")
    if param.shape != shape:
        raise RuntimeError(
            f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
            f"{list(param.shape)} and normalized_shape = {list(shape)}"
        )
    if not param.dtype.is_floating_point:
        raise RuntimeError(f"{name} must be a floating tensor, got {param.dtype}")
    if param.device != device:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found {name} on {param.device} and input on {device}"
        )


def layer_norm(
    input: Tensor,
    normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation over the trailing ``normalized_shape`` dims, as ``torch.nn.functional.layer_norm``,
    on the Triton kernels: float32 statistics whatever the input dtype (float64 for float64 input), a
    deterministic backward (dγ/dβ through per-program partials and a fixed-order second stage).

    Args:
        input: a floating tensor ``(..., *normalized_shape)``.
        normalized_shape: the trailing shape to normalise over (an int for the last dim).
        weight, bias: optional affine parameters of shape ``normalized_shape``, any floating dtype.
        eps: added to the variance.

    Returns:
        A tensor like ``input`` (same shape and dtype).

    >>> import torch, triton_embed
    >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> y = triton_embed.functional.layer_norm(x, 4)
    >>> torch.allclose(y, torch.nn.functional.layer_norm(x, (4,)))
    True
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"layer_norm input must be a torch.Tensor, got {type(input).__name__}")
    # operator.index: any integral (numpy ints, 0-d int tensors), never a truncated float.
    if isinstance(normalized_shape, (tuple, list, torch.Size)):
        shape = tuple(operator.index(s) for s in normalized_shape)
    else:
        shape = (operator.index(normalized_shape),)
    if not shape:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one "
                           "element, but got normalized_shape = []")
    if not input.dtype.is_floating_point:  # NotImplementedError (a RuntimeError), as PyTorch raises
        raise NotImplementedError(f"layer_norm expects a floating input, got {input.dtype}")
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, {', '.join(map(str, shape))}], "
            f"but got input of size{list(input.shape)}"
        )
    _check_norm_param(weight, "weight", shape, input.device)
    _check_norm_param(bias, "bias", shape, input.device)
    fast = eager(input, weight, bias)
    if not fast and _under_torch_func(input, weight, bias):
        return F.layer_norm(input, shape, weight, bias, eps)
    dim = math.prod(shape)
    x = input.reshape(*input.shape[: input.dim() - len(shape)], dim)
    w = weight.reshape(dim) if weight is not None else None
    b = bias.reshape(dim) if bias is not None else None
    if forward_mode_active(x, w, b):
        y, _, _ = LayerNormWithForwardAD.apply(x, w, b, float(eps))
    elif not fast:
        y, _, _ = torch.ops.triton_embed.layer_norm(x, w, b, float(eps))
    elif torch.is_grad_enabled() and _any_requires_grad(x, w, b):
        y = _eager.layer_norm(x, w, b, float(eps))
    else:
        y, _, _ = dispatch.IMPLEMENTATIONS["triton_embed::layer_norm"](x, w, b, float(eps))
    return y.view(input.shape)


def _any_requires_grad(*tensors: Tensor | None) -> bool:
    return any(t is not None and t.requires_grad for t in tensors)


def stable_embedding(
    input: Tensor,
    weight: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    eps: float = 1e-5,
    *,
    deterministic: bool | None = None,
) -> Tensor:
    """bitsandbytes' StableEmbedding forward as one fused op: look up rows of ``weight``, cast them to
    ``torch.get_default_dtype()``, LayerNorm them over the last dim with ``norm_weight``/``norm_bias``,
    and cast the result back to ``weight``'s dtype.

    One kernel launch (two more for ``max_norm``'s in-place renorm); for backward only the indices and a
    float32 mean and rstd per token are kept, the rows are gathered again.

    Args:
        input: int32/int64 ids of any shape, each in ``[0, weight.shape[0])``.
        weight: the ``(num_embeddings, embedding_dim)`` table, any floating dtype.
        norm_weight, norm_bias: the LayerNorm's ``(embedding_dim,)`` parameters (float32 in
            bitsandbytes' module), or None.
        padding_idx: a row whose gradient stays zero (negative counts from the end).
        max_norm: if set, rows named by ``input`` whose ``norm_type``-norm exceeds it are rescaled
            in place, without grad, before the lookup.
        norm_type: the p of the p-norm for ``max_norm``.
        scale_grad_by_freq: divide each id's weight gradient by its count in ``input``.
        sparse: give ``weight`` a sparse COO gradient.
        eps: the LayerNorm's epsilon.
        deterministic: force the bitwise-repeatable backward; it is also used whenever
            ``torch.are_deterministic_algorithms_enabled()``.

    Returns:
        ``input.shape + (embedding_dim,)``, in ``weight``'s dtype.

    >>> import torch, triton_embed
    >>> weight = torch.arange(8.0).view(2, 4)
    >>> out = triton_embed.functional.stable_embedding(torch.tensor([1]), weight, torch.ones(4), torch.zeros(4))
    >>> [round(v, 4) for v in out[0].tolist()]
    [-1.3416, -0.4472, 0.4472, 1.3416]
    """
    check.check_weight(weight)
    if not weight.dtype.is_floating_point:
        raise RuntimeError(f"stable_embedding needs a floating weight, got {weight.dtype}")
    _check_norm_param(norm_weight, "norm_weight", (weight.shape[1],), weight.device)
    _check_norm_param(norm_bias, "norm_bias", (weight.shape[1],), weight.device)
    fast = eager(input, weight, norm_weight, norm_bias)
    if not fast and _under_torch_func(input, weight, norm_weight, norm_bias):  # bitsandbytes' graph, in PyTorch ops
        padding = _check(input, weight, padding_idx, max_norm, norm_type)
        rows = F.embedding(input, weight, _none_if_negative(padding), max_norm, norm_type, scale_grad_by_freq, sparse)
        normed = F.layer_norm(rows.to(torch.get_default_dtype()), (weight.shape[1],), norm_weight, norm_bias, eps)
        return normed.to(weight.dtype)
    padding = _check(input, weight, padding_idx, max_norm, norm_type)
    deterministic = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
    args = (
        weight, input, norm_weight, norm_bias, float(eps), torch.get_default_dtype(), padding,
        bool(scale_grad_by_freq), bool(sparse), deterministic,
    )
    if fast:
        return _eager_stable_embedding(args, max_norm, norm_type)
    if max_norm is not None:
        with torch.no_grad():
            torch.ops.triton_embed.embedding_renorm_(weight, input, float(max_norm), float(norm_type))
    if forward_mode_active(weight, norm_weight, norm_bias):
        out, _, _ = StableEmbeddingWithForwardAD.apply(*args)
    else:
        out, _, _ = torch.ops.triton_embed.stable_embedding(*args)
    return out


def _eager_stable_embedding(args: tuple, max_norm: float | None, norm_type: float) -> Tensor:
    """The fused op in eager mode (``args`` as the custom op takes them): the paths chosen once, the ids
    checked once as in :func:`_eager_embedding` (here if the renorm or, off the CPU, the op runs the reference
    path), then the launchers or reference ops."""
    weight, input, norm_weight, norm_bias, eps, compute_dtype = args[:6]
    kernels = use_triton(weight, norm_weight, norm_bias)
    renorm_kernels = max_norm is not None and use_triton(weight)
    reference_renorm = max_norm is not None and not renorm_kernels
    if reference_renorm or (not kernels and not check.ids_checked_by_torch(input)):
        check.check_index_bounds(input, weight.shape[0])
    if max_norm is not None:
        with torch.no_grad():
            _embedding_ops.renorm_rows_(weight, input, float(max_norm), float(norm_type), renorm_kernels)
    if torch.is_grad_enabled() and _any_requires_grad(weight, norm_weight, norm_bias):
        return _eager.stable_embedding(*args, kernels)
    return _stable_ops.fused_forward(weight, input, norm_weight, norm_bias, eps, compute_dtype, kernels)[0]


__all__ = ["embedding", "layer_norm", "stable_embedding"]
