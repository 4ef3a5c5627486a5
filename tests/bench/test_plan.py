"""``--validate --plan``: the GPU run planned on the CPU. The device command's validate fits its budget with a
margin; a budget too small is said (exit 1, what is skipped named); the trace's specialization keys are
Triton's; the compile-ahead stage's workers compile what the trace found and stop at their deadline; the
first-use tuning cost is counted per step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from triton_embed import tuning
from triton_embed.bench import benchmark, cases, validate
from triton_embed.bench.device import compile_ahead, plan, run_trace, trace
from triton_embed.bench.device import parts as device_parts
from triton_embed.bench.timing import Deadline

REPO = Path(__file__).resolve().parents[2]


def _compiled_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_EMBED_BENCH_REEXEC")}
    env.update(TRITON_EMBED_CACHE_DIR=str(tmp_path / "cache"), TRITON_CACHE_DIR=str(tmp_path / "triton"))
    return env


def _strict(text: str):
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def _device_validate_argv(tmp_path: Path) -> list[str]:
    """The device command's --validate arguments on a GPU (its own limit), without --out/--name."""
    ctx = device_parts.Context(out=tmp_path, work=tmp_path, mode="gpu", python=sys.executable)
    part = next(p for p in device_parts.PARTS if p.name == "validate")
    argv = part.argv(ctx, part.limit_s["gpu"])
    for flag in ("--out", "--name"):
        i = argv.index(flag)
        del argv[i:i + 2]
    return argv[3:]  # after `python -m triton_embed.bench`


def test_the_device_runs_validate_fits_its_budget(tmp_path: Path) -> None:
    """The plan CI checks: what the one GPU command's --validate would do on an H100, estimated on this CPU,
    fits its time budget with nothing skipped but the peers it names, and the whole command fits its own."""
    argv = [sys.executable, "-m", "triton_embed.bench", "--validate", "--plan"]  # as the README and CI run it
    env = {**_compiled_env(tmp_path), "TRITON_INTERPRET": "1"}  # the plan leaves the interpreter (a re-exec)
    proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _strict(proc.stdout)
    assert data["budget_seconds"] == float(_device_validate_argv(tmp_path)[2])  # the device run's --time-budget
    assert [s["name"] for s in data["stages"]] == list(validate.STAGES)
    assert all(s["estimated_seconds"] >= 0 for s in data["stages"])
    assert data["estimated_seconds"] == pytest.approx(sum(s["estimated_seconds"] for s in data["stages"]), abs=0.5)
    assert data["fits"] and data["estimated_seconds"] <= data["budget_seconds"] and data["skipped"] == []
    assert data["margin_seconds"] >= 0.05 * data["budget_seconds"]
    stages = {s["name"]: s for s in data["stages"]}
    assert stages["compile"]["compiled_ahead"] == stages["compile"]["specializations"] == data["specializations"] > 50
    assert stages["sweep"]["specializations"] + stages["benchmark"]["specializations"] == data["specializations"]
    assert {"big_table", "cuda_graph/training_step", "deterministic/stable/bfloat16"} <= set(stages["sweep"]["checks"])
    todo, _ = cases.validate_cases(True, False)
    assert len(stages["benchmark"]["cases"]) == len(todo) == 26
    assert any("compile-max" in item for item in data["peers_left_out"])  # minutes per shape: named, not run
    assert stages["tuning"]["note"] == "not tuned (--no-tune)"
    assert data["compile"]["per_specialization_s"] > 0 and data["device_run"]["fits"]
    assert [p["name"] for p in data["device_run"]["parts"]] == [p.name for p in device_parts.PARTS]
    assert "fits" in proc.stderr


def _synthetic_run() -> run_trace.TracedRun:
    traced = trace.Trace()
    for n in range(40):
        traced.specs[("kernel", (n,))] = trace.Launch("m", "kernel", (), ())
    todo, _ = cases.validate_cases(True, False)
    run = run_trace.TracedRun(traced, checks=[(f"check/{n}", run_trace.Step([n])) for n in range(20)])
    run.cases = {case: run_trace.Step([20 + n % 20], 0, 4) for n, case in enumerate(todo)}
    return run


def test_a_budget_too_small_is_said_and_what_it_skips_is_named() -> None:
    todo, compile_cases = cases.validate_cases(True, False)
    compiles = {"per_specialization_s": 0.5, "first_s": 1.0}
    peers = ["reference", "compile", "compile-max"]
    roomy = plan.schedule(_synthetic_run(), compiles, 600.0, todo, compile_cases, peers, 3, True)
    bench = next(s for s in roomy if s["name"] == "benchmark")
    assert len(bench["cases"]) == 26 and not [s for s in bench["skipped"] if "not run," in s]
    tight = plan.schedule(_synthetic_run(), compiles, 60.0, todo, compile_cases, peers, 3, True)
    sweep = next(s for s in tight if s["name"] == "sweep")
    bench = next(s for s in tight if s["name"] == "benchmark")
    assert len(bench["cases"]) < 26 and any("not run," in s for s in bench["skipped"])
    assert sum(s["estimated_seconds"] for s in tight) <= 60.0 + 2 * plan.GPU_SECONDS["case_setup"] + 10
    assert sweep["checks"] and sweep["specializations"] == len(sweep["checks"])


