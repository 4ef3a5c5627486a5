"""``python -m triton_embed.bench --validate --out DIR``: the whole check of a machine in one command.

Stages, in order, each written into ``DIR/validate.json`` as soon as it finishes (the file is rewritten
atomically with every stage so far, and during the benchmark after every case), so a run cut short — by
its time budget, by ``timeout`` (SIGTERM) or by a kill — leaves every figure it had:

1. ``environment``: GPU, driver, torch, Triton, CUDA and package versions;
2. ``sweep``: the correctness sweep (``sweep``/``sweep_special``): every op, option and dtype against the
   reference path, a table of more than 2³¹ elements, out-of-range ids, determinism, a CUDA-graph replay;
3. ``tuning``: the kernels tuned for the benchmark's shapes (at most a share of the time budget);
4. ``benchmark``: :func:`cases.validate_cases` measured as the plain run measures them, written as the usual
   results.json / .csv, report.md, plot.png (and ``<gpu-slug>.json`` / ``.md``);
5. ``summary``: the performance targets (README), met or missed by how much (``summary``).

``ok`` is false on any mismatch or stage error (exit 1); ``complete`` is true once every stage has run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from typing import Any, Callable

import torch

import triton_embed
from triton_embed import tuning

from . import benchmark, report, verdict
from . import cases as cases_mod
from .runner import PASSES
from .stages import SCHEMA, Record, Stage, run_stages  # noqa: F401  (validate.json's schema, for readers)
from .summary import format_summary
from .timing import Deadline, Timer

STAGES = ("environment", "compile", "sweep", "tuning", "benchmark", "summary")
#: Shares of the time budget the compile-ahead, the sweep and the tuning may take at most (the rest is the
#: benchmark's).
COMPILE_SHARE, SWEEP_SHARE, TUNING_SHARE = 0.2, 0.35, 0.25
Say = Callable[[str], None]


def environment(gpu: bool, index_check: str) -> dict[str, Any]:
    """report.environment plus the GPU's properties and driver."""
    device = torch.device("cuda" if gpu else "cpu")
    env = report.environment("gpu" if gpu else "cpu-interpreter", device, index_check)
    env["numpy"] = report._version("numpy")
    env["matplotlib"] = report._version("matplotlib")
    if gpu:
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_bytes=props.total_memory, sm_count=props.multi_processor_count,
                   compute_capability=f"{props.major}.{props.minor}", driver=_driver())
    return env


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


