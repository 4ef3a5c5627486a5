"""Pass one of the plan (``plan``), and the list ``--validate``'s compile stage compiles ahead: every kernel
launch a GPU validate run's sweep, tuning and benchmark make (triton_embed's side), run here on the CPU with
the launches traced (``trace``): each step's new specializations, configs timed and launches.

The steps run the run's own code: the sweep's checks in GPU mode (its > 2³¹-element table replaced by one
of the same width and row parity, its CUDA-graph step run eagerly), every tuning key, triton_embed's forward
and backward on every benchmark case at a CPU-sized stand-in of its shape (``trace.stand_in``: what
specializes a kernel kept). Nothing is computed: inputs are left unfilled and the checks' comparisons
skipped.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

import triton_embed

from .. import cases, impls, sweep, sweep_special, tune
from . import trace

CPU = torch.device("cpu")


@dataclass
class Step:
    """What one step (a sweep check, a tuning key, a benchmark case) launches: the indices of the
    specializations it is the first to launch, the configs it times, its launches."""

    specs: list[int] = field(default_factory=list)
    configs_timed: int = 0
    launches: int = 0


@dataclass
class TracedRun:
    """Pass one: the trace and each step's record, in the run's order."""

    trace: trace.Trace
    #: The device error record's one-time probe launch (on CUDA, at a process's first triton_embed call).
    probe: Step = field(default_factory=Step)
    checks: list[tuple[str, Step]] = field(default_factory=list)
    keys: list[tuple[cases.Case, Step]] = field(default_factory=list)
    cases: dict[cases.Case, Step] = field(default_factory=dict)
    #: CPU seconds the trace took (the GPU machine's run spends about as long on it, on one core).
    seconds: float = 0.0


def stand_in_case(case: cases.Case) -> cases.Case:
    """``case`` at a CPU-sized stand-in of its vocabulary and tokens (``trace.stand_in``), its width kept.

    >>> stand_in_case(cases.Case("embedding", 128256, 4096, 16384, "zipf", "bfloat16")).label()
    'embedding V=5376 D=4096 N=4096 zipf bfloat16'
    """
    return cases.Case(case.op, trace.stand_in(case.vocab), case.dim, trace.stand_in(case.tokens), case.dist,
                      case.dtype)


def _step(traced: trace.Trace, fn: Callable[[], Any]) -> Step:
    """Run ``fn`` traced; what it launched. Unwritten outputs make checks fail: the launches are what counts."""
    launches, first, timed = traced.launches, len(traced.specs), traced.timed
    try:
        fn()
    except Exception:  # noqa: BLE001
        pass
    return Step(list(range(first, len(traced.specs))), traced.timed - timed, traced.launches - launches)


def inputs_for(case: cases.Case) -> cases.Inputs:
    """A case's inputs for the trace: its ids as the run draws them, every other tensor left unfilled (no
    kernel reads them: launches are recorded, not run)."""
    ids = cases.case_ids(case) if case.op in cases.TABLE_OPS else torch.empty(0, dtype=cases.INDEX_DTYPE)
    dtype, dim, tokens = case.torch_dtype, case.dim, case.tokens
    if case.op not in cases.TABLE_OPS:
        x = torch.empty(tokens, dim, dtype=dtype).requires_grad_(True)
        return cases.Inputs(ids, torch.empty(0, dim, dtype=dtype), torch.empty(dim, dtype=dtype),
                            torch.empty(dim, dtype=dtype), torch.empty(tokens, dim, dtype=dtype), 0, 0, x)
    return cases.Inputs(ids, torch.empty(case.vocab, dim, dtype=dtype), torch.empty(dim), torch.empty(dim),
                        torch.empty(tokens, dim, dtype=dtype), 0, 0)


def forward_backward(case: cases.Case, module: torch.nn.Module, inputs: cases.Inputs) -> None:
    """What the benchmark launches of triton_embed for a case: its forward and (but the renorm's) backward."""
    out = module(inputs.arg)
    if case.op != "renorm":
        out.backward(inputs.grad_out)


def _no_comparison(*args: Any, **kwargs: Any) -> tuple[float, float, str]:
    return 0.0, 0.0, ""


def trace_run(todo: list[cases.Case], quick: bool, no_tune: bool) -> TracedRun:
    """Pass one: every launch of a GPU validate run's sweep, tuning and benchmark (triton_embed's side). The
    checks' comparisons are skipped (nothing was computed) and the inputs left unfilled (nothing reads them)."""
    start = trace.cpu_seconds()
    run = TracedRun(trace.Trace())
    mode = triton_embed.index_check_mode()
    with trace.gpu_launches(run.trace), patched(sweep, compare=_no_comparison), \
            patched(sweep_special, compare=_no_comparison):
        from triton_embed.kernels.errors import error_probe_kernel

        run.probe = _step(run.trace, lambda: error_probe_kernel[(1,)](torch.zeros(4, dtype=torch.int64)))
        triton_embed.set_index_check("deferred")  # as the sweep runs (its outputs poisoned: here, unwritten)
        try:
            for name, fn in sweep.checks(CPU, quick, True, []):
                if name == "big_table":  # its 4.3 GB table replaced by one of the same width and row parity
                    vocab, dim = sweep_special.BIG_GPU
                    fn = (lambda vocab=vocab, dim=dim: sweep_special.big_table_check(CPU, (trace.stand_in(vocab), dim)))
                if name.startswith("cuda_graph"):  # its step eagerly: the capture needs CUDA, the launches do not
                    fn = (lambda: sweep_special.training_step(CPU))
                run.checks.append((name, _step(run.trace, fn)))
        finally:
            triton_embed.set_index_check(mode)
        if not no_tune:
            tuner = tune.Tuner()
            for case in todo:
                if tuner.needed(case):
                    inputs = inputs_for(stand_in_case(case))
                    run.keys.append((case, _step(run.trace, lambda case=case: tuner.tune(case, inputs))))
        for case in todo:
            small = stand_in_case(case)
            inputs = inputs_for(small)
            ours = impls.select(case.op, [])[0][0]
            run.cases[case] = _step(run.trace, lambda: forward_backward(small, ours.build(small, inputs), inputs))
    run.seconds = trace.cpu_seconds() - start
    return run


@contextlib.contextmanager
def patched(owner: Any, **values: Any) -> Iterator[None]:
    """Attributes of ``owner`` replaced for the block, then restored."""
    saved = {name: getattr(owner, name) for name in values}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(owner, name, value)
