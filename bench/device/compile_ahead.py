"""Compile ahead: ``--validate``'s ``compile`` stage on a GPU.

A first launch of each kernel specialization compiles it (Triton's front end, LLVM, ptxas): about half a
second each, one after another in the process that launches. A validate run launches a hundred or more,
so before its other stages it traces them all on the CPU (``run_trace.trace_run``: the code those stages run,
every launch recorded instead of run) and compiles each in a pool of worker processes with
``JITFunction.warmup`` (which compiles for dtype stand-ins of the tensors, as a real launch specializes
them), into Triton's on-disk cache; the stages' own first launches then load them from there.

A specialization the trace did not foresee is simply compiled at its first launch, as without this stage;
one that fails to compile here is reported and compiled (or fails, and is reported) at its launch.
"""
from __future__ import annotations

import concurrent.futures
import importlib
import multiprocessing
import os
import time
from typing import Any, Callable

from ..timing import Deadline
from .trace import Launch


#: Worker processes on a machine of ``os.cpu_count()`` cores: all but one.
def workers(cpus: int | None = None) -> int:
    """How many compile workers: all cores but one, at least one.

    >>> workers(16), workers(1)
    (15, 1)
    """
    return max(1, (cpus or os.cpu_count() or 2) - 1)


def warm(launch: Launch) -> tuple[str, float, str | None]:
    """Compile one launch's specialization (in a worker); (kernel, seconds, error or None)."""
    start = time.perf_counter()
    try:
        kernel = getattr(importlib.import_module(launch.module), launch.kernel)
        kernel.warmup(*launch.args, grid=(1,), **dict(launch.kwargs))
        error = None
    except Exception as exc:  # noqa: BLE001 - reported; the launch compiles (or fails) on its own later
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return launch.kernel, time.perf_counter() - start, error


def compile_all(launches: list[Launch], deadline: Deadline, say: Callable[[str], None],
                count: int | None = None) -> dict[str, Any]:
    """Compile ``launches`` in ``count`` worker processes until ``deadline``; the stage's record."""
    count = min(count or workers(), max(1, len(launches)))
    start = time.perf_counter()
    done: list[tuple[str, float, str | None]] = []
    pending = 0
    context = multiprocessing.get_context("spawn")  # a CUDA parent must not fork
    pool = concurrent.futures.ProcessPoolExecutor(count, mp_context=context)
    futures = [pool.submit(warm, launch) for launch in launches]
    left = deadline.left()
    try:
        for future in concurrent.futures.as_completed(futures, timeout=max(left, 0.0) if left < 1e9 else None):
            done.append(future.result())
    except concurrent.futures.TimeoutError:
        pending = sum(not f.done() for f in futures)
        say(f"  compile: stopped at its time limit with {pending} specializations left (compiled at first use)")
    finally:  # nothing waits for a compile still running: its worker is ended
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive() and pending:
                process.terminate()
    failed = [f"{kernel}: {error}" for kernel, _, error in done if error]
    seconds = time.perf_counter() - start
    say(f"  compiled {len(done) - len(failed)} specializations in {seconds:.1f} s on {count} workers"
        + (f"; {len(failed)} failed" if failed else ""))
    return {"ok": True, "specializations": len(launches), "compiled": len(done) - len(failed), "left": pending,
            "failed": failed[:50], "workers": count, "compile_seconds": round(sum(s for _, s, _ in done), 1),
            "notes": ["each specialization the later stages launch, compiled ahead into Triton's cache; a failure "
                      "here is compiled again (and reported) by its stage"]}
