"""LayerNorm on the reference path: ``F.layer_norm`` over the last dim with the per-row statistics the kernels
save (float32, float64 for float64 rows), and its backward by ATen's own kernels."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _param_for(param: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A LayerNorm parameter in a dtype ATen accepts beside ``x``: as it is where ATen takes it (the same
    dtype, or float32 beside a half-precision ``x``), else cast to ``x``'s dtype (float32/64 data) or to
    float32. The kernels read any floating parameter dtype; this keeps the reference path's results ATen's."""
    if param is None or param.dtype == x.dtype:
        return param
    if x.dtype in (torch.float32, torch.float64):
        return param.to(x.dtype)
    return param.to(torch.float32)


def _statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and 1/sqrt(var + eps) over the last dim, in float32 (float64 for float64 data).
    Rows of no elements have mean 0 and variance 0, as the kernels give them."""
    wide = x.to(_accumulator(x.dtype))
    if not x.shape[-1]:
        zeros = wide.new_zeros(x.shape[:-1])
        return zeros, torch.rsqrt(zeros + eps)
    mean = wide.mean(dim=-1)
    var = (wide - mean.unsqueeze(-1)).square().mean(dim=-1)
    return mean, torch.rsqrt(var + eps)


def _aten_statistics(x: torch.Tensor) -> bool:
    """Whether ATen's LayerNorm keeps the statistics this path returns: float32/float64 rows (whose
    statistics ATen computes and returns in that dtype, our accumulator's) of at least one element. Other
    dtypes get theirs from :func:`_statistics` (ATen's would be in the half-precision dtype)."""
    return x.dtype in (torch.float32, torch.float64) and x.shape[-1] > 0


def layer_norm_forward(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``F.layer_norm`` over the last dim, plus the per-row (mean, rstd) the Triton path saves: ATen's own
    where it keeps them (one pass, the output bitwise ``F.layer_norm``'s), else float32 ones of their own.
    As on the kernels, the parameters may have any floating dtype (see :func:`_param_for`)."""
    dim = x.shape[-1]
    w, b = _param_for(weight, x), _param_for(bias, x)
    if _aten_statistics(x):
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, [dim], w, b, eps)
        return y, mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])
    y = F.layer_norm(x, (dim,), w, b, eps)
    mean, rstd = _statistics(x, eps)
    return y, mean, rstd


def layer_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dγ, dβ) of ``F.layer_norm`` over the last dim, by ATen's own kernels (no autograd, so it also runs
    inside a custom op's implementation). ``mean``/``rstd`` (any shape of one value per row) are used where
    they are ATen's kind (see :func:`layer_norm_forward`); otherwise, or when None, the forward is recomputed
    for ATen's statistics. Parameters of another dtype are cast as in :func:`layer_norm_forward`, and their
    gradients cast back."""
    dim = x.shape[-1]
    w, b = _param_for(weight, x), _param_for(bias, x)
    if mean is not None and rstd is not None and _aten_statistics(x) and mean.dtype == rstd.dtype == x.dtype:
        native_mean, native_rstd = mean.reshape(-1), rstd.reshape(-1)
    else:
        _, native_mean, native_rstd = torch.ops.aten.native_layer_norm(x, [dim], w, b, eps)
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(
        grad, x, [dim], native_mean, native_rstd, w, b, [True, weight is not None, bias is not None]
    )
    return dx, None if weight is None else dw.to(weight.dtype), None if bias is None else db.to(bias.dtype)
