"""Command line of ``python -m triton_embed.bench``: options, then tune → measure → report."""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

import triton_embed
from triton_embed import tuning

from . import cases as cases_mod
from . import impls, plot, report
from .runner import PASSES, CaseResult, Row, run_case
from .timing import Timer, copy_bandwidth
from .tune import Tuner

GPU_PEERS = ["reference", "bitsandbytes", "compile"]
#: torch.compile on the CPU spends tens of seconds per shape in the C++ compiler: asked for, not default.
CPU_PEERS = ["reference", "bitsandbytes"]
CPU_NOTE = (
    "No CUDA GPU here: the Triton kernels run under the Triton interpreter at small shapes and are checked "
    "against the reference path, not timed; only the reference path (and its peers) are timed, on the CPU. "
    "GPU figures (GB/s, % of copy bandwidth, speed-ups, peak memory, tuned configs) need a GPU."
)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a shape of 0 or less has nothing to measure)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_out_dir(out: Path) -> str | None:
    """Why results cannot be written to ``out`` (None when they can): checked before any work, so that a
    long run is never lost at its end. Creates the folder and removes a probe file."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        return f"cannot write results to {str(out)!r}: {exc.strerror or exc}"
    return None


def parser() -> argparse.ArgumentParser:
    """The options (see docs_bench.md)."""
    p = argparse.ArgumentParser(
        prog="python -m triton_embed.bench",
        description="Autotune triton_embed's kernels for this GPU, benchmark them against the reference path, "
        "bitsandbytes and torch.compile, and write a report. Without a GPU: check the kernels under the "
        "Triton interpreter at small shapes and time the reference path on the CPU.",
        epilog="Default GPU shapes: (vocab, dim) pairs (50257, 768), (32000, 2048), (128256, 4096) × tokens "
        "8192, 32768 × zipf, uniform × float32, bfloat16 × embedding, stable. --vocab/--dim switch to the "
        "cross product of the lists given (a list not given takes 32000 50257 128256 / 768 2048 4096). "
        "Without a GPU: V=1000 D=40 N=72 (--quick: V=500 D=32 N=64), Zipf ids, under the Triton interpreter.",
    )
    p.add_argument("--vocab", type=positive_int, nargs="+", help="vocab sizes (rows)")
    p.add_argument("--dim", type=positive_int, nargs="+", help="embedding dims")
    p.add_argument("--tokens", type=positive_int, nargs="+", help="tokens per step (default 8192 32768 on a GPU)")
    p.add_argument("--dtype", nargs="+", choices=list(cases_mod.DTYPES), default=["float32", "bfloat16"],
                   help="weight dtypes (default float32 bfloat16)")
    p.add_argument("--dist", nargs="+", choices=list(cases_mod.DISTS),
                   help="token-id distributions (default zipf uniform; zipf only with --quick or without a GPU)")
    p.add_argument("--ops", nargs="+", choices=list(cases_mod.OPS), default=list(cases_mod.OPS),
                   help="ops to measure (default embedding stable; stable is skipped while triton_embed lacks it)")
    p.add_argument("--pass", dest="pass_", choices=list(PASSES), default="both",
                   help="forward; backward (backward alone and forward+backward); both (default)")
    p.add_argument("--peers", nargs="*", choices=impls.PEERS,
                   help="peers to compare with (default on a GPU: reference bitsandbytes compile; "
                   "on the CPU: reference bitsandbytes)")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="results folder (default ./bench_out)")
    p.add_argument("--name", help="also write <out>/<NAME>.json and <NAME>.md (default on a GPU: the GPU name "
                   "slug, e.g. nvidia-h100-80gb-hbm3, to commit as bench/results/<slug>.*; '' turns it off)")
    p.add_argument("--tune-only", action="store_true", help="autotune and write the cache, no benchmark")
    p.add_argument("--no-tune", action="store_true", help="benchmark with the cached/default configs, no tuning")
    p.add_argument("--quick", action="store_true", help="one small shape and short timings: a smoke run")
    p.add_argument("--no-check", action="store_true", help="skip the float64 correctness check")
    p.add_argument("--no-deterministic", action="store_true", help="leave out the deterministic backward path")
    p.add_argument("--no-index-check", action="store_true",
                   help="turn triton_embed's host-side index bounds check off (it costs a sync per op)")
    return p


def say(text: str) -> None:
    """Progress on stdout, flushed at once."""
    print(text, flush=True)


def _summary(result: CaseResult, gpu: bool) -> str:
    """The progress line's tail: our times and speed-ups (GPU), or the check and the reference times (CPU)."""
    parts = []
    for row in result.rows:
        if row.impl in impls.OURS and row.median_ms is not None:
            name = "det " if row.impl != "triton_embed" else ""
            vs = f" ({row.speedup_vs_reference:.2f}x ref)" if row.speedup_vs_reference else ""
            parts.append(f"{name}{row.pass_} {row.median_ms:.4g} ms{vs}")
        elif not gpu and row.impl == "reference" and row.median_ms is not None:
            parts.append(f"ref {row.pass_} {row.median_ms:.3g} ms")
    errs = [r.max_abs_err for r in result.rows if r.impl in impls.OURS and r.max_abs_err is not None]
    if errs:
        parts.append(f"max err {max(errs):.2g}")
    parts.append("FAIL" if result.failures else "ok")
    return " | ".join(parts)


