"""The reference path: every op in PyTorch alone, as bitsandbytes runs it. The oracle for the tests and
the implementation for CPU tensors outside the interpreter."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding(
    indices: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> torch.Tensor:
    """bitsandbytes.nn.Embedding.forward: one F.embedding call with all seven options.

    >>> import torch
    >>> embedding(torch.tensor([2, 0]), torch.arange(6.).view(3, 2)).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """
    return F.embedding(indices, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)


def gather(weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` for ``indices`` (any shape); output ``indices.shape + (D,)``."""
    return F.embedding(indices, weight)


def embedding_dense_backward(
    grad: torch.Tensor,
    indices: torch.Tensor,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> torch.Tensor:
    """The dense weight gradient of a lookup, as ATen computes it (``padding_idx=-1``: none). Ids outside
    ``[0, num_weights)`` (another shard's rows) contribute nothing, as on the kernels."""
    flat = indices.reshape(-1)
    grad_2d = grad.reshape(flat.numel(), grad.shape[-1])
    inside = (flat >= 0) & (flat < num_weights)
    if not bool(inside.all()):
        flat, grad_2d = flat[inside], grad_2d[inside]
    return torch.ops.aten.embedding_dense_backward(grad_2d, flat, num_weights, padding_idx, scale_grad_by_freq)


def embedding_renorm_(weight: torch.Tensor, indices: torch.Tensor, max_norm: float, norm_type: float,
                      row_start: int = 0) -> None:
    """In place: rows named by ``indices`` with a ``norm_type``-norm above ``max_norm`` are scaled down. For
    a vocabulary shard (rows ``[row_start, row_start + V)`` of a larger table) only its own rows."""
    local = indices.reshape(-1) - row_start
    local = local[(local >= 0) & (local < weight.shape[0])]
    with torch.no_grad():
        torch.embedding_renorm_(weight, local.contiguous(), max_norm, norm_type)


def shard_gather(weight: torch.Tensor, indices: torch.Tensor, row_start: int) -> torch.Tensor:
    """Rows of a vocabulary shard holding rows ``[row_start, row_start + V)`` of a larger table: ids of other
    shards give zero rows, so the sum of all shards' outputs is the full lookup.

    >>> shard_gather(torch.arange(4.0).view(2, 2), torch.tensor([0, 3, 4]), row_start=3).tolist()
    [[0.0, 0.0], [0.0, 1.0], [2.0, 3.0]]
    """
    local = indices - row_start
    inside = (local >= 0) & (local < weight.shape[0])
    if not weight.shape[0]:
        return weight.new_zeros((*indices.shape, weight.shape[1]))
    rows = F.embedding(torch.where(inside, local, 0), weight)
    return torch.where(inside.unsqueeze(-1), rows, torch.zeros((), dtype=weight.dtype, device=weight.device))


# ----------------------------------------------------------------------------------------------------------
# LayerNorm and StableEmbedding


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


def stable_embedding(
    input: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    eps: float = 1e-5,
) -> torch.Tensor:
    """bitsandbytes.nn.StableEmbedding.forward as a function, op for op: lookup, cast to the default dtype,
    LayerNorm over the last dim, cast back to the table's dtype.

    >>> import torch
    >>> out = stable_embedding(torch.tensor([2, 0]), torch.randn(3, 4), torch.ones(4), torch.zeros(4))
    >>> out.shape, bool(out.mean(-1).abs().max() < 1e-5)
    (torch.Size([2, 4]), True)
    """
    emb = F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    emb = emb.to(torch.get_default_dtype())
    return F.layer_norm(emb, (weight.shape[1],), norm_weight, norm_bias, eps).to(weight.dtype)


class StableEmbedding(torch.nn.Embedding):
    """bitsandbytes.nn.StableEmbedding written out in PyTorch alone: the oracle of the tests.

    The one deliberate difference: ``device`` and ``dtype`` reach ``torch.nn.Embedding`` as keywords (0.50
    passes them positionally into its ``_freeze, device`` slots).

    >>> import torch
    >>> emb = StableEmbedding(10, 4, padding_idx=0)
    >>> emb(torch.tensor([[1, 0, 3]])).shape, sorted(emb.state_dict())
    (torch.Size([1, 3, 4]), ['norm.bias', 'norm.weight', 'weight'])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
            _weight, device=device, dtype=dtype,
        )
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)

    def reset_parameters(self) -> None:
        if self.weight.numel():  # bitsandbytes divides by zero on an empty table
            torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        emb = F.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
            self.sparse,
        )
        # Always cast to the default dtype (float32 normally), as bitsandbytes does.
        emb = emb.to(torch.get_default_dtype())
        return self.norm(emb).to(self.weight.dtype)


def stable_embedding_forward(
    weight: torch.Tensor,
    indices: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    eps: float,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused op's forward on the reference path: (output, flat mean, flat rstd)."""
    emb = F.embedding(indices, weight).to(compute_dtype)
    out, mean, rstd = layer_norm_forward(emb, norm_weight, norm_bias, eps)
    return out.to(weight.dtype), mean.reshape(-1), rstd.reshape(-1)


def stable_embedding_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    indices: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    eps: float,
    compute_dtype: torch.dtype,
    mean: torch.Tensor | None = None,
    rstd: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(d(emb) rows (N, D) in weight's dtype, dγ, dβ) of the fused op, following bitsandbytes' graph
    backwards: the output gradient cast to the default dtype (backward of the last ``.to``), ATen's
    LayerNorm backward (with the forward's ``mean``/``rstd`` where they are ATen's kind, see
    :func:`layer_norm_backward`), and its input gradient cast to the weight's dtype (backward of the first
    ``.to``). The rows are gathered again: the forward keeps no N x D activation."""
    dim = weight.shape[1]
    emb = F.embedding(indices.reshape(-1), weight).to(compute_dtype)
    dy = grad.reshape(indices.numel(), dim).to(compute_dtype)
    dx, dw, db = layer_norm_backward(dy, emb, norm_weight, norm_bias, mean, rstd, eps)
    return dx.to(weight.dtype), dw, db
