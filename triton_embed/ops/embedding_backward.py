"""Launcher of the dense weight gradient: sort the ids, then ``kernels/embedding_backward.py``'s two
launches write every row of the gradient once, in its own dtype, with sums whose order depends on the
input alone (deterministic for every config; there is no atomic path)."""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from triton_embed.kernels.embedding_backward import (
    PARAM_BLOCK_D,
    SEG,
    embedding_bwd_pieces_kernel,
    embedding_bwd_rows_kernel,
)

from .. import tuning
from ..runtime.dispatch import device_guard, new_output, record_launch
from .dtypes import accumulator_dtype
from .plans import cdiv, plan
from .tiles import column_tile

#: Sorted positions per chunk (the kernels' constant, as a Python int).
CHUNK = SEG.value


def sorted_ids(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids sorted stably, the token of each sorted position as int64): equal ids keep token order."""
    return torch.sort(flat, stable=True)


def dense_backward(
    grad: torch.Tensor,
    indices: torch.Tensor,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    deterministic: bool = True,
) -> torch.Tensor:
    """The (num_weights, D) weight gradient of ``out = weight[indices]`` given ``grad`` = d loss / d out.

    ``padding_idx=-1`` means none; ids outside ``[0, num_weights)`` contribute nothing. Bitwise repeatable
    whatever ``deterministic`` says (it is accepted for the API's sake).
    """
    dim = grad.shape[-1]
    flat = indices if indices.dim() == 1 and indices.is_contiguous() else indices.reshape(-1).contiguous()
    grad_2d = grad if grad.dim() == 2 else grad.reshape(flat.numel(), dim)
    return accumulate_rows(grad_2d, flat, num_weights, padding_idx, scale_grad_by_freq)


def sorted_pieces(
    rows: torch.Tensor, flat: torch.Tensor, num_weights: int, padding_idx: int, every_run: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted ids, their tokens, head pieces, tail pieces): the stable sort of ``flat`` and the first launch
    (``embedding_bwd_pieces_kernel``), the (C, D) sums of ``rows`` over the pieces of runs that cross chunks
    of CHUNK sorted positions, in float32 (float64 for float64 rows). ``every_run``: the padding row's and
    out-of-range ids' runs too."""
    num_tokens, dim = rows.shape
    acc = accumulator_dtype(rows.dtype)
    acc_tl = tl.float64 if acc == torch.float64 else tl.float32
    ids, order = sorted_ids(flat)
    num_chunks = cdiv(num_tokens, CHUNK)
    head = new_output((num_chunks, dim), acc, rows.device)
    tail = new_output((num_chunks, dim), acc, rows.device)

    def pieces(config: tuning.Config) -> None:
        meta, options = plan(column_tile, config, dim, 1, acc == torch.float64)
        embedding_bwd_pieces_kernel[(num_chunks,)](
            rows, ids, order, head, tail, num_tokens, dim, num_weights, padding_idx,
            rows.stride(0), rows.stride(1), ACC_DTYPE=acc_tl, EVERY_RUN=every_run, **meta, **options,
        )

    # Rewrites only its own outputs: timing runs may launch into them.
    pieces(tuning.choose("embedding_pieces", rows.dtype, dim, num_tokens, bench=pieces,
                         variant="every_run" if every_run else ""))
    record_launch("embedding_bwd_pieces_kernel")
    return ids, order, head, tail


def accumulate_rows(
    rows: torch.Tensor,
    flat: torch.Tensor,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    param_grads: Optional[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]] = None,
    tuning_name: str = "embedding_rows",
) -> torch.Tensor:
    """``out[v] = Σ_{t: flat[t] = v} rows[t]`` (÷ the count with ``scale_grad_by_freq``) for all v, written
    once in ``rows``' dtype. ``param_grads = (partial_w, partial_b, dγ | None, dβ | None)``: the same launch
    also finishes StableEmbedding's dγ/dβ from the (P, D) partials."""
    num_tokens, dim = rows.shape
    if not num_tokens or not dim:
        out = torch.zeros((num_weights, dim), dtype=rows.dtype, device=rows.device)
        if param_grads is not None:
            for t in param_grads[2:]:
                if t is not None:
                    t.zero_()
        return out
    acc = accumulator_dtype(rows.dtype)
    acc_tl = tl.float64 if acc == torch.float64 else tl.float32
    out = new_output((num_weights, dim), rows.dtype, rows.device)
    with device_guard(rows):
        ids, order, head, tail = sorted_pieces(rows, flat, num_weights, padding_idx)
        if param_grads is None:
            partial_w = partial_b = head
            dw = db = None
        else:
            partial_w, partial_b, dw, db = param_grads
        dw_arg = dw if dw is not None else partial_w
        db_arg = db if db is not None else partial_b

        def write_rows(config: tuning.Config) -> None:
            meta, options = plan(column_tile, config, dim, 1, acc == torch.float64)
            row_programs = cdiv(num_weights, meta["BLOCK_V"])
            param_programs = cdiv(dim, PARAM_BLOCK_D.value) if param_grads is not None else 0
            embedding_bwd_rows_kernel[(row_programs + param_programs,)](
                rows, ids, order, head, tail, out, partial_w, partial_b, dw_arg, db_arg,
                num_tokens, dim, num_weights, partial_w.shape[0], padding_idx, row_programs,
                rows.stride(0), rows.stride(1), out.stride(0), out.stride(1),
                dw_arg.stride(0), db_arg.stride(0),
                SCALE_BY_FREQ=scale_grad_by_freq, ACC_DTYPE=acc_tl, PARAM_GRADS=param_grads is not None,
                HAS_WEIGHT=dw is not None, HAS_BIAS=db is not None, **meta, **options,
            )

        write_rows(tuning.choose(tuning_name, rows.dtype, dim, num_tokens, bench=write_rows, rows=num_weights))
        record_launch("embedding_bwd_rows_kernel")
    return out
