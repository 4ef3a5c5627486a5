"""Timers (median with 20th/80th percentiles), the copy-bandwidth ceiling, the zero-fill and peak memory.

On a GPU: ``triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])``, which clears the L2 cache before every
repetition and resets the listed gradients outside the timed region. On the CPU: a wall-clock loop with the
same statistics (only the reference path and its peers are timed there: interpreted kernels say nothing
about GPU speed).
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(frozen=True)
class Timing:
    """Milliseconds: median, 20th and 80th percentile."""

    median: float
    p20: float
    p80: float


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples.

    >>> _quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5)
    3.0
    """
    pos = q * (len(sorted_samples) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


class Timer:
    """Times a callable on one device; ``reset`` tensors get ``.grad = None`` before every repetition."""

    def __init__(self, device: torch.device, quick: bool = False) -> None:
        self.device = device
        self.gpu = device.type == "cuda"
        self.warmup_ms, self.rep_ms = (10, 30) if quick else (25, 100)
        self.cpu_budget_s = 0.02 if quick else 0.05

    def __call__(self, fn: Callable[[], object], reset: Sequence[torch.Tensor] = ()) -> Timing:
        if self.gpu:
            from triton.testing import do_bench

            med, p20, p80 = do_bench(
                fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=list(reset) or None, quantiles=list(QUANTILES)
            )
            return Timing(float(med), float(p20), float(p80))
        return self._cpu(fn, reset)

    def _cpu(self, fn: Callable[[], object], reset: Sequence[torch.Tensor]) -> Timing:
        def once() -> float:
            for t in reset:
                t.grad = None
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3

        once()  # warm-up
        samples: list[float] = []
        deadline = time.perf_counter() + self.cpu_budget_s
        while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 100):
            samples.append(once())
        samples.sort()
        return Timing(*(_quantile(samples, q) for q in QUANTILES))


def copy_bandwidth(timer: Timer) -> tuple[float, int]:
    """(GB/s, bytes moved) of a large device-to-device ``dst.copy_(src)``: the ceiling for the GB/s figures.

    1 GiB on a GPU (far beyond L2), 64 MiB on the CPU. Bytes moved = 2 × size (read + write).
    """
    size = (1 << 30) if timer.gpu else (64 << 20)
    ms = _time_copy(timer, size)
    free_memory(timer.device)
    return 2 * size / (ms * 1e-3) / 1e9, 2 * size


def _time_copy(timer: Timer, size: int) -> float:
    src = torch.empty(size // 4, dtype=torch.float32, device=timer.device).uniform_()
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src)).median


def zero_fill(timer: Timer, rows: int, dim: int, dtype: torch.dtype) -> Timing:
    """Time of ``torch.zeros(rows, dim)`` in ``dtype``: the dense weight gradient's fill, timed apart."""
    return timer(lambda: torch.zeros(rows, dim, dtype=dtype, device=timer.device))


def free_memory(device: torch.device) -> None:
    """Drop garbage and cached blocks so the next measurement starts clean (GPU only: on the CPU a full
    collection costs more than the small shapes it would free)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Memory:
    """Bytes above the starting allocation: kept for backward after the forward, and peak of forward+backward."""

    saved: int
    peak: int


def measure_memory(
    device: torch.device, forward: Callable[[], torch.Tensor], grad_out: torch.Tensor, params: Sequence[torch.Tensor]
) -> Memory | None:
    """Memory of one forward+backward (``torch.cuda.max_memory_allocated`` deltas); ``None`` off the GPU.

    ``saved`` = allocated after the forward − before − the output itself: what autograd keeps for backward.
    ``peak`` = the peak during forward+backward − before (it includes the weight gradient).
    """
    if device.type != "cuda":
        return None
    for p in params:
        p.grad = None
    free_memory(device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = forward()
    torch.cuda.synchronize(device)
    saved = torch.cuda.memory_allocated(device) - base - out.untyped_storage().nbytes()
    out.backward(grad_out)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    for p in params:
        p.grad = None
    return Memory(saved=max(saved, 0), peak=peak)
