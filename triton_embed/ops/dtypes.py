"""Element types of the launchers: the Triton dtype of a torch dtype, and what sums accumulate in."""
from __future__ import annotations

import torch
import triton.language as tl

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of a floating torch dtype.

    >>> tl_dtype(torch.bfloat16)
    triton.language.bfloat16
    """
    try:
        return _TL_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"triton_embed: unsupported floating dtype {dtype}") from None


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and sums run in float32, or float64 when the data are float64.

    >>> accumulator_dtype(torch.bfloat16), accumulator_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32
