"""Command line of ``python -m triton_embed.bench``: options, then tune → measure → report, or ``--validate``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import triton_embed
from triton_embed import tuning

from . import benchmark, files, host_time, impls, report
from . import cases as cases_mod
from .arguments import check_out_dir, out_dir, positive_float, positive_int, rounds_count
from .runner import PASSES
from .summary import format_summary
from .timing import Deadline, Interrupted, Timer, raise_on_term
from .session import (
    INDEX_CHECK_MODES,
    VALIDATE_BUDGET_S,
    default_peers,
    say,
    setup,
    tune_cases,
)

_VALIDATE_EXCLUDES = ("vocab", "dim", "tokens", "dtype", "dist", "ops", "pass_", "tune_only", "no_check")


def parser() -> argparse.ArgumentParser:
    """The options (see the README's benchmark section)."""
    p = argparse.ArgumentParser(
        prog="python -m triton_embed.bench",
        description="Autotune triton_embed's kernels for this GPU, benchmark them against PyTorch eager, "
        "bitsandbytes, torch.compile and Liger-Kernel, and write a report; --validate: the whole check of a "
        "GPU machine in one command. Without a GPU: check the kernels under the Triton interpreter at small "
        "shapes and time the PyTorch peers on the CPU.",
        epilog="Default GPU shapes: (vocab, dim) pairs (50257, 768), (32000, 2048), (128256, 4096) × tokens "
        "8192, 32768 × zipf, uniform × float32, bfloat16 × embedding, stable, layer_norm, renorm. --vocab/--dim "
        "switch to the cross product of the lists given (a list not given takes 32000 50257 128256 / 768 2048 "
        "4096). Without a GPU: V=1000 D=40 N=72 (--quick: V=500 D=32 N=64), Zipf ids, under the interpreter.",
    )
    p.add_argument("--vocab", type=positive_int, nargs="+", help="vocab sizes (rows)")
    p.add_argument("--dim", type=positive_int, nargs="+", help="embedding dims")
    p.add_argument("--tokens", type=positive_int, nargs="+", help="tokens per step (default 8192 32768 on a GPU)")
    p.add_argument("--dtype", nargs="+", choices=list(cases_mod.DTYPES),
                   help="weight dtypes (default float32 bfloat16)")
    p.add_argument("--dist", nargs="+", choices=list(cases_mod.DISTS),
                   help="token-id distributions (default zipf uniform; zipf only with --quick or without a GPU)")
    p.add_argument("--ops", nargs="+", choices=list(cases_mod.OPS),
                   help="ops to measure (default all: embedding stable layer_norm renorm)")
    p.add_argument("--pass", dest="pass_", choices=list(PASSES),
                   help="forward; backward (backward alone and forward+backward); both (default)")
    p.add_argument("--peers", nargs="+", choices=impls.PEERS,
                   help="peers to compare with (default on a GPU: reference bitsandbytes compile liger, and "
                   "compile-max too with --validate; on the CPU: reference bitsandbytes)")
    p.add_argument("--out", type=out_dir, default=Path("bench_out"), help="results folder (default ./bench_out)")
    p.add_argument("--name", help="also write <out>/<NAME>.json and <NAME>.md (default on a GPU: the GPU name "
                   "slug, e.g. nvidia-h100-80gb-hbm3, to commit as bench/results/<slug>.*; '' turns it off)")
    p.add_argument("--tune-only", action="store_true", help="autotune and write the cache, no benchmark")
    p.add_argument("--no-tune", action="store_true", help="benchmark with the cached/default configs, no tuning")
    p.add_argument("--quick", action="store_true", help="one small shape and short timings: a smoke run")
    p.add_argument("--no-check", action="store_true", help="skip the float64 correctness check")
    p.add_argument("--index-check", choices=INDEX_CHECK_MODES, default="deferred",
                   help="triton_embed's index check mode while timing (default deferred: what users get, "
                   "no host sync; sync costs one per op)")
    p.add_argument("--rounds", type=rounds_count,
                   help="interleaved timing rounds per case (default 3 on a GPU; 1 with --quick or on the CPU)")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help=f"stop starting cases when this many seconds have passed (default: none; "
                   f"{VALIDATE_BUDGET_S:.0f} with --validate)")
    p.add_argument("--plan", action="store_true",
                   help="with --validate: print, as JSON, what the one GPU command's --validate would do on an H100 "
                   "(stages, their cases and checks, the kernel specializations each compiles, estimated seconds) "
                   "and whether it fits its time budget, computed here without running a kernel; exit 1 when it "
                   "does not fit (--time-budget and --rounds replace the command's)")
    p.add_argument("--validate", action="store_true",
                   help="environment, correctness sweep, tuning, benchmark at the LM shapes and the "
                   "performance-target summary, into --out (validate.json written stage by stage); exit 1 on any "
                   "mismatch")
    return p


