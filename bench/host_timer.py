"""How host time per call is measured (``host_time``): Triton launches stubbed out, so a call costs exactly the
Python and PyTorch work around its launches, and two callables timed in interleaved rounds whose per-round ratio
stays steady on a shared machine."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any, Callable, Iterator

import torch

from triton_embed import tuning
from triton_embed.runtime import dispatch


def _launch_nothing(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def stubbed_launches() -> Iterator[None]:
    """Inside: every Triton kernel launch (``kernel[grid](...)``) is a no-op, and CPU tensors take the kernels'
    path (as under the interpreter), so a call costs exactly the Python and PyTorch work around its launches.
    Outputs are left unwritten: for timing only. Tuning is off (nothing is timed at first use) and the
    in-process config choices made inside are forgotten on the way out."""
    from triton.runtime import jit

    kinds = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - every supported Triton has the interpreter
        pass
    saved = [(kind, kind.__dict__.get("__getitem__")) for kind in kinds]
    interpreter = dispatch.interpreter_enabled
    autotune = os.environ.get("TRITON_EMBED_AUTOTUNE")
    os.environ["TRITON_EMBED_AUTOTUNE"] = "0"
    for kind in kinds:
        kind.__getitem__ = lambda self, grid: _launch_nothing
    if not interpreter():  # compiled kernels, CPU tensors: route them to the kernels' path anyway
        dispatch.interpreter_enabled = lambda: True
    try:
        yield
    finally:
        for kind, original in saved:
            if original is None:
                del kind.__getitem__
            else:
                kind.__getitem__ = original
        dispatch.interpreter_enabled = interpreter
        if autotune is None:
            os.environ.pop("TRITON_EMBED_AUTOTUNE", None)
        else:
            os.environ["TRITON_EMBED_AUTOTUNE"] = autotune
        if not interpreter():
            tuning.forget_choices()


def timed_pair(ours: Callable[[], object], peer: Callable[[], object], rounds: int, calls: int, group: int,
                gpu: bool) -> tuple[float, float, float]:
    """(our median µs per call, the peer's, the median over rounds of the ratio of the two) over ``rounds``
    rounds (an even number: each goes first as often) of ``calls`` samples each; a sample times ``group``
    calls together (the clock's own cost spread over them). Each batch starts with ``calls // 4`` (at least
    one) untimed calls that let it settle after the other's (its allocations, its caches). A round's ratio
    compares two batches run next to each other, under the same load: on a shared machine it is far steadier
    than the ratio of overall medians. On the CPU the clock is the thread's CPU time (the slices other
    processes take do not count); on a GPU it is the wall clock (time until the calls return), the device
    synchronised after each batch, untimed."""
    samples: tuple[list[float], list[float]] = ([], [])
    ratios: list[float] = []
    clock = time.perf_counter_ns if gpu else time.thread_time_ns
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    for n in range(rounds + rounds % 2):
        medians = [0.0, 0.0]
        for which in ((0, 1) if n % 2 == 0 else (1, 0)):
            fn, batch = (ours, peer)[which], []
            for _ in range(max(1, calls // 4)):
                fn()
            sync()
            for _ in range(calls):
                start = clock()
                for _ in range(group):
                    fn()
                batch.append((clock() - start) / group)
            sync()
            samples[which].extend(batch)
            medians[which] = statistics.median(batch)
        ratios.append(medians[0] / medians[1])
    return statistics.median(samples[0]) / 1e3, statistics.median(samples[1]) / 1e3, statistics.median(ratios)


__all__ = ["stubbed_launches", "timed_pair"]