class Validation:
    """The stages of one ``--validate`` run, sharing the device, the deadline and the results so far."""

    def __init__(self, args: argparse.Namespace, argv: list[str], gpu: bool, say: Say) -> None:
        self.args, self.gpu, self.say = args, gpu, say
        self.device = torch.device("cuda" if gpu else "cpu")
        self.budget = args.time_budget or 420.0
        self.deadline = Deadline(self.budget)
        self.command = ["python", "-m", "triton_embed.bench", *argv]
        self.record = Record(args.out / "validate.json", self.command)
        self.cases, self.compile_cases = cases_mod.validate_cases(gpu, args.quick)
        self.outcome = benchmark.Outcome()
        self.tuned: dict[str, tuning.Config] = {}
        self.host_syncs: int | None = None
        self.env: dict[str, Any] = {}

    def stages(self) -> list[Stage]:
        """Every stage, in order; the summary runs whatever happened before it."""
        return [Stage("environment", self.environment), Stage("compile", self.compile), Stage("sweep", self.sweep),
                Stage("tuning", self.tuning), Stage("benchmark", self.benchmark),
                Stage("summary", self.summary, always=True)]

    def environment(self) -> dict[str, Any]:
        self.env = environment(self.gpu, self.args.index_check)
        self.record.data["environment"] = self.env
        self.say(f"triton_embed {self.env['triton_embed']} on {self.env['gpu'] or 'CPU (Triton interpreter)'}: "
                 f"torch {self.env['torch']}, triton {self.env['triton']}, CUDA {self.env['cuda']}"
                 + (f", driver {self.env['driver']}" if self.gpu else ""))
        if not self.gpu:
            torch.set_num_threads(1)
        return {"ok": True, **self.env}

    def compile(self) -> dict[str, Any]:
        if not self.gpu:
            return {"ok": True, "specializations": 0,
                    "notes": ["no GPU: the kernels run under the interpreter, nothing is compiled"]}
        from .device import compile_ahead, run_trace

        limit = Deadline(min(self.deadline.left(), COMPILE_SHARE * self.budget))
        start = time.perf_counter()
        try:
            traced = run_trace.trace_run(self.cases, self.args.quick, self.args.no_tune)
            trace_s = time.perf_counter() - start
            self.say(f"  traced {len(traced.trace.specs)} kernel specializations of the stages below in {trace_s:.1f} s")
            return {**compile_ahead.compile_all(list(traced.trace.specs.values()), limit, self.say),
                    "trace_seconds": round(trace_s, 1)}
        except Exception as exc:  # noqa: BLE001 - compiling ahead only saves time: its failure fails nothing
            self.say(f"  compile ahead failed ({type(exc).__name__}: {exc}): the stages compile at first use")
            return {"ok": True, "error": f"{type(exc).__name__}: {exc}"[:1000],
                    "notes": ["compiling ahead failed: each specialization compiles at its first launch"]}

    def sweep(self) -> dict[str, Any]:
        from .sweep import run_sweep

        limit = Deadline(min(self.deadline.left(), SWEEP_SHARE * self.budget))
        result = run_sweep(self.device, self.args.quick, limit, self.say)
        self.host_syncs = verdict.host_syncs_of(result)
        self.say(f"  {result['passed']} checks passed, {len(result['failed'])} failed, {result['skipped']} skipped")
        return result

    def tuning(self) -> dict[str, Any]:
        from .session import tune_cases

        if self.args.no_tune:  # whatever TRITON_EMBED_AUTOTUNE says: no tuning mid-case either
            os.environ["TRITON_EMBED_AUTOTUNE"] = "0"
            return {"ok": True, "keys": 0, "notes": ["not tuned (--no-tune): the cached or default configs run"]}
        limit = Deadline(min(self.deadline.left() - 60.0, TUNING_SHARE * self.budget))
        tuner, notes = tune_cases(self.cases, self.device, limit)
        self.tuned = tuner.written
        if not self.gpu:
            notes.append("no GPU: the tuning runs each op once under the interpreter, where every kernel has one "
                         "fixed config: nothing is timed or written")
        # The benchmark uses what was tuned; keys left untuned run their default rather than tuning mid-case.
        os.environ["TRITON_EMBED_AUTOTUNE"] = "0"
        return {"ok": True, "keys": len(tuner.done), "written": tuner.written, "notes": notes,
                "cache_path": str(tuning.cache_path())}

    def benchmark(self) -> dict[str, Any]:
        from .session import default_peers, setup

        env = setup(self.gpu, self.args.index_check, self.outcome)
        rounds = self.args.rounds or (3 if self.gpu else 1)
        timer = Timer(self.device, profile="validate" if self.gpu else "quick")
        plan = benchmark.Plan(self.cases, PASSES["both"], default_peers(self.args, self.gpu, validate=True),
                              compile_cases=self.compile_cases, rounds=rounds, deadline=self.deadline,
                              reserve_s=20.0 if self.gpu else 5.0)
        if any(p in plan.peers for p in ("compile", "compile-max")):
            self.outcome.note("torch.compile peers (default and max-autotune-no-cudagraphs) run on one shape per "
                              "op only: " + "; ".join(c.label() for c in self.compile_cases), self.say)
        method = benchmark.methodology(timer, rounds, self.args.index_check, self.deadline, self.gpu)
        name = self.args.name if self.args.name is not None else (report.slug(env["gpu"]) if self.gpu else "")
        tuning.forget_choices()  # from here on, chosen_configs() is what the measured launches used

        def partial(done: benchmark.Outcome, draw: bool = False, slug: str = "", complete: bool = False) -> list[str]:
            data = benchmark.build_payload(self.command, env, method, done, self.tuned, self.host_syncs, complete)
            written = benchmark.write_reports(self.args.out, data, done.rows, slug, self.say, draw=draw)
            self.record.stage("benchmark", {**self._bench_record(data), "ok": not done.failures,
                                            "status": "running", "files": written})
            return written

        complete = False
        try:
            benchmark.run(plan, timer, self.gpu, self.outcome, self.say, on_case=partial)
            complete = True
        finally:  # also when interrupted: the files say whether the run was cut short
            written = partial(self.outcome, draw=True, slug=name, complete=complete)
        data = benchmark.build_payload(self.command, env, method, self.outcome, self.tuned, self.host_syncs)
        for line in report.config_lines(data["configs"]):
            self.say(f"  config {line}")
        return {**self._bench_record(data), "ok": not self.outcome.failures, "files": written}

    def _bench_record(self, data: dict[str, Any]) -> dict[str, Any]:
        keys = ("methodology", "copy_bandwidth_gbps", "configs", "notes", "skipped", "failures", "rows")
        return {"cases": len(self.cases), "cases_done": self.outcome.cases_done, **{k: data[k] for k in keys}}

    def summary(self) -> dict[str, Any]:
        rows = [r.as_dict() for r in self.outcome.rows]
        result = verdict.stage_record(rows, self.gpu, self.host_syncs, self.record.data["stages"])
        self.say(format_summary(result["targets"]))
        if result["stages_not_done"]:
            self.say(f"  (stages not done: {', '.join(result['stages_not_done'])}: the verdict covers what ran)")
        return result


def run_validate(args: argparse.Namespace, argv: list[str], gpu: bool, say: Say = print) -> int:
    """Run every stage into ``args.out``; 0 when everything matched, 1 on a mismatch or a failed stage
    (:class:`Interrupted` propagates after validate.json is written)."""
    def out(text: str) -> None:
        say(text)
        if say is print:
            import sys

            sys.stdout.flush()

    started = time.perf_counter()
    autotune = os.environ.get("TRITON_EMBED_AUTOTUNE")
    index_mode = triton_embed.index_check_mode()
    validation = Validation(args, argv, gpu, out)
    try:
        run_stages(validation.stages(), validation.record, out, validation.deadline)
    finally:
        triton_embed.set_index_check(index_mode)
        if autotune is None:
            os.environ.pop("TRITON_EMBED_AUTOTUNE", None)
        else:
            os.environ["TRITON_EMBED_AUTOTUNE"] = autotune
    ok = validation.record.data["ok"]
    failed = [name for name, stage in validation.record.data["stages"].items() if stage.get("ok") is False]
    out(f"validate: {'ok' if ok else 'FAILED (' + ', '.join(failed) + ')'} in {time.perf_counter() - started:.1f} s; "
        f"{validation.record.path}")
    return 0 if ok else 1
