"""One case measured across implementations: correctness and memory per implementation, then interleaved
rounds of timings (``rounds``), then the derived figures (bytes, GB/s, % of copy, speed-ups)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import torch

from . import bytes_model, check, impls
from .cases import Case, Inputs, make_inputs
from .rounds import Summary, interleave
from .timing import Timer, Timing, free_memory, measure_memory

#: What ``--pass`` expands to: ``backward`` times the backward alone (graph kept) and forward+backward.
PASSES = {
    "forward": ("forward",),
    "backward": ("backward", "fwd+bwd"),
    "both": ("forward", "backward", "fwd+bwd"),
}


@dataclass
class Row:
    """One (case, pass, implementation) measurement: a line of results.csv (see the README for each column)."""

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
    round_min_ms: float | None = None
    round_max_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    rounds: int | None = None
    min_bytes: int | None = None
    model_bytes: int | None = None
    model_speedup: float | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    speedup_vs_reference: float | None = None
    speedup_vs_bitsandbytes: float | None = None
    speedup_vs_compile: float | None = None
    speedup_vs_compile_max: float | None = None
    speedup_vs_liger: float | None = None
    peak_mem_bytes: int | None = None
    saved_bytes: int | None = None
    max_abs_err: float | None = None
    reference_err: float | None = None
    tolerance: float | None = None
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row with ``pass_`` spelled ``pass`` (the JSON and CSV field names)."""
        data = asdict(self)
        data["pass"] = data.pop("pass_")
        return {name: data[name] for name in column_names()}

    def add_note(self, text: str) -> None:
        """Append to the note column."""
        self.note = f"{self.note}; {text}" if self.note else text


def column_names() -> list[str]:
    """The CSV header: every :class:`Row` field, ``pass_`` spelled ``pass``."""
    return [f.name.rstrip("_") for f in fields(Row)]


@dataclass
class CaseResult:
    """The rows of one case, and the failures of our kernels against the oracle."""

    case: Case
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Seconds each implementation took to build, check and warm up (torch.compile: its compiles).
    prepare_s: dict[str, float] = field(default_factory=dict)


def _resets(module: torch.nn.Module, inputs: Inputs) -> list[torch.Tensor]:
    """Tensors whose ``.grad`` is reset before each repetition: the parameters, and a layer_norm input."""
    return impls.trainable(module) + ([inputs.x] if inputs.x is not None else [])


def _run_once(case: Case, module: torch.nn.Module, inputs: Inputs) -> check.Result:
    resets = _resets(module, inputs)
    for t in resets:
        t.grad = None
    out = module(inputs.arg)
    if case.op == "renorm":  # forward only: what it computed is the output and the renormed table
        return check.Result(out.detach(), {"table": module.weight.detach().clone()})
    out.backward(inputs.grad_out)
    grads = {name: g.detach().clone() for name, g in impls.gradients(module).items()}
    if inputs.x is not None:
        grads["input"] = inputs.x.grad.detach().clone()
    for t in resets:
        t.grad = None
    return check.Result(out.detach(), grads)


def time_pass(module: torch.nn.Module, inputs: Inputs, pass_: str, timer: Timer) -> Timing:
    """One timing of one pass: the forward (autograd recording, as in training), the backward alone (the
    graph kept and replayed) or forward+backward."""
    resets = _resets(module, inputs)
    arg, grad = inputs.arg, inputs.grad_out
    try:
        if pass_ == "forward":
            return timer(lambda: module(arg), reset=resets)
        if pass_ == "fwd+bwd":
            return timer(lambda: module(arg).backward(grad), reset=resets)
        if pass_ == "backward":
            out = module(arg)
            try:
                return timer(lambda: out.backward(grad, retain_graph=True), reset=resets)
            finally:
                del out
        raise ValueError(f"unknown pass {pass_!r}")
    finally:
        for t in resets:
            t.grad = None


