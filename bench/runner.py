"""One case measured across implementations: correctness, memory, timings, and the derived figures."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import torch

from . import bytes_model, check, impls
from .cases import Case, Inputs, make_inputs
from .timing import Timer, Timing, free_memory, measure_memory, zero_fill

#: What ``--pass`` expands to: ``backward`` times the backward alone (graph kept) and forward+backward.
PASSES = {
    "forward": ("forward",),
    "backward": ("backward", "fwd+bwd"),
    "both": ("forward", "backward", "fwd+bwd"),
}


@dataclass
class Row:
    """One (case, pass, implementation) measurement: a line of results.csv."""

    op: str
    pass_: str
    vocab: int
    dim: int
    tokens: int
    dist: str
    dtype: str
    unique_ids: int
    impl: str
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    bytes: int | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    fill_ms: float | None = None
    speedup_vs_reference: float | None = None
    speedup_vs_bitsandbytes: float | None = None
    speedup_vs_compile: float | None = None
    det_over_atomic: float | None = None
    peak_mem_bytes: int | None = None
    saved_bytes: int | None = None
    max_abs_err: float | None = None
    reference_err: float | None = None
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row with ``pass_`` spelled ``pass`` (the JSON and CSV field names)."""
        data = asdict(self)
        data["pass"] = data.pop("pass_")
        return {name: data[name] for name in column_names()}


def column_names() -> list[str]:
    """The CSV header: every :class:`Row` field, ``pass_`` spelled ``pass``."""
    return [f.name.rstrip("_") for f in fields(Row)]


@dataclass
class CaseResult:
    """The rows of one case, and the failures of our kernels against the oracle."""

    case: Case
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    fill: Timing | None = None


def _run_once(module: torch.nn.Module, inputs: Inputs) -> check.Result:
    out = module(inputs.ids)
    out.backward(inputs.grad_out)
    grads = {name: g.detach().clone() for name, g in impls.gradients(module).items()}
    for p in impls.trainable(module):
        p.grad = None
    return check.Result(out.detach(), grads)


def _timings(
    module: torch.nn.Module, inputs: Inputs, passes: tuple[str, ...], timer: Timer
) -> dict[str, Timing]:
    params = impls.trainable(module)
    ids, grad = inputs.ids, inputs.grad_out
    fns: dict[str, Callable[[], object]] = {}
    results: dict[str, Timing] = {}
    for pass_ in passes:
        if pass_ == "forward":
            fns[pass_] = lambda: module(ids)
        elif pass_ == "fwd+bwd":
            fns[pass_] = lambda: module(ids).backward(grad)
        elif pass_ == "backward":
            out = module(ids)
            results[pass_] = timer(lambda: out.backward(grad, retain_graph=True), reset=params)
            del out
    for pass_, fn in fns.items():
        results[pass_] = timer(fn, reset=params)
    for p in params:
        p.grad = None
    return results


def run_case(
    case: Case,
    impl_list: list[impls.Impl],
    passes: tuple[str, ...],
    timer: Timer,
    copy_gbps: float,
    time_ours: bool,
    verify: bool,
) -> CaseResult:
    """Measure ``case`` on every implementation; ``time_ours=False`` checks our kernels without timing them."""
    device = timer.device
    inputs = make_inputs(case, device)
    result = CaseResult(case)
    exact = reference = None
    if verify:
        exact = check.oracle(case, inputs)
        reference = _run_once(impls.build_reference(case, inputs), inputs)
    if any(p != "forward" for p in passes):
        result.fill = zero_fill(timer, case.vocab, case.dim, case.torch_dtype)
    base = dict(
        op=case.op, vocab=case.vocab, dim=case.dim, tokens=case.tokens, dist=case.dist, dtype=case.dtype,
        unique_ids=inputs.unique_ids,
    )
    for impl in impl_list:
        impl_passes = tuple(p for p in passes if not (impl.deterministic and p == "forward"))
        if not impl_passes:
            continue
        rows = [Row(pass_=p, impl=impl.name, **base) for p in impl_passes]
        result.rows.extend(rows)
        try:
            _measure(impl, case, inputs, rows, result, timer, time_ours, reference, exact)
        except Exception as exc:  # one implementation failing must not hide the others' figures
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            for row in rows:
                row.note = f"error: {message}"
                if impl.ours:
                    row.ok = False
            if impl.ours:
                result.failures.append(f"{case.label()} {impl.name}: {message}")
        free_memory(device)
    _derive(result, copy_gbps if timer.gpu else 0.0)  # small CPU shapes sit in cache: no % of copy
    del inputs, exact, reference
    free_memory(device)
    return result


def _measure(
    impl: impls.Impl,
    case: Case,
    inputs: Inputs,
    rows: list[Row],
    result: CaseResult,
    timer: Timer,
    time_ours: bool,
    reference: check.Result | None,
    exact: check.Result | None,
) -> None:
    """Fill ``rows`` (one per pass) for one implementation: check, memory, timings."""
    module = impl.build(case, inputs)
    got = _run_once(module, inputs)  # also the warm-up: JIT compiles, torch.compile graphs
    if reference is not None and exact is not None:
        verdict = check.compare(case, got, reference, exact)
        for row in rows:
            row.max_abs_err, row.reference_err, row.ok = verdict.max_abs_err, verdict.reference_err, verdict.ok
            row.note = verdict.detail
        if impl.ours and not verdict.ok:
            result.failures.append(f"{case.label()} {impl.name}: {verdict.detail}")
    del got
    memory = measure_memory(timer.device, lambda: module(inputs.ids), inputs.grad_out, impls.trainable(module))
    if memory is not None:
        for row in rows:
            row.peak_mem_bytes, row.saved_bytes = memory.peak, memory.saved
    if time_ours or not impl.ours:
        for pass_, timing in _timings(module, inputs, tuple(r.pass_ for r in rows), timer).items():
            row = next(r for r in rows if r.pass_ == pass_)
            row.median_ms, row.p20_ms, row.p80_ms = timing.median, timing.p20, timing.p80
    else:
        for row in rows:
            row.note = (row.note + "; " if row.note else "") + "interpreter: checked, not timed"


def _derive(result: CaseResult, copy_gbps: float) -> None:
    """Bytes, GB/s, % of copy bandwidth, speed-ups over each peer, deterministic / atomic ratio."""
    case = result.case
    elt = torch.empty((), dtype=case.torch_dtype).element_size()
    fill_ms = result.fill.median if result.fill else None
    by_key = {(r.pass_, r.impl): r for r in result.rows}
    for row in result.rows:
        row.bytes = bytes_model.op_bytes(case.op, row.pass_, case.tokens, case.dim, row.unique_ids, elt)
        if row.pass_ != "forward":
            row.fill_ms = fill_ms
        if row.median_ms is None:
            continue
        busy_ms = row.median_ms - (fill_ms or 0.0) if row.pass_ != "forward" else row.median_ms
        if busy_ms > 0:
            row.gbps = row.bytes / (busy_ms * 1e-3) / 1e9
            row.pct_copy = 100.0 * row.gbps / copy_gbps if copy_gbps else None
        if row.impl in impls.OURS:
            for peer in impls.PEERS:
                other = by_key.get((row.pass_, peer))
                if other is not None and other.median_ms:
                    setattr(row, f"speedup_vs_{peer}", other.median_ms / row.median_ms)
        if row.impl == "triton_embed[det]":
            atomic = by_key.get((row.pass_, "triton_embed"))
            if atomic is not None and atomic.median_ms:
                row.det_over_atomic = row.median_ms / atomic.median_ms