def test_specializations_that_the_compile_stage_cannot_hold_are_charged_at_first_use() -> None:
    run = _synthetic_run()
    todo, compile_cases = cases.validate_cases(True, False)
    slow = {"per_specialization_s": 20.0, "first_s": 1.0}  # a compile stage of 20% of 200 s holds 15 x 1 round
    stages = plan.schedule(run, slow, 200.0, todo, compile_cases, ["reference"], 1, True)
    compile_stage = next(s for s in stages if s["name"] == "compile")
    assert 0 < compile_stage["compiled_ahead"] < compile_stage["specializations"] == 40
    sweep = next(s for s in stages if s["name"] == "sweep")
    assert sweep["compiled_at_first_use"] >= 1


class _Kernel:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def warmup(self, *args, grid, **kwargs):
        if kwargs.get("BLOCK") == 3:
            raise ValueError("no such block")
        self.calls.append((args, grid, kwargs))


def test_compile_ahead_warms_each_launch_and_reports_failures(monkeypatch) -> None:
    module = types.ModuleType("fake_kernels_for_compile_ahead")
    module.kernel = _Kernel()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    good = trace.Launch(module.__name__, "kernel", (torch.bfloat16, 16, None), (("BLOCK", 64), ("num_warps", 4)))
    bad = trace.Launch(module.__name__, "kernel", (torch.float32,), (("BLOCK", 3),))
    assert compile_ahead.warm(good)[2] is None
    assert module.kernel.calls == [((torch.bfloat16, 16, None), (1,), {"BLOCK": 64, "num_warps": 4})]
    assert compile_ahead.warm(bad)[2] == "ValueError: no such block"

    import concurrent.futures

    class Threads(concurrent.futures.ThreadPoolExecutor):  # the same pool API, in this process
        def __init__(self, count, mp_context=None):
            super().__init__(count)

    monkeypatch.setattr(compile_ahead.concurrent.futures, "ProcessPoolExecutor", Threads)
    record = compile_ahead.compile_all([good, bad, good], Deadline(60.0), lambda text: None, count=2)
    assert record["compiled"] == 2 and record["failed"] == ["kernel: ValueError: no such block"]
    assert record["left"] == 0 and record["workers"] == 2


def test_a_trace_records_tritons_own_specialization_key() -> None:
    """Integers: 1, a multiple of 16, other (and their width); pointers: dtype and 16-byte alignment; as
    Triton's runtime keys its compiles."""
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    for value in (1, 16, 17, 4096, 2**40, 2**40 + 1):
        kind, divisible = native(CUDABackend, value, False, True, True)
        key = trace._int_key(value, True)
        assert key == ("1" if kind == "constexpr" else f"{kind}:16" if divisible == "D" else kind), value
    table = torch.empty(64, dtype=torch.bfloat16)
    for tensor in (table, table[1:], table[8:]):
        kind, aligned = native(CUDABackend, tensor, False, True, True)
        assert (aligned == "D") == (tensor.data_ptr() % 16 == 0)


def test_tracing_refuses_the_interpreter_and_restores_what_it_patched() -> None:
    from triton.runtime.jit import JITFunction

    from triton_embed import tuning
    from triton_embed.runtime import dispatch as _dispatch

    before = (JITFunction.run, _dispatch.interpreter_enabled, tuning._fastest, os.environ.get("TRITON_EMBED_CACHE_DIR"))
    from triton_embed.kernels.gather import gather_rows_kernel

    if isinstance(gather_rows_kernel, JITFunction):
        pytest.skip("compiled kernels here: the refusal is for interpreted ones")
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET"):
        with trace.gpu_launches(trace.Trace()):
            pass
    assert (JITFunction.run, _dispatch.interpreter_enabled, tuning._fastest,
            os.environ.get("TRITON_EMBED_CACHE_DIR")) == before