def run_case(
    case: Case,
    impl_list: list[impls.Impl],
    passes: tuple[str, ...],
    timer: Timer,
    copy_gbps: float,
    time_triton: bool,
    verify: bool,
    rounds: int = 1,
    stop: Callable[[], bool] = lambda: False,
) -> CaseResult:
    """Measure ``case`` on every implementation. ``time_triton=False`` (no GPU) checks Triton-kernel
    implementations without timing them. ``stop()`` (a deadline) may end the rounds early."""
    device = timer.device
    passes = case.passes(passes)
    inputs = make_inputs(case, device)
    result = CaseResult(case)
    exact = reference = None
    if verify:
        exact = check.oracle(case, inputs)
        reference = _run_once(case, impls.build_reference(case, inputs), inputs)
    base = dict(op=case.op, vocab=case.vocab, dim=case.dim, tokens=case.tokens, dist=case.dist, dtype=case.dtype,
                unique_ids=inputs.unique_ids)
    rows: dict[tuple[str, str], Row] = {}
    modules: dict[str, torch.nn.Module] = {}
    for impl in impl_list:
        impl_rows = [Row(pass_=p, impl=impl.name, **base) for p in passes]
        result.rows.extend(impl_rows)
        rows.update({(impl.name, r.pass_): r for r in impl_rows})
        start = time.perf_counter()
        try:
            module = _prepare(impl, case, inputs, impl_rows, result, reference, exact)
        except Exception as exc:  # noqa: BLE001 - one implementation failing must not hide the others' figures
            _fail(impl, case, impl_rows, result, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            free_memory(device)
            continue
        finally:
            result.prepare_s[impl.name] = time.perf_counter() - start
        if time_triton or not impl.triton:
            modules[impl.name] = module
        else:
            for row in impl_rows:
                row.add_note("interpreter: checked, not timed")
            del module
    del exact, reference
    free_memory(device)

    summaries, failed = interleave(
        list(modules), passes, rounds, lambda name, pass_: time_pass(modules[name], inputs, pass_, timer), stop
    )
    for (name, pass_), summary in summaries.items():
        _fill(rows[name, pass_], summary)
    for (name, pass_), message in failed.items():
        impl = next(i for i in impl_list if i.name == name)
        _fail(impl, case, [rows[name, pass_]], result, f"timing {pass_}: {message}")
    modules.clear()
    _derive(result, inputs, copy_gbps if timer.gpu else 0.0)  # small CPU shapes sit in cache: no % of copy
    del inputs
    free_memory(device)
    return result


def _prepare(impl: impls.Impl, case: Case, inputs: Inputs, rows: list[Row], result: CaseResult,
             reference: check.Result | None, exact: check.Result | None) -> torch.nn.Module:
    """Build one implementation, check it, measure its memory; the module (warmed up) for the timings."""
    module = impl.build(case, inputs)
    got = _run_once(case, module, inputs)  # also the warm-up: JIT compiles, torch.compile graphs
    if reference is not None and exact is not None:
        verdict = check.compare(case, got, reference, exact)
        for row in rows:
            row.max_abs_err, row.reference_err, row.tolerance = verdict.max_abs_err, verdict.reference_err, verdict.tolerance
            row.ok = verdict.ok
            if verdict.detail:
                row.add_note(verdict.detail)
        if impl.ours and not verdict.ok:
            result.failures.append(f"{case.label()} {impl.name}: {verdict.detail}")
    del got
    if case.op != "renorm":
        memory = measure_memory(inputs.grad_out.device, lambda: module(inputs.arg), inputs.grad_out,
                                _resets(module, inputs))
        if memory is not None:
            for row in rows:
                row.peak_mem_bytes, row.saved_bytes = memory.peak, memory.saved
    return module


def _fail(impl: impls.Impl, case: Case, rows: list[Row], result: CaseResult, message: str) -> None:
    for row in rows:
        row.median_ms = row.round_min_ms = row.round_max_ms = row.p20_ms = row.p80_ms = row.rounds = None
        row.add_note(f"error: {message}")
        if impl.ours:
            row.ok = False
    if impl.ours:
        result.failures.append(f"{case.label()} {impl.name}: {message}")


def _fill(row: Row, s: Summary) -> None:
    row.median_ms, row.round_min_ms, row.round_max_ms = s.median, s.low, s.high
    row.p20_ms, row.p80_ms, row.rounds = s.p20, s.p80, s.rounds


def sizes(case: Case, inputs: Inputs) -> bytes_model.Sizes:
    """The bytes models' sizes of a case."""
    elt = torch.empty((), dtype=case.torch_dtype).element_size()
    return bytes_model.Sizes(case.tokens, case.dim, case.vocab, inputs.unique_ids, inputs.partial_segments, elt)


def _derive(result: CaseResult, inputs: Inputs, copy_gbps: float) -> None:
    """Bytes (minimum and own models), GB/s and % of copy on the minimum, measured and modelled speed-ups."""
    case = result.case
    s = sizes(case, inputs)
    by_key = {(r.pass_, r.impl): r for r in result.rows}
    for row in result.rows:
        row.min_bytes = bytes_model.minimum(case.op, row.pass_, s)
        row.model_bytes = bytes_model.implementation(row.impl, case.op, row.pass_, s)
        ours = by_key.get((row.pass_, impls.OURS))
        if row.impl != impls.OURS and ours is not None and ours.model_bytes and row.model_bytes:
            row.model_speedup = row.model_bytes / ours.model_bytes
        if row.median_ms is None or row.median_ms <= 0:
            continue
        row.gbps = row.min_bytes / (row.median_ms * 1e-3) / 1e9
        row.pct_copy = 100.0 * row.gbps / copy_gbps if copy_gbps else None
        if row.impl == impls.OURS:
            for peer in impls.PEERS:
                other = by_key.get((row.pass_, peer))
                if other is not None and other.median_ms:
                    setattr(row, impls.speedup_field(peer), other.median_ms / row.median_ms)
