"""``python -m triton_embed.bench --validate --plan``: what ``--validate`` would do on an H100, computed here on
the CPU without running a kernel, and whether it fits its time budget.

Two passes. ``run_trace.trace_run`` walks the code the GPU run's stages run, with GPU-mode case selection
(``cases.validate_cases``), every kernel launch traced: what each step launches and which specializations
it is the first to launch (``--validate``'s compile stage compiles that same list ahead, in parallel).
Then :func:`schedule` replays the stages on a simulated clock with the run's own limits: the compile
stage's share, the sweep's and tuning's shares, and the benchmark's loop itself (``benchmark.run``: cases
skipped and torch.compile peers left out as the real run decides). A specialization costs the compile
time of a ``triton.compile`` for sm_90a measured here, now, in CPU seconds (a shared machine's load does
not stretch them): its share of the compile workers ahead of the run, or all of it at its first launch
when the compile stage could not hold it. What only the GPU knows (how long its ops take) comes from
:data:`GPU_SECONDS`, stated assumptions. The JSON lists each stage (its cases or checks, the
specializations it brings, its estimated seconds), ``estimated_seconds``, ``budget_seconds``, ``fits``,
and the device command's parts (``device.parts``) against their own budget.
"""
from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import benchmark, cases, impls, runner
from ..runner import PASSES
from ..timing import Deadline, Timer
from . import compile_ahead, trace
from . import parts as device_parts
from .run_trace import Step, TracedRun, patched, trace_run

#: The GPU (and machine) the plan is for.
DEVICE = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132, "memory_gib": 79.6, "cpus": 16}
#: Seconds on an H100 per item: assumptions of the plan (what the GPU alone can measure), not measurements.
GPU_SECONDS = {
    "environment": 3.0,      # CUDA context, properties, nvidia-smi
    "compile_start": 8.0,    # the compile workers start (torch, Triton and triton_embed imported in each)
    "sweep_check": 0.3,      # one check's launches, the same-dtype reference and the float64 oracle
    "big_table": 5.0,        # a 4.3 GB table and its gradient made, filled and checked
    "tune_config": 0.08,     # do_bench(warmup=5 ms, rep=20 ms) of one config, its L2 flushes, Python
    "tune_key": 0.5,         # a tuning key's inputs and its op's other work
    "copy_bandwidth": 0.5,   # the 1 GiB copy, timed
    "case_setup": 2.0,       # a case's inputs, float64 oracle, every implementation checked, memory measured
    "timing": 0.09,          # one do_bench of the validate profile (10 ms warm-up, 40 ms) and its flushes
    "summary": 0.5,
}
#: Kernels compiled here to measure the compile time of a specialization (a light, a middle, a heavy one).
COMPILE_SAMPLES = ("gather_rows_kernel", "embedding_bwd_rows_kernel", "stable_embedding_fwd_kernel",
                   "layer_norm_bwd_kernel")
CPU = torch.device("cpu")


class Clock:
    """The simulated wall clock of the GPU run.

    >>> clock = Clock(); clock.advance(2.5); clock()
    2.5
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


@dataclass
class Schedule:
    """Pass two's state: the clock, the budget, the compile charge, the specializations compiled ahead."""

    run: TracedRun
    budget: float
    compile_s: float
    ahead: int = 0
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.deadline = Deadline(self.budget, clock=self.clock)

    def charge(self, step: Step, gpu_seconds: float) -> None:
        """A step's GPU seconds and the compiles of its specializations not compiled ahead."""
        late = sum(1 for i in step.specs if i >= self.ahead)
        self.clock.advance(gpu_seconds + late * self.compile_s)

    def stage(self, name: str, start: float, steps: list[Step], **extra: Any) -> dict[str, Any]:
        """A stage's record: its specializations (those compiled at first use apart), estimated seconds."""
        specs = [i for step in steps for i in step.specs]
        kernels: dict[str, int] = {}
        names = list(self.run.trace.specs)
        for i in specs:
            kernels[names[i][0]] = kernels.get(names[i][0], 0) + 1
        return {"name": name, **extra, "specializations": len(specs), "kernels": kernels,
                "compiled_at_first_use": sum(1 for i in specs if i >= self.ahead),
                "configs_timed": sum(s.configs_timed for s in steps), "estimated_seconds": round(self.clock() - start, 1)}


