"""What runtime tuning at first use costs a training step: ``python -m triton_embed.bench.tuning_cost --out FILE``.

The step: a bfloat16 ``StableEmbedding(32000, 2048)`` forward and backward. With ``TRITON_EMBED_AUTOTUNE=1``
and an empty tuning cache, the first step of each new power-of-two token bucket times every config of each
kernel it launches (``tuning.CONFIGS``); the first of all also compiles each of them.

On a GPU, each scenario runs in a fresh process with an empty Triton cache: ``default`` (the shape-based
default configs: the first step compiles them) and ``tuned`` (runtime tuning on). Each records, per step,
the seconds (synchronized), the configs timed, the specializations compiled and the seconds spent tuning;
then the steady step time under each. Without a GPU the same steps are traced (``trace``): configs timed and
specializations per step, and the stall they predict from a compile time measured here.
The JSON's ``summary`` is what the README's choice of default rests on.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

VOCAB, DIM, DTYPE = 32000, 2048, "bfloat16"
#: Tokens of the steps: a first bucket, the same bucket again, a new bucket, the new bucket again.
STEPS = (4096, 4096, 8192, 6000)
#: do_bench(warmup=5 ms, rep=20 ms) of one config with its L2 flushes, on a GPU (the plan's assumption).
TUNE_CONFIG_S = 0.08


def _step_fn(device: Any) -> Callable[[int], None]:
    import torch

    import triton_embed

    torch.manual_seed(0)
    emb = triton_embed.StableEmbedding(VOCAB, DIM, dtype=getattr(torch, DTYPE), device=device)
    grads = {}

    def step(tokens: int) -> None:
        ids = torch.randint(0, VOCAB, (tokens,), device=device)
        if tokens not in grads:
            grads[tokens] = torch.randn(tokens, DIM, device=device).to(emb.weight.dtype)
        emb.weight.grad = None
        emb(ids).backward(grads[tokens])

    return step


def scenario(name: str) -> dict[str, Any]:
    """One scenario on the GPU, in this (fresh) process: each step's cost, then the steady step time."""
    import torch
    from triton.runtime.jit import JITFunction
    from triton.testing import do_bench

    from triton_embed import tuning

    os.environ["TRITON_EMBED_AUTOTUNE"] = "1" if name == "tuned" else "0"
    counts = {"configs": 0, "tuning_s": 0.0, "compiles": 0}
    fastest, compile_ = tuning._fastest, JITFunction._do_compile

    def counted_fastest(kernel: str, configs: list, bench: Any) -> Any:
        start = time.perf_counter()
        try:
            return fastest(kernel, configs, bench)
        finally:
            counts["configs"] += len(configs)
            counts["tuning_s"] += time.perf_counter() - start

    def counted_compile(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["compiles"] += 1
        return compile_(self, *args, **kwargs)

    tuning._fastest, JITFunction._do_compile = counted_fastest, counted_compile
    device = torch.device("cuda")
    step = _step_fn(device)
    steps = []
    for tokens in STEPS:
        before = dict(counts)
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(tokens)
        torch.cuda.synchronize()
        steps.append({"tokens": tokens, "seconds": round(time.perf_counter() - start, 4),
                      "configs_timed": counts["configs"] - before["configs"],
                      "compiles": counts["compiles"] - before["compiles"],
                      "tuning_seconds": round(counts["tuning_s"] - before["tuning_s"], 4)})
    steady = {n: do_bench(lambda n=n: step(n), warmup=25, rep=100) for n in (STEPS[0], STEPS[2])}
    return {"scenario": name, "steps": steps, "steady_ms": {str(n): round(ms, 4) for n, ms in steady.items()},
            "configs": {k: v for k, v in tuning.chosen_configs().items()}}


def on_gpu(budget: float) -> dict[str, Any]:
    """Each scenario in a fresh process and an empty Triton cache (compiles are part of the cost)."""
    results, errors = {}, {}
    deadline = time.monotonic() + budget
    for name in ("default", "tuned"):
        with tempfile.TemporaryDirectory(prefix="triton-embed-tuning-cost-") as scratch:
            env = {**os.environ, "TRITON_CACHE_DIR": str(Path(scratch) / "triton"),
                   "TRITON_EMBED_CACHE_DIR": str(Path(scratch) / "tuning")}
            left = deadline - time.monotonic()
            if left < 5:
                errors[name] = "not run: the time budget is spent"
                continue
            try:
                proc = subprocess.run([sys.executable, "-m", "triton_embed.bench.tuning_cost", "--scenario", name],
                                      env=env, capture_output=True, text=True, timeout=left)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode == 0 and lines:
                    results[name] = json.loads(lines[-1])
                else:
                    errors[name] = f"exit {proc.returncode}: {proc.stderr[-1500:]}"
            except subprocess.TimeoutExpired:
                errors[name] = f"did not finish in {left:.0f} s"
    return {"measured": "gpu", "scenarios": results, "errors": errors, "summary": gpu_summary(results)}


def gpu_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the choice of default rests on."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        first, again, bucket = result["steps"][0], result["steps"][1], result["steps"][2]
        out[name] = {"first_step_s": first["seconds"], "second_step_s": again["seconds"],
                     "new_bucket_step_s": bucket["seconds"], "configs_timed_first_step": first["configs_timed"],
                     "compiles_first_step": first["compiles"], "steady_ms": result["steady_ms"]}
    if "default" in out and "tuned" in out:
        base, tuned = out["default"]["steady_ms"], out["tuned"]["steady_ms"]
        out["tuned_vs_default_steady"] = {n: round(base[n] / tuned[n], 3) for n in base if tuned.get(n)}
    return out


def on_cpu() -> dict[str, Any]:
    """The same steps traced: configs timed and specializations compiled per step, and the stall predicted."""
    import torch

    from .device import plan, trace

    steps = []
    with tempfile.TemporaryDirectory():
        for name, autotune in (("default", False), ("tuned", True)):
            traced = trace.Trace()
            with trace.gpu_launches(traced, autotune=autotune):
                step = _step_fn(torch.device("cpu"))
                for tokens in STEPS:
                    mark = traced.mark()
                    step(trace.stand_in(tokens))
                    steps.append({"scenario": name, "tokens": tokens, **traced.since(mark)})
            if name == "tuned":
                compiles = trace.compile_seconds(traced, ("claim_rows_kernel", *plan.COMPILE_SAMPLES))
                compiles.pop("claim_rows_kernel", None)
    per = sorted(compiles.values())[len(compiles) // 2] if compiles else 0.5
    for s in steps:
        s["predicted_stall_s"] = round(s["specializations"] * per + s["configs_timed"] * TUNE_CONFIG_S, 2)
    summary = {f"{s['scenario']}_{i % len(STEPS)}": {k: s[k] for k in ("tokens", "configs_timed", "specializations",
                                                                         "predicted_stall_s")}
               for i, s in enumerate(steps)}
    return {"measured": "cpu-trace", "compile_s_per_specialization": round(per, 3), "steps": steps,
            "summary": {"first_step": {n: summary[f"{n}_0"] for n in ("default", "tuned")},
                        "new_bucket_step": {n: summary[f"{n}_2"] for n in ("default", "tuned")}}}


def main(argv: list[str] | None = None) -> int:
    """Measure (GPU) or trace (CPU) into ``--out``; print the summary."""
    p = argparse.ArgumentParser(prog="python -m triton_embed.bench.tuning_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the JSON here (default: stdout only)")
    p.add_argument("--time-budget", type=float, default=120.0, help="seconds for the GPU scenarios (default 120)")
    p.add_argument("--scenario", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scenario:
        print(json.dumps(scenario(args.scenario)))
        return 0
    if not 0 < args.time_budget <= 3600:
        p.error(f"--time-budget must be above 0 and at most 3600 s, got {args.time_budget}")
    import torch

    from .files import json_text

    start = time.perf_counter()
    data = on_gpu(args.time_budget) if torch.cuda.is_available() else on_cpu()
    data.update(step=f"StableEmbedding({VOCAB}, {DIM}) {DTYPE} forward+backward", tokens=list(STEPS),
                seconds=round(time.perf_counter() - start, 1))
    text = json_text(data)
    if args.out:
        args.out.write_text(text)
    print(json.dumps(data["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
