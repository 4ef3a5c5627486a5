"""The reference path of the quantized ops: PyTorch alone, reading only the named rows' codes and scales
(the path for CPU tensors outside the interpreter). The tests' oracle is the other formulation, the whole
table dequantized (``triton_embed.quantized.formats``) and then looked up.

A table is ``(codes, scales, quant_map)``: int8 codes (V, D) with (V,) row absmax (``quant_map`` unused), or
packed 4-bit codes (⌈V·D/2⌉ bytes, any shape) with (⌈V·D/B⌉,) block absmax and the (16,) codebook.

>>> import torch
>>> from triton_embed.quantized import formats
>>> table = torch.randn(6, 5)
>>> packed, absmax = formats.quantize_4bit(table, "nf4")
>>> rows = gather_rows(packed, absmax, formats.codebook("nf4"), torch.tensor([[4, 1]]), 6, 5, 64, torch.float32)
>>> full = formats.dequantize_4bit(packed, absmax, formats.codebook("nf4"), (6, 5), 64, torch.float32)
>>> torch.equal(rows, full[torch.tensor([[4, 1]])])
True
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..reference import layer_norm_backward, layer_norm_forward


def gather_rows(codes: Tensor, scales: Tensor, quant_map: Tensor | None, indices: Tensor, num_rows: int, dim: int,
                blocksize: int, dtype: torch.dtype) -> Tensor:
    """``indices.shape + (D,)`` dequantized rows in ``dtype`` (bitsandbytes' arithmetic: float32 products,
    one rounding).

    An id outside ``[0, num_rows)`` never reads another row's codes (a 4-bit row is found by arithmetic on
    the flattened table, where -1 would wrap to the last row): on the CPU it raises ``IndexError``, whatever
    the index check mode, as ``F.embedding`` (the float reference path) does; on other devices (the
    reference backend forced there) it gives a zero row, without a host sync, as the kernels do.

    >>> import torch
    >>> codes, scales = torch.ones(2, 3, dtype=torch.int8), torch.ones(2)
    >>> gather_rows(codes, scales, None, torch.tensor([-1]), 2, 3, 0, torch.float32)
    Traceback (most recent call last):
    ...
    IndexError: index out of range in self: embedding id -1 is outside [0, 2)
    """
    ids = indices.long()
    in_range = (ids >= 0) & (ids < num_rows)
    masked = ids.device.type != "cpu"
    if masked:
        ids = torch.where(in_range, ids, 0)
    elif ids.numel() and not bool(in_range.all()):
        bad = ids[~in_range].reshape(-1)[0].item()
        raise IndexError(f"index out of range in self: embedding id {bad} is outside [0, {num_rows})")
    if codes.dtype == torch.int8:
        rows = F.embedding(ids, codes).float() * (F.embedding(ids, scales.view(-1, 1)) / 127.0)
    else:
        element = ids.unsqueeze(-1) * dim + torch.arange(dim, device=codes.device)
        byte = codes.reshape(-1).view(torch.uint8)[element >> 1]
        nibble = torch.where(element % 2 == 0, byte >> 4, byte & 15).long()
        rows = quant_map[nibble] * scales[element // blocksize]
    if masked:
        rows = torch.where(in_range.unsqueeze(-1), rows, 0.0)
    return rows.to(dtype)


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
