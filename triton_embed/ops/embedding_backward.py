"""Launchers of the dense weight gradient: atomic scatter-add, or sort + deterministic segment sums."""
from __future__ import annotations

import torch
import triton

from triton_embed.kernels.scatter import (
    count_ids_kernel,
    scatter_add_rows_kernel,
    segment_sum_carry_kernel,
    segment_sum_kernel,
)

from .. import tuning
from .._dispatch import device_guard, new_output, record_launch


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_backward(
    grad: torch.Tensor,
    indices: torch.Tensor,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    deterministic: bool,
) -> torch.Tensor:
    """The (num_weights, D) weight gradient of ``out = weight[indices]`` given ``grad`` = d loss / d out.

    ``padding_idx=-1`` means none. The deterministic path is bitwise repeatable; the atomic one is not.
    """
    # Checked here too, so that torch.use_deterministic_algorithms(True) around backward() alone is honoured.
    deterministic = deterministic or torch.are_deterministic_algorithms_enabled()
    dim = grad.shape[-1]
    flat = indices.reshape(-1).contiguous()
    grad_2d = grad.reshape(flat.numel(), dim)
    num_tokens = flat.numel()
    acc_dtype = _accumulator_dtype(grad.dtype)
    counts = count_ids(flat, num_weights) if scale_grad_by_freq and num_tokens else flat.new_empty(1)
    if deterministic:
        out = torch.zeros((num_weights, dim), dtype=grad.dtype, device=grad.device)
        if num_tokens and dim:
            with device_guard(grad):
                _segment_sum(grad_2d, flat, counts, out, padding_idx, scale_grad_by_freq, acc_dtype)
        return out
    acc = torch.zeros((num_weights, dim), dtype=acc_dtype, device=grad.device)
    if num_tokens and dim:
        with device_guard(grad):
            _scatter_add(grad_2d, flat, counts, acc, padding_idx, scale_grad_by_freq)
    return acc if acc.dtype == grad.dtype else acc.to(grad.dtype)


COUNT_BLOCK = 1024


def count_ids(flat: torch.Tensor, num_weights: int) -> torch.Tensor:
    """(num_weights,) int32 occurrences of each id in ``flat`` (contiguous), without a host sync."""
    counts = torch.zeros(num_weights, dtype=torch.int32, device=flat.device)
    if flat.numel():
        with device_guard(flat):
            count_ids_kernel[(triton.cdiv(flat.numel(), COUNT_BLOCK),)](flat, counts, flat.numel(), num_weights,
                                                                        BLOCK_T=COUNT_BLOCK)
        record_launch("count_ids_kernel")
    return counts


def _scatter_add(grad_2d, flat, counts, acc, padding_idx, scale_grad_by_freq) -> None:
    num_tokens, dim = grad_2d.shape

    def launch(config: tuning.Config, target: torch.Tensor = acc) -> None:
        meta, options = tuning.split(config)
        meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
        grid = (triton.cdiv(num_tokens, meta["BLOCK_T"]), triton.cdiv(dim, meta["BLOCK_D"]))
        scatter_add_rows_kernel[grid](
            grad_2d, flat, counts, target, num_tokens, dim, acc.shape[0], padding_idx,
            grad_2d.stride(0), grad_2d.stride(1), SCALE_BY_FREQ=scale_grad_by_freq, **meta, **options,
        )

    scratch = None

    def bench(config: tuning.Config) -> None:
        # Timing runs accumulate into scratch, never into the real gradient.
        nonlocal scratch
        if scratch is None:
            scratch = torch.zeros_like(acc)
        launch(config, scratch)

    launch(tuning.choose("scatter_add", grad_2d.dtype, dim, num_tokens, bench=bench))
    record_launch("scatter_add_rows_kernel")


def _segment_sum(grad_2d, flat, counts, out, padding_idx, scale_grad_by_freq, acc_dtype) -> None:
    num_tokens, dim = grad_2d.shape
    sorted_ids, order = torch.sort(flat, stable=True)
    acc_tl = triton.language.float64 if acc_dtype == torch.float64 else triton.language.float32

    def launch(config: tuning.Config) -> None:
        meta, options = tuning.split(config)
        meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(dim))
        num_chunks = triton.cdiv(num_tokens, meta["CHUNK"])
        head = new_output((num_chunks, dim), acc_dtype, out.device)
        tail = new_output((num_chunks, dim), acc_dtype, out.device)
        grid = (num_chunks, triton.cdiv(dim, meta["BLOCK_D"]))
        segment_sum_kernel[grid](
            grad_2d, sorted_ids, order, counts, out, head, tail, num_tokens, dim, padding_idx,
            grad_2d.stride(0), grad_2d.stride(1), out.stride(0), out.stride(1),
            SCALE_BY_FREQ=scale_grad_by_freq, ACC_DTYPE=acc_tl, **meta, **options,
        )
        segment_sum_carry_kernel[grid](
            sorted_ids, counts, out, head, tail, num_tokens, dim, padding_idx, out.stride(0), out.stride(1),
            CHUNK=meta["CHUNK"], BLOCK_D=meta["BLOCK_D"], SCALE_BY_FREQ=scale_grad_by_freq, **options,
        )

    # Each row is written whole by exactly one program, so timing runs may rewrite ``out`` in place.
    launch(tuning.choose("segment_sum", grad_2d.dtype, dim, num_tokens, bench=launch))
    record_launch("segment_sum_kernel")
    record_launch("segment_sum_carry_kernel")