def test_first_use_tuning_is_counted_per_step(tmp_path: Path) -> None:
    """Runtime tuning times every config of the step's kernels on the first step and again on each new token
    bucket; the default configs compile once and never tune."""
    out = tmp_path / "tuning-cost.json"
    proc = subprocess.run([sys.executable, "-m", "triton_embed.bench.tuning_cost", "--out", str(out)],
                          env=_compiled_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _strict(out.read_text())
    assert data["measured"] == ("gpu" if torch.cuda.is_available() else "cpu-trace")
    first, bucket = data["summary"]["first_step"], data["summary"]["new_bucket_step"]
    # A bf16 table's step: the fused forward, the per-token LayerNorm backward and the two weight-gradient
    # launches; families of a single config are not timed.
    families = ("stable_forward", "stable_backward", "embedding_pieces", "stable_rows")
    timed = sum(len(tuning.CONFIGS[f]) for f in families if len(tuning.CONFIGS[f]) > 1)
    assert first["tuned"]["configs_timed"] == timed and first["default"]["configs_timed"] == 0
    assert first["tuned"]["specializations"] > first["default"]["specializations"] > 0
    assert bucket["tuned"]["configs_timed"] == timed and bucket["tuned"]["specializations"] == 0
    assert bucket["default"] == {"tokens": 8192, "configs_timed": 0, "specializations": 0, "predicted_stall_s": 0.0}
    again = [s for s in data["steps"] if s["tokens"] == 6000]
    assert all(s["configs_timed"] == 0 for s in again)  # a bucket already tuned is not tuned again


def test_the_plan_goes_with_validate_only(capsys, monkeypatch) -> None:
    from triton_embed.bench import cli

    with pytest.raises(SystemExit):
        cli.main(["--plan"], mode="interpreter")
    assert "--plan goes with --validate" in capsys.readouterr().err
    assert Namespace  # noqa: B018 - argparse's namespace, as the plan takes it
    assert benchmark.COMPILE_ESTIMATE_S["compile-max"] > benchmark.COMPILE_ESTIMATE_S["compile"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (warmup compiles for the device)")
def test_compiled_ahead_specializations_are_the_ones_the_launches_use(tmp_path: Path) -> None:
    """What the compile stage compiles (a trace on the CPU, JITFunction.warmup in worker processes) is what
    the real launches then load: after it, a first launch compiles nothing new into Triton's cache."""
    script = f"""
import os, pathlib, sys, torch
os.environ["TRITON_CACHE_DIR"] = {str(tmp_path / "triton")!r}
import triton_embed
from triton_embed.bench import cases, impls
from triton_embed.bench.device import compile_ahead, run_trace, trace
from triton_embed.bench.timing import Deadline
from triton_embed.kernels.errors import error_probe_kernel
todo = [cases.Case("stable", 32000, 2048, 16384, "zipf", "bfloat16"), cases.Case("embedding", 50257, 768, 16384, "zipf", "float32")]
traced = trace.Trace()
with trace.gpu_launches(traced):
    error_probe_kernel[(1,)](torch.zeros(4, dtype=torch.int64))
    for case in todo:
        small = run_trace.stand_in_case(case)
        inputs = run_trace.inputs_for(small)
        run_trace.forward_backward(small, impls.select(case.op, [])[0][0].build(small, inputs), inputs)
record = compile_ahead.compile_all(list(traced.specs.values()), Deadline(300), print, count=4)
assert record["failed"] == [] and record["compiled"] == len(traced.specs) > 5, record
def entries():
    return sorted(p.name for p in pathlib.Path(os.environ["TRITON_CACHE_DIR"]).iterdir())
before = entries()
for case in todo:
    inputs = cases.make_inputs(case, torch.device("cuda"))
    run_trace.forward_backward(case, impls.select(case.op, [])[0][0].build(case, inputs), inputs)
torch.cuda.synchronize()
new = sorted(set(entries()) - set(before))
print("compiled at first launch after the compile stage:", len(new), "of", len(traced.specs))
sys.exit(1 if new else 0)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_compile_ahead_stops_at_its_deadline_and_its_failure_fails_nothing(tmp_path: Path, monkeypatch) -> None:
    import concurrent.futures
    import time as clock

    class Threads(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, count, mp_context=None):
            super().__init__(count)

    monkeypatch.setattr(compile_ahead.concurrent.futures, "ProcessPoolExecutor", Threads)
    monkeypatch.setattr(compile_ahead, "warm", lambda launch: (clock.sleep(0.3), (launch.kernel, 0.3, None))[1])
    slow = [trace.Launch("m", f"k{n}", (), ()) for n in range(8)]
    record = compile_ahead.compile_all(slow, Deadline(0.5), lambda text: None, count=1)
    assert 0 < record["compiled"] < 8 and record["left"] > 0

    from triton_embed.bench import cli

    args = cli.parser().parse_args(["--validate", "--out", str(tmp_path), "--time-budget", "100"])
    validation = validate.Validation(args, [], True, lambda text: None)
    monkeypatch.setattr(run_trace, "trace_run", lambda *a: (_ for _ in ()).throw(RuntimeError("no driver")))
    result = validation.compile()
    assert result["ok"] is True and "no driver" in result["error"]
