"""What the plain run and ``--validate`` share: the peers each machine compares against, the tuning of the
benchmark's cases, the environment record and the CPU settings, progress output."""
from __future__ import annotations

import argparse
import time

import torch

import triton_embed

from . import benchmark, report
from . import cases as cases_mod
from .timing import Deadline
from .tune import Tuner

#: The plain run's GPU peers. max-autotune-no-cudagraphs compiles cost minutes per shape over the default
#: run's 80 cases: asked for with --peers, and part of --validate (on one shape per op).
GPU_PEERS = ["reference", "bitsandbytes", "compile", "liger"]
VALIDATE_GPU_PEERS = ["reference", "bitsandbytes", "compile", "compile-max", "liger"]
#: torch.compile on the CPU spends tens of seconds per shape in the C++ compiler (max-autotune far more),
#: and Liger's kernels would run under the interpreter: asked for, not default.
CPU_PEERS = ["reference", "bitsandbytes"]
CPU_NOTE = (
    "No CUDA GPU here: the Triton kernels run under the Triton interpreter at small shapes and are checked "
    "against the reference path, not timed; only the reference path (and its PyTorch peers) are timed, on the "
    "CPU. GPU figures (GB/s, % of copy bandwidth, speed-ups, peak memory, tuned configs) need a GPU."
)
INDEX_CHECK_MODES = ("deferred", "sync", "off")
#: Default --time-budget of --validate: with start-up and the final writes it stays within 8 minutes.
VALIDATE_BUDGET_S = 420.0


def say(text: str) -> None:
    """Progress on stdout, flushed at once."""
    print(text, flush=True)


def tune_cases(selected: list[cases_mod.Case], device: torch.device, deadline: Deadline | None = None,
               tuner: Tuner | None = None) -> tuple[Tuner, list[str]]:
    """Tune each distinct key of ``selected`` once (until ``deadline``); (the tuner, notes on what was not)."""
    tuner = tuner or Tuner()
    notes: list[str] = []
    todo: list[cases_mod.Case] = []
    for case in selected:  # one case per tuning key: the id distribution is not part of it
        if tuner.needed(case) and not any(Tuner.key(case) == Tuner.key(other) for other in todo):
            todo.append(case)
    for n, case in enumerate(todo, 1):
        if deadline is not None and deadline.expired():
            notes.append(f"tuning stopped at its time limit: {len(todo) - n + 1} of {len(todo)} keys not tuned "
                         "(their kernels run the default config)")
            break
        start = time.perf_counter()
        try:
            new = tuner.tune(case, cases_mod.make_inputs(case, device))
        except Exception as exc:  # noqa: BLE001 - a case that cannot be tuned runs its defaults
            notes.append(f"tuning {case.label()} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            continue
        say(f"[tune {n:>{len(str(len(todo)))}}/{len(todo)}] {case.op} {case.dtype} D={case.dim} "
            f"N={case.tokens}: {len(new)} keys in {time.perf_counter() - start:.1f} s")
    for text in notes:
        say(f"note: {text}")
    return tuner, notes


def default_peers(args: argparse.Namespace, gpu: bool, validate: bool = False) -> list[str]:
    """The peers asked for, or the defaults of this machine (and mode)."""
    defaults = (VALIDATE_GPU_PEERS if validate else GPU_PEERS) if gpu else CPU_PEERS
    return list(dict.fromkeys(args.peers if args.peers is not None else defaults))


def setup(gpu: bool, index_check: str, outcome: benchmark.Outcome) -> dict:
    """The environment record, the CPU notes and settings, and the index check mode."""
    device = torch.device("cuda" if gpu else "cpu")
    env = report.environment("gpu" if gpu else "cpu-interpreter", device, index_check)
    say(f"triton_embed.bench on {env['gpu'] or 'CPU'}: torch {env['torch']}, triton {env['triton']}")
    if not gpu:
        outcome.note(CPU_NOTE, say)
        torch.set_num_threads(1)
        outcome.note("CPU timings use one thread (steadier on a shared machine); CPU GB/s have no % of copy "
                     "bandwidth: these small shapes sit in the CPU caches", say)
    triton_embed.set_index_check(index_check)
    return env


__all__ = ["GPU_PEERS", "VALIDATE_GPU_PEERS", "CPU_PEERS", "CPU_NOTE", "INDEX_CHECK_MODES", "VALIDATE_BUDGET_S", "say",
           "tune_cases", "default_peers", "setup"]
