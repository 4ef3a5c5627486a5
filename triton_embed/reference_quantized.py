"""The reference path of the quantized ops: PyTorch alone, reading only the named rows' codes and scales
(the path for CPU tensors outside the interpreter). The tests' oracle is the other formulation, the whole
table dequantized (``triton_embed.quantize``) and then looked up.

A table is ``(codes, scales, quant_map)``: int8 codes (V, D) with (V,) row absmax (``quant_map`` unused), or
packed 4-bit codes (⌈V·D/2⌉ bytes, any shape) with (⌈V·D/B⌉,) block absmax and the (16,) codebook.

>>> import torch
>>> from triton_embed import quantize
>>> table = torch.randn(6, 5)
>>> packed, absmax = quantize.quantize_4bit(table, "nf4")
>>> rows = gather_rows(packed, absmax, quantize.codebook("nf4"), torch.tensor([[4, 1]]), 5, 64, torch.float32, 6)
>>> full = quantize.dequantize_4bit(packed, absmax, quantize.codebook("nf4"), (6, 5), 64, torch.float32)
>>> torch.equal(rows, full[torch.tensor([[4, 1]])])
True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import layer_norm_backward, layer_norm_forward


def gather_rows(codes: Tensor, scales: Tensor, quant_map: Tensor | None, indices: Tensor, dim: int, blocksize: int,
                dtype: torch.dtype, num_rows: int | None = None) -> Tensor:
    """``indices.shape + (D,)`` dequantized rows in ``dtype`` (bitsandbytes' arithmetic: float32 products,
    one rounding). Ids outside ``[0, num_rows)`` raise PyTorch's own ``IndexError``, as a lookup does, whatever
    the index check says (a 4-bit table's flat offsets would otherwise wrap: id -1 would read the last row)."""
    if codes.dtype == torch.int8:
        rows = F.embedding(indices, codes)
        row_scales = F.embedding(indices, scales.view(-1, 1))
        return (rows.float() * (row_scales / 127.0)).to(dtype)
    if num_rows is not None:  # PyTorch's bounds check of a lookup, on a stride-0 stand-in of the table's rows
        F.embedding(indices, codes.new_empty((1, 1)).expand(num_rows, 1))
    element = indices.long().unsqueeze(-1) * dim + torch.arange(dim, device=codes.device)
    byte = codes.reshape(-1).view(torch.uint8)[element >> 1]
    nibble = torch.where(element % 2 == 0, byte >> 4, byte & 15).long()
    return (quant_map[nibble] * scales[element // blocksize]).to(dtype)


def stable_forward(rows: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float,
                   compute_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(``LayerNorm(rows.to(compute_dtype)).to(rows.dtype)``, flat mean, flat rstd): bitsandbytes'
    StableEmbedding after the lookup, on already dequantized rows."""
    out, mean, rstd = layer_norm_forward(rows.to(compute_dtype), norm_weight, norm_bias, eps)
    return out.to(rows.dtype), mean.reshape(-1), rstd.reshape(-1)


def stable_backward(grad: Tensor, rows: Tensor, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float,
                    compute_dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """(dγ, dβ) of :func:`stable_forward` (the table is frozen: no gradient reaches it)."""
    dim = rows.shape[-1]
    emb = rows.reshape(-1, dim).to(compute_dtype)
    dy = grad.reshape(-1, dim).to(compute_dtype)
    _, dw, db = layer_norm_backward(dy, emb, norm_weight, norm_bias, None, None, eps)
    return dw, db


__all__ = ["gather_rows", "stable_forward", "stable_backward"]
