"""bitsandbytes' StableEmbedding on the reference path, op for op: lookup, cast to the default dtype, LayerNorm,
cast back; as a function, as the oracle module, and as the fused op's forward and backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer_norm import layer_norm_backward, layer_norm_forward


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