def _tune(selected: list[cases_mod.Case], device: torch.device) -> dict[str, tuning.Config]:
    tuner = Tuner()
    todo: list[cases_mod.Case] = []
    for case in selected:  # one case per tuning key: the id distribution is not part of it
        if tuner.needed(case) and not any(Tuner.key(case) == Tuner.key(other) for other in todo):
            todo.append(case)
    for n, case in enumerate(todo, 1):
        start = time.perf_counter()
        new = tuner.tune(case, cases_mod.make_inputs(case, device))
        say(f"[tune {n:>{len(str(len(todo)))}}/{len(todo)}] {case.op} {case.dtype} D={case.dim} "
            f"N={case.tokens}: {len(new)} keys in {time.perf_counter() - start:.1f} s")
    say(f"tuned configs written to {tuning.cache_path()} under '{tuning.device_tag()}'")
    return tuner.written


def main(argv: list[str] | None = None, mode: str | None = None) -> int:
    """Run the benchmark; 0 on success, 1 when a kernel disagrees with the reference."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = parser()
    args = cli.parse_args(argv)
    if args.tune_only and args.no_tune:
        cli.error("--tune-only and --no-tune contradict each other")
    if args.name and (Path(args.name).name != args.name or args.name in (".", "..")):
        cli.error(f"--name must be a plain file name (no folders), got {args.name!r}")
    if not args.tune_only:
        problem = check_out_dir(args.out)
        if problem:
            cli.error(problem)
    gpu = (torch.cuda.is_available() and not triton_embed.interpreter_enabled()) if mode is None else mode == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    started = time.perf_counter()
    notes: list[str] = []

    def note(text: str) -> None:
        notes.append(text)
        say(f"note: {text}")

    env = report.environment("gpu" if gpu else "cpu-interpreter", device, not args.no_index_check)
    say(f"triton_embed.bench on {env['gpu'] or 'CPU'}: torch {env['torch']}, triton {env['triton']}")
    if not gpu:
        note(CPU_NOTE)
        if not triton_embed.interpreter_enabled():
            say("error: no GPU and TRITON_INTERPRET is off: run `python -m triton_embed.bench` (it sets it)")
            return 2
        torch.set_num_threads(1)
        note("CPU timings use one thread (steadier on a shared machine); CPU GB/s have no % of copy "
             "bandwidth: these small shapes sit in the CPU caches")
    ops = list(dict.fromkeys(args.ops))
    if "stable" in ops and not impls.stable_available():
        ops.remove("stable")
        note("triton_embed.StableEmbedding is not available yet: the stable op is skipped")
    if args.no_index_check:
        triton_embed.set_index_check(False)
    triples = cases_mod.shapes(args.vocab, args.dim, args.tokens, gpu, args.quick)
    dists = list(dict.fromkeys(args.dist or (cases_mod.DISTS if gpu and not args.quick else ["zipf"])))
    selected = cases_mod.build_cases(ops, triples, dists, list(dict.fromkeys(args.dtype)))
    if not selected:
        say("nothing to run")
        return 0

    tuned: dict[str, tuning.Config] = {}
    if gpu and not args.no_tune:
        tuned = _tune(selected, device)
    elif not gpu:
        note("autotuning needs a GPU: under the interpreter every kernel runs one fixed config; nothing was tuned")
    if args.tune_only:
        for key, cfg in sorted(tuned.items()):
            say(f"  {key}: {cfg}")
        say(f"done in {time.perf_counter() - started:.1f} s")
        return 0

    peers = list(dict.fromkeys(args.peers if args.peers is not None else (GPU_PEERS if gpu else CPU_PEERS)))
    timer = Timer(device, quick=args.quick)
    copy_gbps, copy_bytes = copy_bandwidth(timer)
    say(f"copy bandwidth ({'device-to-device' if gpu else 'CPU memory'}): {copy_gbps:.0f} GB/s")
    passes = PASSES[args.pass_]
    rows: list[Row] = []
    failures: list[str] = []
    impl_cache: dict[str, list[impls.Impl]] = {}
    width = len(str(len(selected)))
    for n, case in enumerate(selected, 1):
        if case.op not in impl_cache:
            impl_cache[case.op], impl_notes = impls.select(case.op, peers, deterministic=not args.no_deterministic)
            for text in impl_notes:
                if text not in notes:
                    note(text)
        start = time.perf_counter()
        result = run_case(case, impl_cache[case.op], passes, timer, copy_gbps, time_ours=gpu, verify=not args.no_check)
        rows += result.rows
        failures += result.failures
        say(f"[{n:>{width}}/{len(selected)}] {case.label()} ({time.perf_counter() - start:.1f} s): "
            f"{_summary(result, gpu)}")
        for failure in result.failures:
            say(f"  FAIL {failure}")

    say("")
    say(report.format_table(rows))
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    configs = {**tuning.chosen_configs(), **tuned}  # what the measured launches used: tuned now, or cached
    data = report.payload(
        ["python", "-m", "triton_embed.bench", *argv], env, (copy_gbps, copy_bytes), configs, notes, rows, failures,
        created,
    )
    _write(args, data, rows, gpu, env)
    say(f"done in {time.perf_counter() - started:.1f} s: "
        + ("every kernel matched the reference" if not failures else f"{len(failures)} mismatches (exit 1)"))
    return 1 if failures else 0


def _write(args: argparse.Namespace, data: dict, rows: list[Row], gpu: bool, env: dict) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = report.markdown(data, rows)
    report.write_json(out / "results.json", data)
    report.write_csv(out / "results.csv", rows)
    (out / "report.md").write_text(text)
    written = ["results.json", "results.csv", "report.md"]
    title = f"triton_embed on {env['gpu'] or 'CPU (interpreter)'} — torch {env['torch']}, triton {env['triton']}"
    if not plot.matplotlib_available():
        say("note: matplotlib is not installed (pip install 'triton_embed[plot]'): no plot.png")
    else:
        try:
            if plot.write_plot(out / "plot.png", rows, title):
                written.append("plot.png")
        except Exception as exc:  # a broken matplotlib must not lose the figures already measured
            say(f"note: plot.png not drawn ({type(exc).__name__}: {exc})")
    name = args.name if args.name is not None else (report.slug(env["gpu"]) if gpu else "")
    if name:
        report.write_json(out / f"{name}.json", data)
        (out / f"{name}.md").write_text(text)
        written += [f"{name}.json", f"{name}.md"]
    say(f"wrote {', '.join(written)} in {out}")