def _compile_stage(sched: Schedule, share: float, trace_cpu_s: float) -> dict[str, Any]:
    start, count = sched.clock(), len(sched.run.trace.specs)
    workers = compile_ahead.workers(DEVICE["cpus"])
    limit = min(sched.deadline.left(), share * sched.budget)
    # the trace (as long as here: the GPU machine's CPU is assumed no faster), the workers, then in rounds
    ready = trace_cpu_s + GPU_SECONDS["compile_start"]
    rounds_fit = max(0, math.floor((limit - ready) / sched.compile_s)) if sched.compile_s else math.inf
    sched.ahead = min(count, rounds_fit * workers)
    sched.clock.advance(min(limit, ready + math.ceil(sched.ahead / workers) * sched.compile_s))
    return {"name": "compile", "specializations": count, "compiled_ahead": sched.ahead, "workers": workers,
            "share": share, "estimated_seconds": round(sched.clock() - start, 1)}


def _sweep_stage(sched: Schedule, share: float) -> dict[str, Any]:
    start, ran, skipped, steps = sched.clock(), [], [], [sched.run.probe]  # the first call probes the record
    sched.charge(sched.run.probe, 0.0)
    limit = Deadline(min(sched.deadline.left(), share * sched.budget), clock=sched.clock)
    for name, step in sched.run.checks:
        if limit.expired():
            skipped.append(name)
            continue
        sched.charge(step, GPU_SECONDS["sweep_check"] + (GPU_SECONDS["big_table"] if name == "big_table" else 0.0))
        ran.append(name)
        steps.append(step)
    return sched.stage("sweep", start, steps, checks=ran, skipped=skipped, share=share)


def _tuning_stage(sched: Schedule, share: float, no_tune: bool) -> dict[str, Any]:
    start, tuned, skipped, steps = sched.clock(), [], [], []
    if no_tune:
        return sched.stage("tuning", start, [], cases=[], skipped=[], note="not tuned (--no-tune)")
    limit = Deadline(min(sched.deadline.left() - 60.0, share * sched.budget), clock=sched.clock)
    for case, step in sched.run.keys:
        if limit.expired():
            skipped.append(f"tuning {case.label()}")
            continue
        sched.charge(step, GPU_SECONDS["tune_key"] + step.configs_timed * GPU_SECONDS["tune_config"])
        tuned.append(case.label())
        steps.append(step)
    return sched.stage("tuning", start, steps, cases=tuned, skipped=skipped, share=share)


def _benchmark_stage(sched: Schedule, todo: list[cases.Case], compile_cases: list[cases.Case], peers: list[str],
                     rounds: int) -> dict[str, Any]:
    start, measured, steps = sched.clock(), [], []

    def simulated_case(case: cases.Case, impl_list: list[impls.Impl], passes: tuple[str, ...], timer: Any,
                       copy: float, **kwargs: Any) -> runner.CaseResult:
        result, step = runner.CaseResult(case), sched.run.cases[case]
        timings = rounds * len(case.passes(passes)) * len(impl_list)
        sched.charge(step, GPU_SECONDS["case_setup"] + timings * GPU_SECONDS["timing"])
        for impl in impl_list:
            if impl.name in impls.COMPILE_PEERS:
                result.prepare_s[impl.name] = benchmark.COMPILE_ESTIMATE_S[impl.name]
                sched.clock.advance(result.prepare_s[impl.name])
        measured.append(f"{case.label()} [{', '.join(i.name for i in impl_list)}]")
        steps.append(step)
        return result

    def copy(timer: Timer) -> tuple[float, int]:
        sched.clock.advance(GPU_SECONDS["copy_bandwidth"])
        return 3000.0, 2 << 30

    plan = benchmark.Plan(todo, PASSES["both"], peers, compile_cases=compile_cases, rounds=rounds,
                          deadline=sched.deadline, reserve_s=20.0)
    outcome = benchmark.Outcome()
    with patched(benchmark, run_case=simulated_case, copy_bandwidth=copy):
        benchmark.run(plan, Timer(CPU, profile="validate"), True, outcome, lambda text: None)
    return sched.stage("benchmark", start, steps, cases=measured, skipped=outcome.skipped, notes=outcome.notes,
                       peers=peers, rounds=rounds)




