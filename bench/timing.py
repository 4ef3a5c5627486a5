"""Timers (median, 20th/80th percentiles and the samples), the copy-bandwidth ceiling, peak memory, deadlines.

On a GPU: ``triton.testing.do_bench(fn, return_mode="all")``, which clears the L2 cache before every
repetition and resets the listed gradients outside the timed region. On the CPU: a wall-clock loop with the
same statistics (only the reference path and its PyTorch peers are timed there: interpreted kernels say
nothing about GPU speed).
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .rounds import Timing, quantile

QUANTILES = (0.5, 0.2, 0.8)
#: (warm-up ms, repetition ms) of ``do_bench`` per timer profile.
PROFILES = {"full": (25, 100), "quick": (10, 30), "validate": (10, 40)}


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples (see :func:`rounds.quantile`).

    >>> _quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5)
    3.0
    """
    return quantile(sorted_samples, q)


def from_samples(samples: Sequence[float]) -> Timing:
    """A :class:`Timing` from raw samples (ms).

    >>> from_samples([3.0, 1.0, 2.0])
    Timing(median=2.0, p20=1.4, p80=2.6, samples=(1.0, 2.0, 3.0))
    """
    ordered = sorted(float(s) for s in samples)
    return Timing(*(quantile(ordered, q) for q in QUANTILES), samples=tuple(ordered))


class Timer:
    """Times a callable on one device; ``reset`` tensors get ``.grad = None`` before every repetition.

    ``profile``: ``"full"`` (do_bench's 25 ms warm-up, 100 ms of repetitions), ``"quick"`` or ``"validate"``.
    """

    def __init__(self, device: torch.device, quick: bool = False, profile: str | None = None) -> None:
        self.device = device
        self.gpu = device.type == "cuda"
        self.profile = profile or ("quick" if quick else "full")
        self.warmup_ms, self.rep_ms = PROFILES[self.profile]
        self.cpu_budget_s = 0.05 if self.profile == "full" else 0.02

    def __call__(self, fn: Callable[[], object], reset: Sequence[torch.Tensor] = ()) -> Timing:
        if self.gpu:
            return self._gpu(fn, reset)
        return self._cpu(fn, reset)

    def _gpu(self, fn: Callable[[], object], reset: Sequence[torch.Tensor]) -> Timing:
        from triton.testing import do_bench

        grads = list(reset) or None
        try:
            samples = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=grads, return_mode="all")
        except (AssertionError, TypeError):  # an older Triton without return_mode="all": quantiles only
            med, p20, p80 = do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=grads,
                                     quantiles=list(QUANTILES))
            return Timing(float(med), float(p20), float(p80))
        return from_samples([float(s) for s in samples])

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
        return from_samples(samples)


def copy_bandwidth(timer: Timer) -> tuple[float, int]:
    """(GB/s, bytes moved) of a large device-to-device ``dst.copy_(src)``: the ceiling for the GB/s figures.

    1 GiB on a GPU (far beyond L2), 64 MiB on the CPU. Bytes moved = 2 × size (read + write).
    """
    size = (1 << 30) if timer.gpu else (64 << 20)
    src = torch.empty(size // 4, dtype=torch.float32, device=timer.device).uniform_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src)).median
    del src, dst
    free_memory(timer.device)
    return 2 * size / (ms * 1e-3) / 1e9, 2 * size


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


class Deadline:
    """A wall-clock limit (``seconds=None``: none), read with :meth:`left`.

    >>> Deadline(None).left() == float("inf"), Deadline(60).left() > 59, Deadline(0).expired()
    (True, True, True)
    """

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seconds = seconds
        self.end = math.inf if seconds is None else clock() + seconds

    def left(self) -> float:
        """Seconds left (``inf`` without a limit)."""
        return self.end - self.clock()

    def expired(self) -> bool:
        """Whether the limit has passed."""
        return self.left() <= 0

    def limited(self) -> bool:
        """Whether there is a limit at all."""
        return self.seconds is not None


class Interrupted(BaseException):
    """Raised in the main thread when the process gets SIGTERM (as ``timeout`` sends) or SIGINT (Ctrl-C): a
    BaseException, so no ``except Exception`` on the way swallows it, and the run can write what it has
    before exiting. ``exit_code``: 128 + the signal number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"signal {signum}")
        self.exit_code = 128 + signum
        self.name = signal.Signals(signum).name


def raise_on_term() -> Callable[[], None]:
    """Make SIGTERM and SIGINT raise :class:`Interrupted`; returns a function that restores the previous
    handlers. Outside the main thread (where handlers cannot be set) it does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, old) for sig, old in previous.items()] and None
