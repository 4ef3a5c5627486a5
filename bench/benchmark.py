"""The benchmark proper: cases measured in turn within an optional deadline, then the report files.

Used by the plain run (``python -m triton_embed.bench``) and by ``--validate``'s benchmark stage. Each case
is measured whole (every implementation, interleaved rounds) or skipped with a note when the time left
cannot hold it; torch.compile peers can be restricted to a subset of the cases (their compiles cost tens of
seconds each) and are dropped from a case, with a note, when the time left cannot hold their compiles.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import triton_embed
from triton_embed import tuning

from . import files, host_time, impls, plot, report
from .cases import Case
from .runner import CaseResult, Row, run_case
from .timing import Deadline, Timer, copy_bandwidth

Say = Callable[[str], None]
#: Seconds assumed for a torch.compile peer's compiles (forward and backward graphs) of one case on a GPU.
COMPILE_ESTIMATE_S = {"compile": 60.0, "compile-max": 240.0}


def fit_compile_peers(compiled: list[str], left: float, case_estimate: float, estimates: dict[str, float]
                      ) -> tuple[list[str], list[str]]:
    """(the torch.compile peers whose compiles fit in ``left`` seconds with the case itself, in order; those
    that do not). Each peer is judged on its own estimate: a slow mode left out does not take the other.

    >>> fit_compile_peers(["compile", "compile-max"], 100.0, 10.0, {"compile": 60.0, "compile-max": 240.0})
    (['compile'], ['compile-max'])
    """
    kept, left_out, need = [], [], case_estimate
    for peer in compiled:
        cost = estimates.get(peer, max(estimates.values(), default=60.0))
        if need + cost <= left:
            kept.append(peer)
            need += cost
        else:
            left_out.append(peer)
    return kept, left_out


@dataclass
class Plan:
    """What to measure and within which limits."""

    cases: list[Case]
    passes: tuple[str, ...]
    peers: list[str]
    #: Cases that get the torch.compile peers (None: every case, when they are among ``peers``).
    compile_cases: list[Case] | None = None
    rounds: int = 3
    verify: bool = True
    deadline: Deadline = field(default_factory=lambda: Deadline(None))
    #: Seconds kept back from the deadline for writing the reports.
    reserve_s: float = 15.0
    #: Seconds assumed for each torch.compile peer's compiles on a case until one has been measured (on a
    #: GPU: default mode tens of seconds, max-autotune minutes); then the last measured one.
    compile_estimate_s: dict[str, float] = field(default_factory=lambda: dict(COMPILE_ESTIMATE_S))


@dataclass
class Outcome:
    """What the benchmark produced so far (filled in place, so a cut-short run keeps it)."""

    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    copy: tuple[float, int] = (0.0, 0)
    cases_done: int = 0
    results: list[CaseResult] = field(default_factory=list)

    def note(self, text: str, say: Say | None = None) -> None:
        """Add a note once (and print it)."""
        if text not in self.notes:
            self.notes.append(text)
            if say is not None:
                say(f"note: {text}")


def methodology(timer: Timer, rounds: int, index_check: str, deadline: Deadline, gpu: bool) -> dict[str, Any]:
    """How the figures were obtained, for results.json and report.md."""
    how = (f"`triton.testing.do_bench` ({timer.warmup_ms} ms warm-up, {timer.rep_ms} ms of repetitions, L2 "
           f"cleared before each, gradients reset outside the timed region)" if gpu else
           "a wall-clock loop on one CPU thread (the Triton kernels run under the interpreter: checked, not timed)")
    text = (f"Every implementation of a case is built and checked first; then {rounds} round(s): in each, every "
            f"pass of every implementation is timed once, in an order rotated each round, by {how}. A figure is "
            f"the median of the round medians. Index check mode while timing: `{index_check}`"
            + (" (the default: no host sync)." if index_check == "deferred" else ".")
            + (f" Time budget: {deadline.seconds:.0f} s; cases that did not fit are listed as skipped."
               if deadline.limited() else ""))
    return {"rounds": rounds, "timer": timer.profile, "warmup_ms": timer.warmup_ms, "rep_ms": timer.rep_ms,
            "index_check": index_check, "time_budget_s": deadline.seconds, "text": text}


def config_report(tuned: dict[str, tuning.Config]) -> dict[str, dict[str, Any]]:
    """Per tuning key, the config chosen in this process and its source: ``cache`` (with "tuned in this
    run" when this run wrote it), ``tuned`` (timed at first use), ``default``; ``interpreter`` under the
    interpreter, where every kernel runs one fixed config."""
    if triton_embed.interpreter_enabled():
        return {kernel: {"config": cfg, "source": "interpreter"} for kernel, cfg in tuning.INTERPRETER_CONFIGS.items()}
    sources = getattr(tuning, "config_sources", dict)()
    report_: dict[str, dict[str, Any]] = {}
    for key, cfg in tuning.chosen_configs().items():
        source = sources.get(key, "unknown")
        if source == "cache" and key in tuned:
            source = "cache (tuned in this run)"
        report_[key] = {"config": cfg, "source": source}
    return report_


def run(plan: Plan, timer: Timer, gpu: bool, outcome: Outcome, say: Say,
        on_case: Callable[[Outcome], None] | None = None) -> Outcome:
    """Measure ``plan.cases`` into ``outcome``; ``on_case(outcome)`` after each case (to write partial results)."""
    outcome.copy = copy_bandwidth(timer)
    say(f"copy bandwidth ({'device-to-device' if gpu else 'CPU memory'}): {outcome.copy[0]:.0f} GB/s")
    deadline, compile_est = plan.deadline, dict(plan.compile_estimate_s)
    durations: dict[str, float] = {}
    selections: dict[tuple[str, tuple[str, ...]], list[impls.Impl]] = {}
    width = len(str(len(plan.cases)))
    for n, case in enumerate(plan.cases, 1):
        peers = list(plan.peers)
        compiled = [p for p in peers if p in impls.COMPILE_PEERS]
        if compiled and plan.compile_cases is not None and case not in plan.compile_cases:
            peers = [p for p in peers if p not in compiled]
            compiled = []
        estimate = durations.get(case.op, max(durations.values(), default=10.0 if gpu else 3.0))
        left = deadline.left() - plan.reserve_s
        if left < estimate:
            outcome.skipped.append(f"{case.label()}: not run, {max(left, 0):.0f} s left of the time budget")
            say(f"[{n:>{width}}/{len(plan.cases)}] {case.label()}: skipped (time budget)")
            continue
        compiled, left_out = fit_compile_peers(compiled, left, estimate, compile_est)
        if left_out:
            peers = [p for p in peers if p not in left_out]
            outcome.note(f"{case.label()}: {', '.join(left_out)} left out: the time budget could not hold the "
                         f"compiles (≈{', '.join(f'{compile_est.get(p, 60.0):.0f}' for p in left_out)} s; "
                         f"{max(left, 0):.0f} s left)", say)
            outcome.skipped.append(f"{case.label()}: peers {', '.join(left_out)} not run (their compiles do not fit "
                                   "the time budget)")
        key = (case.op, tuple(peers))
        if key not in selections:
            selections[key], notes = impls.select(case.op, peers)
            for text in notes:
                outcome.note(text, say)
        start = deadline.clock()
        result = run_case(case, selections[key], plan.passes, timer, outcome.copy[0], time_triton=gpu,
                          verify=plan.verify, rounds=plan.rounds, stop=lambda: deadline.left() < plan.reserve_s)
        elapsed = deadline.clock() - start
        for peer in compiled:  # what each mode's compiles cost on this case (its build and first run)
            if peer in result.prepare_s:
                compile_est[peer] = max(5.0, result.prepare_s[peer])
        if not compiled:
            durations[case.op] = elapsed
        outcome.rows += result.rows
        outcome.failures += result.failures
        outcome.results.append(result)
        outcome.cases_done += 1
        say(f"[{n:>{width}}/{len(plan.cases)}] {case.label()} ({elapsed:.1f} s): {progress(result, gpu)}")
        for failure in result.failures:
            say(f"  FAIL {failure}")
        if on_case is not None:
            on_case(outcome)
    return outcome


def progress(result: CaseResult, gpu: bool) -> str:
    """The progress line's tail: our times and speed-ups (GPU), or the check and the reference times (CPU)."""
    parts = []
    for row in result.rows:
        if row.impl == impls.OURS and row.median_ms is not None:
            vs = f" ({row.speedup_vs_reference:.2f}x ref)" if row.speedup_vs_reference else ""
            parts.append(f"{row.pass_} {row.median_ms:.4g} ms{vs}")
        elif not gpu and row.impl == "reference" and row.median_ms is not None:
            parts.append(f"ref {row.pass_} {row.median_ms:.3g} ms")
    errs = [r.max_abs_err for r in result.rows if r.impl == impls.OURS and r.max_abs_err is not None]
    if errs:
        parts.append(f"max err {max(errs):.2g}")
    parts.append("FAIL" if result.failures else "ok")
    return " | ".join(parts)


def build_payload(command: list[str], env: dict[str, Any], method: dict[str, Any], outcome: Outcome,
                  tuned: dict[str, tuning.Config], host_syncs: int | None = None,
                  complete: bool = True, host: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json's content from what was measured so far (``complete``: the run was not cut short;
    ``host``: the host-time and CPU-path figures, :func:`host_time.measure`)."""
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return report.payload(command, env, method, outcome.copy, config_report(tuned), outcome.notes,
                          outcome.skipped, outcome.rows, outcome.failures, created, host_syncs, complete, host)


def write_reports(out: Path, data: dict[str, Any], rows: list[Row], name: str, say: Say,
                  draw: bool = True) -> list[str]:
    """results.json, results.csv, report.md, host_time.csv (when measured), plot.png (``draw``, with
    matplotlib) and ``NAME.json``/``.md``."""
    out.mkdir(parents=True, exist_ok=True)
    text = report.markdown(data, rows)
    files.write_json(out / "results.json", data)
    report.write_csv(out / "results.csv", rows)
    files.write_text(out / "report.md", text)
    written = ["results.json", "results.csv", "report.md"]
    if data.get("host_time"):
        files.write_text(out / "host_time.csv", host_time.csv_text(data["host_time"]))
        written.append("host_time.csv")
    if draw:
        env = data["environment"]
        title = f"triton_embed on {env['gpu'] or 'CPU (interpreter)'} — torch {env['torch']}, triton {env['triton']}"
        if not plot.matplotlib_available():
            say("note: matplotlib is not installed (pip install 'triton_embed[plot]'): no plot.png")
        else:
            try:
                if plot.write_plot(out / "plot.png", rows, title):
                    written.append("plot.png")
            except Exception as exc:  # noqa: BLE001 - a broken matplotlib must not lose the figures measured
                say(f"note: plot.png not drawn ({type(exc).__name__}: {exc})")
    if name:
        files.write_json(out / f"{name}.json", data)
        files.write_text(out / f"{name}.md", text)
        written += [f"{name}.json", f"{name}.md"]
    return written