def compile_time(run: TracedRun, say: Callable[[str], None]) -> dict[str, Any]:
    """Seconds of one specialization's compile for sm_90a, measured here on the traced launches (the first
    compile of a process also pays Triton's and LLVM's start: measured apart, charged once)."""
    seconds = trace.compile_seconds(run.trace, ("claim_rows_kernel", *COMPILE_SAMPLES))
    first = seconds.pop("claim_rows_kernel", 0.0)
    per = statistics.median(seconds.values())
    say(f"plan: a specialization compiles in {per:.2f} s here (sm_90a; "
        f"{', '.join(f'{k} {v:.2f}' for k, v in seconds.items())})")
    return {"per_specialization_s": round(per, 3), "first_s": round(first, 3),
            "samples_s": {k: round(v, 3) for k, v in seconds.items()}}


def schedule(run: TracedRun, compiles: dict[str, Any], budget: float, todo: list[cases.Case],
             compile_cases: list[cases.Case], peers: list[str], rounds: int, no_tune: bool) -> list[dict[str, Any]]:
    """Pass two: the stages on the simulated clock, as the run's limits decide them."""
    from ..validate import COMPILE_SHARE, SWEEP_SHARE, TUNING_SHARE

    sched = Schedule(run, budget, compiles["per_specialization_s"])
    sched.clock.advance(GPU_SECONDS["environment"])
    stages = [{"name": "environment", "estimated_seconds": round(sched.clock(), 1)},
              _compile_stage(sched, COMPILE_SHARE, run.seconds),
              _sweep_stage(sched, SWEEP_SHARE), _tuning_stage(sched, TUNING_SHARE, no_tune),
              _benchmark_stage(sched, todo, compile_cases, peers, rounds)]
    start = sched.clock()
    sched.clock.advance(GPU_SECONDS["summary"])
    stages.append({"name": "summary", "estimated_seconds": round(sched.clock() - start, 1)})
    return stages


def build(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """The plan of ``--validate`` with ``args`` (its --time-budget, --no-tune, --peers, --rounds) on an H100."""
    from ..session import VALIDATE_BUDGET_S, default_peers

    budget = args.time_budget or VALIDATE_BUDGET_S
    todo, compile_cases = cases.validate_cases(True, args.quick)
    run = trace_run(todo, args.quick, args.no_tune)
    say(f"plan: traced {run.trace.launches} launches, {len(run.trace.specs)} specializations in {run.seconds:.1f} s")
    compiles = compile_time(run, say)
    stages = schedule(run, compiles, budget, todo, compile_cases, default_peers(args, True, validate=True),
                      args.rounds or 3, args.no_tune)
    estimated = sum(stage["estimated_seconds"] for stage in stages)
    skipped = [item for stage in stages for item in stage.get("skipped", ()) if "peers" not in item]
    named = [item for stage in stages for item in stage.get("skipped", ()) if "peers" in item]
    return {"device": DEVICE, "budget_seconds": budget, "estimated_seconds": round(estimated, 1),
            "margin_seconds": round(budget - estimated, 1), "fits": estimated <= budget and not skipped,
            "skipped": skipped, "peers_left_out": named, "compile": compiles, "specializations": len(run.trace.specs),
            "trace_seconds": round(run.seconds, 1), "gpu_seconds_assumed": GPU_SECONDS, "stages": stages,
            "device_run": device_run(estimated)}


def device_run(validate_s: float) -> dict[str, Any]:
    """The device command's parts on a GPU: each part's limit and estimate (the tests: their whole limit), and
    whether the sum fits the run's budget."""
    estimates = {"install": 15.0, "environment": 10.0, "validate": validate_s + device_parts.VALIDATE_RESERVE_S}
    found = []
    for part in device_parts.PARTS:
        limit = part.limit_s["gpu"]
        found.append({"name": part.name, "limit_s": limit,
                      "estimated_seconds": round(min(limit, estimates.get(part.name, limit)), 1)})
    total = sum(p["estimated_seconds"] for p in found)
    budget = device_parts.BUDGET_S["gpu"]
    return {"budget_seconds": budget, "estimated_seconds": round(total, 1), "fits": total <= budget, "parts": found}