def main(argv: list[str] | None = None, mode: str | None = None) -> int:
    """Run the benchmark (or ``--validate``); 0 on success, 1 when a kernel disagrees with the reference."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = parser()
    args = cli.parse_args(argv)
    if args.tune_only and args.no_tune:
        cli.error("--tune-only and --no-tune contradict each other")
    if args.name and (Path(args.name).name != args.name or args.name in (".", "..")):
        cli.error(f"--name must be a plain file name (no folders), got {args.name!r}")
    if args.validate:
        given = [f"--{name.strip('_').replace('_', '-')}" for name in _VALIDATE_EXCLUDES if getattr(args, name)]
        if given:
            cli.error(f"--validate runs its own shapes and checks: {' '.join(given)} cannot go with it")
    if args.plan and not args.validate:
        cli.error("--plan goes with --validate (it plans that run)")
    args.pass_ = args.pass_ or "both"
    if args.plan or mode == "plan":
        return _plan(args)
    if not args.tune_only:
        problem = check_out_dir(args.out)
        if problem:
            cli.error(problem)
    gpu = (torch.cuda.is_available() and not triton_embed.interpreter_enabled()) if mode is None else mode == "gpu"
    if not gpu and not triton_embed.interpreter_enabled():
        say("error: no GPU and TRITON_INTERPRET is off: run `python -m triton_embed.bench` (it sets it)")
        return 2
    if gpu and not args.no_tune:  # the tuning writes the cache: a file it cannot extend is said before any work
        try:
            tuning.read_cache()
        except RuntimeError as exc:
            cli.error(str(exc))
    restore = raise_on_term()
    threads = torch.get_num_threads()
    backend = triton_embed.get_backend()
    if backend != "auto":  # the figures and checks are the kernels': run them whatever the setting says
        say(f"note: the backend is set to {backend!r} (TRITON_EMBED_BACKEND or set_backend); the benchmark "
            "measures and checks the Triton kernels, so it runs with 'auto'")
        triton_embed.set_backend("auto")
    try:
        if args.validate:
            from .validate import run_validate

            return run_validate(args, argv, gpu)
        return _run(args, argv, gpu)
    except Interrupted as stop:
        say(f"interrupted ({stop.name}): the results written so far are kept, marked incomplete")
        return stop.exit_code
    finally:
        restore()
        torch.set_num_threads(threads)
        triton_embed.set_backend(backend)


def _plan(args: argparse.Namespace) -> int:
    """Print the plan of ``--validate`` on an H100 as strict JSON (progress on stderr); 1 when it does not fit.
    It plans the run as the one GPU command makes it (``device_parts``: its options and time budget);
    --time-budget and --rounds given here replace theirs."""
    from .device import parts as device_parts
    from .device import plan

    part = next(p for p in device_parts.PARTS if p.name == "validate")
    args.time_budget = args.time_budget or device_parts.validate_budget(part.limit_s["gpu"])
    args.no_tune = args.no_tune or "--no-tune" in device_parts.VALIDATE_OPTIONS
    data = plan.build(args, lambda text: print(text, file=sys.stderr, flush=True))
    sys.stdout.write(files.json_text(data))
    sys.stdout.flush()
    verdict = "fits" if data["fits"] and data["device_run"]["fits"] else "DOES NOT FIT"
    print(f"plan: {data['estimated_seconds']:.0f} s of {data['budget_seconds']:.0f} s for --validate; the device "
          f"run {data['device_run']['estimated_seconds']:.0f} s of {data['device_run']['budget_seconds']:.0f} s: "
          f"{verdict}", file=sys.stderr)
    return 0 if data["fits"] and data["device_run"]["fits"] else 1


def _run(args: argparse.Namespace, argv: list[str], gpu: bool) -> int:
    started = time.perf_counter()
    device = torch.device("cuda" if gpu else "cpu")
    outcome = benchmark.Outcome()
    env = setup(gpu, args.index_check, outcome)
    ops = list(dict.fromkeys(args.ops or cases_mod.OPS))
    triples = cases_mod.shapes(args.vocab, args.dim, args.tokens, gpu, args.quick)
    dists = list(dict.fromkeys(args.dist or (cases_mod.DISTS if gpu and not args.quick else ["zipf"])))
    selected = cases_mod.build_cases(ops, triples, dists, list(dict.fromkeys(args.dtype or ["float32", "bfloat16"])))
    if not selected:
        say("nothing to run")
        return 0
    too_big = cases_mod.memory_problem(selected, device)
    if too_big:
        say(f"error: {too_big}")
        return 2
    deadline = Deadline(args.time_budget)
    tuned: dict[str, tuning.Config] = {}
    if gpu and not args.no_tune:
        tuner, notes = tune_cases(selected, device, deadline)
        tuned = tuner.written
        outcome.notes += notes
        say(f"tuned configs written to {tuning.cache_path()} under '{tuning.device_tag()}'")
    elif not gpu:
        outcome.note("autotuning needs a GPU: under the interpreter every kernel runs one fixed config; nothing "
                     "was tuned", say)
    if args.tune_only:
        for key, cfg in sorted(tuned.items()):
            say(f"  {key}: {cfg}")
        say(f"done in {time.perf_counter() - started:.1f} s")
        return 0
    rounds = args.rounds or (1 if args.quick or not gpu else 3)
    timer = Timer(device, quick=args.quick)
    plan = benchmark.Plan(selected, PASSES[args.pass_], default_peers(args, gpu), rounds=rounds,
                          verify=not args.no_check, deadline=deadline)
    method = benchmark.methodology(timer, rounds, args.index_check, deadline, gpu)
    command = ["python", "-m", "triton_embed.bench", *argv]
    name = args.name if args.name is not None else (report.slug(env["gpu"]) if gpu else "")
    tuning.forget_choices()  # from here on, chosen_configs() is what the measured launches used

    def partial(done: benchmark.Outcome) -> None:  # after each case: not complete until the last
        benchmark.write_reports(args.out, benchmark.build_payload(command, env, method, done, tuned, complete=False),
                                done.rows, "", say, draw=False)

    complete = False
    host: dict | None = None
    try:
        benchmark.run(plan, timer, gpu, outcome, say, on_case=partial)
        say("host time per call (tiny shape) and the CPU path (mid shape), against their peers ...")
        host = host_time.measure(device, quick=args.quick, deadline=deadline,
                                 bitsandbytes="bitsandbytes" in plan.peers)
        complete = True
    finally:  # also when interrupted: what was measured is written, marked incomplete
        data = benchmark.build_payload(command, env, method, outcome, tuned, complete=complete, host=host)
        written = benchmark.write_reports(args.out, data, outcome.rows, name, say)
    say("")
    say(report.format_table(outcome.rows))
    say("")
    say(host_time.format_table(host))
    say("")
    say("kernel configs (source):")
    for line in report.config_lines(data["configs"]):
        say(f"  {line}")
    say("")
    say(format_summary(data["targets"]))
    say(f"wrote {', '.join(written)} in {args.out}")
    failures = outcome.failures
    if failures:
        verdict = f"{len(failures)} mismatches (exit 1)"
    elif not data["checked"]:
        verdict = "no triton_embed result was checked (" + ("--no-check" if args.no_check else "no case ran") + ")"
    else:
        verdict = f"every checked triton_embed result ({data['checked']} rows) matched the reference"
    say(f"done in {time.perf_counter() - started:.1f} s: {verdict}")
    return 1 if failures else 0
