"""The cost around the kernels: host time per call at a tiny shape, and the CPU path at a mid shape, each
against its peers (README, "Performance targets").

**Host time per call** (V=1000, D=64, 4 ids): the time a call takes to return, where the kernels' own work is
nothing. On the CPU every Triton launch is a no-op (:func:`stubbed_launches`) and CPU tensors take the
kernels' path, so what is timed is our Python and PyTorch's machinery around the launches (argument checks,
path choice, config and tiles, allocation, autograd); Triton's own launcher, which a GPU adds, is not. The
peers' whole CPU calls, compute included, are the yardstick. On a GPU the launches are real (their cost
included), the peers run on the GPU, and the device is synchronised between batches, outside the timed calls.

**The CPU path** (V=32000, D=512, 4096 Zipf ids, float32): CPU tensors on the reference path, what runs
without a GPU, against ``torch.nn.Embedding`` and bitsandbytes' ``StableEmbedding``.

Every figure is a median over many timings on one thread (of the thread's CPU time on the CPU, so that a shared
machine's other processes do not count; of the wall clock on a GPU), ours and the peer's interleaved in
alternating order, round after round; a ratio is the median over rounds of ours / the peer's (each round's
two batches run next to each other), within one run. Without bitsandbytes
its peer is ``triton_embed.reference.StableEmbedding`` (the same PyTorch ops, op for op), and a note says so.

>>> [row.key for row in TARGETS]  # doctest: +NORMALIZE_WHITESPACE
['host-embedding-forward', 'host-stable-forward', 'host-embedding-fwd+bwd', 'host-stable-fwd+bwd',
 'cpu-embedding-forward', 'cpu-embedding-fwd+bwd', 'cpu-stable-forward', 'cpu-stable-fwd+bwd']
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

import triton_embed
from triton_embed import reference
from triton_embed.runtime import dispatch

from . import impls
from .cases import Case, case_ids
from .files import text_table
from .host_timer import stubbed_launches, timed_pair
from .timing import Deadline

#: (V, D, tokens) of the host-time rows and of the CPU-path rows.
TINY = (1000, 64, 4)
MID = (32000, 512, 4096)


@dataclass(frozen=True)
class Target:
    """One measured ratio: ours (op, pass) against a peer, at most ``bound``."""

    key: str
    section: str  # "host" or "cpu"
    op: str  # "embedding" or "stable"
    pass_: str  # "forward" or "fwd+bwd"
    peer: str  # "F.embedding", "nn.Embedding" or "bitsandbytes"
    bound: float

    @property
    def title(self) -> str:
        """The row's name, e.g. ``StableEmbedding forward + backward``."""
        name = "Embedding" if self.op == "embedding" else "StableEmbedding"
        return f"{name} {'forward' if self.pass_ == 'forward' else 'forward + backward'}"


TARGETS = (
    Target("host-embedding-forward", "host", "embedding", "forward", "F.embedding", 4.0),
    Target("host-stable-forward", "host", "stable", "forward", "bitsandbytes", 1.5),
    Target("host-embedding-fwd+bwd", "host", "embedding", "fwd+bwd", "nn.Embedding", 1.5),
    Target("host-stable-fwd+bwd", "host", "stable", "fwd+bwd", "bitsandbytes", 1.5),
    Target("cpu-embedding-forward", "cpu", "embedding", "forward", "nn.Embedding", 1.15),
    Target("cpu-embedding-fwd+bwd", "cpu", "embedding", "fwd+bwd", "nn.Embedding", 1.15),
    Target("cpu-stable-forward", "cpu", "stable", "forward", "bitsandbytes", 1.15),
    Target("cpu-stable-fwd+bwd", "cpu", "stable", "fwd+bwd", "bitsandbytes", 1.15),
)
#: (rounds, samples per round, calls per sample) per section and pass; ``quick`` runs a third of the rounds.
REPEATS = {("host", "forward"): (20, 20, 10), ("host", "fwd+bwd"): (20, 10, 5),
           ("cpu", "forward"): (100, 1, 1), ("cpu", "fwd+bwd"): (24, 1, 1)}


def _peer_stable_class(bitsandbytes: bool = True) -> tuple[type, str | None]:
    """bitsandbytes' StableEmbedding (if asked for and importable), or the reference module (the same ops)
    and a note saying so."""
    bnb = impls.bitsandbytes_module() if bitsandbytes else None
    if bnb is not None:
        return bnb.StableEmbedding, None
    why = "is not importable here" if bitsandbytes else "was not among the peers asked for"
    return reference.StableEmbedding, (f"bitsandbytes {why}: its StableEmbedding peer is "
                                       "triton_embed.reference.StableEmbedding (the same PyTorch ops, op for op)")


def _modules(op: str, shape: tuple[int, int, int], device: torch.device, peer: str, bitsandbytes: bool = True
             ) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor, list]:
    """(our module, the peer as a callable on the ids, ids, output gradient, the peer's parameters)."""
    vocab, dim, tokens = shape
    ids = case_ids(Case(op, vocab, dim, tokens, "zipf", "float32")).to(device)
    gen = torch.Generator().manual_seed(vocab + dim + tokens)
    weight = torch.randn(vocab, dim, generator=gen)
    grad = torch.randn(tokens, dim, generator=gen).to(device)
    ours_cls = triton_embed.StableEmbedding if op == "stable" else triton_embed.Embedding
    ours = ours_cls(vocab, dim, _weight=weight.clone()).to(device)
    if op == "stable":
        cls, _ = _peer_stable_class(bitsandbytes)
        theirs = cls(vocab, dim, _weight=weight.clone()).to(device)
    else:
        theirs = torch.nn.Embedding(vocab, dim, _weight=weight.clone()).to(device)
    if peer == "F.embedding":
        table = theirs.weight
        return ours, lambda i: F.embedding(i, table), ids, grad, [table]
    return ours, theirs, ids, grad, list(theirs.parameters())


def _step(module: Callable[[torch.Tensor], torch.Tensor], params: list, ids: torch.Tensor, grad: torch.Tensor,
          pass_: str) -> Callable[[], object]:
    """One call of a pass: the forward (recording autograd, as in training), or a whole training step's
    gradient work: gradients reset, forward, backward."""
    if pass_ == "forward":
        return lambda: module(ids)

    def step() -> None:
        for p in params:
            p.grad = None
        module(ids).backward(grad)

    return step


def _measure_row(target: Target, device: torch.device, quick: bool, bitsandbytes: bool) -> dict[str, Any]:
    shape = TINY if target.section == "host" else MID
    ours, theirs, ids, grad, their_params = _modules(target.op, shape, device, target.peer, bitsandbytes)
    rounds, calls, group = REPEATS[(target.section, target.pass_)]
    if quick:
        rounds = max(4, rounds // 3)
    ours_us, peer_us, ratio = timed_pair(_step(ours, list(ours.parameters()), ids, grad, target.pass_),
                                   _step(theirs, their_params, ids, grad, target.pass_), rounds, calls, group,
                                   device.type == "cuda")
    peer = target.peer
    if peer == "bitsandbytes" and _peer_stable_class(bitsandbytes)[1]:
        peer = "reference (bitsandbytes' ops)"
    vocab, dim, tokens = shape
    return {"key": target.key, "section": target.section, "op": target.title, "shape": f"V={vocab} D={dim} N={tokens}",
            "ours_us": ours_us, "peer": peer, "peer_us": peer_us, "ratio": ratio, "target": target.bound,
            "met": ratio <= target.bound}


def measure(device: torch.device | str, *, quick: bool = False, deadline: Deadline | None = None,
            bitsandbytes: bool = True) -> dict[str, Any]:
    """Host time per call (launches stubbed on the CPU, real on a GPU) and the CPU path, against their peers.

    Returns ``{"device", "launches": "stubbed" | "real", "rows": [...], "notes": [...], "method"}``; each row has
    ``key, section ("host" | "cpu"), op, shape, ours_us, peer, peer_us, ratio, target, met``. Rows that the
    ``deadline`` cannot hold are left out, with a note. ``bitsandbytes=False``: the StableEmbedding peer is
    the reference module without trying bitsandbytes (whose import takes seconds). One CPU thread while it
    runs (restored after); the index check mode, the backend and the poison setting are left as they were.
    """
    device = torch.device(device)
    gpu = device.type == "cuda"
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    peer_note = _peer_stable_class(bitsandbytes)[1]
    if peer_note:
        notes.append(peer_note)
    threads, poison, backend = torch.get_num_threads(), dispatch._poison["enabled"], triton_embed.get_backend()
    collecting = gc.isenabled()
    torch.set_num_threads(1)
    dispatch.set_poison(False)
    gc.disable()
    try:
        for target in TARGETS:
            if deadline is not None and deadline.left() < (5.0 if quick else 15.0):
                notes.append(f"{target.key}: not measured, the time budget ran out")
                continue
            if target.section == "host":
                triton_embed.set_backend("auto")
                with contextlib.nullcontext() if gpu else stubbed_launches():
                    rows.append(_measure_row(target, device, quick, bitsandbytes))
            else:  # the CPU path: CPU tensors on the reference path, whatever the machine has
                triton_embed.set_backend("reference")
                rows.append(_measure_row(target, torch.device("cpu"), quick, bitsandbytes))
    finally:
        torch.set_num_threads(threads)
        dispatch.set_poison(poison)
        triton_embed.set_backend(backend)
        if collecting:
            gc.enable()
    return {"device": str(device), "launches": "real" if gpu else "stubbed", "rows": rows, "notes": notes,
            "method": method_text(gpu)}


def method_text(gpu: bool) -> str:
    """How the figures were obtained, for the report."""
    host = ("real launches on the GPU (launch cost included), the peers on the GPU, the device synchronised "
            "between batches outside the timings" if gpu else
            "every Triton launch replaced by a no-op, CPU tensors on the kernels' path: our Python and PyTorch's "
            "machinery around the launches (Triton's own launcher, which a GPU adds, is not in it), against the "
            "peers' whole CPU calls")
    return (f"Host time per call at V={TINY[0]} D={TINY[1]} N={TINY[2]}: {host}. The CPU path at V={MID[0]} "
            f"D={MID[1]} N={MID[2]} Zipf ids, float32, CPU tensors on the reference path. Each figure: the median "
            "per call over many timings on one thread (" + ("wall clock" if gpu else "the thread's CPU time, so "
            "that other processes on a shared machine do not count") + "), ours and the peer's interleaved round "
            "by round; forward + backward includes resetting the gradients. Ratio: the median over rounds of ours / "
            "the peer's (two batches run next to each other), at most the target.")


def table_lines(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The host-time and CPU-path table: one tuple of strings per row, header first."""
    lines = [("section", "call", "shape", "ours µs", "peer", "peer µs", "ratio", "target", "status")]
    for row in result["rows"]:
        section = "host time" + (" (stubbed)" if result["launches"] == "stubbed" else "") if row["section"] == "host" \
            else "CPU path"
        lines.append((section, row["op"], row["shape"], f"{row['ours_us']:.4g}", row["peer"], f"{row['peer_us']:.4g}",
                      f"{row['ratio']:.2f}x", f"≤ {row['target']:g}x", "met" if row["met"] else "MISSED"))
    return lines


def format_table(result: dict[str, Any]) -> str:
    """The table for the terminal, columns padded to width, then the notes."""
    return "\n".join([text_table(table_lines(result)), *(f"note: {text}" for text in result["notes"])])


def markdown(result: dict[str, Any]) -> list[str]:
    """The section of report.md (lines)."""
    lines = table_lines(result)
    out = ["## Host time per call and the CPU path", "", result["method"], "",
           "| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    out += [f"- {text}" for text in result["notes"]]
    return out


CSV_FIELDS = ("key", "section", "op", "shape", "ours_us", "peer", "peer_us", "ratio", "target", "met")


def csv_text(result: dict[str, Any]) -> str:
    """host_time.csv: one line per row (:data:`CSV_FIELDS`)."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in result["rows"]:
        writer.writerow(row)
    return buffer.getvalue()


def profile(op: str, pass_: str, calls: int = 2000, top: int = 25) -> str:
    """A cProfile of ``calls`` host-time calls of ``op`` ("embedding" | "stable") and ``pass_`` ("forward" |
    "fwd+bwd") at the tiny shape, launches stubbed on the CPU: where the time around the kernels goes."""
    import cProfile
    import io
    import pstats

    device = torch.device("cuda" if torch.cuda.is_available() and not dispatch.interpreter_enabled() else "cpu")
    ours, _, ids, grad, _ = _modules(op, TINY, device, "nn.Embedding", bitsandbytes=False)
    step = _step(ours, list(ours.parameters()), ids, grad, pass_)
    with contextlib.nullcontext() if device.type == "cuda" else stubbed_launches():
        for _ in range(100):
            step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            step()
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv: list[str] | None = None) -> None:
    """``python -m triton_embed.bench.host_time [--quick] [--out FILE] [--time-budget S] [--profile OP PASS]``:
    measure on this machine (a GPU if there is one) and print the table (and write it as JSON), or profile one
    call."""
    import argparse
    from pathlib import Path

    from .arguments import positive_float
    from .files import write_json

    parser = argparse.ArgumentParser(prog="python -m triton_embed.bench.host_time", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a third of the rounds")
    parser.add_argument("--out", type=Path, help="also write the result as JSON into this file")
    parser.add_argument("--time-budget", type=positive_float, help="seconds at most; rows that do not fit are noted")
    parser.add_argument("--profile", nargs=2, metavar=("OP", "PASS"),
                        help="cProfile one call instead: OP embedding|stable, PASS forward|fwd+bwd")
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out: folder {args.out.parent} does not exist")
    if args.profile:
        print(profile(*args.profile))
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not dispatch.interpreter_enabled() else "cpu")
    torch.set_num_threads(1)
    deadline = Deadline(args.time_budget) if args.time_budget else None
    result = measure(device, quick=args.quick, deadline=deadline)
    if args.out is not None:
        write_json(args.out, result)
    print(format_table(result))


if __name__ == "__main__":
    main()


__all__ = ["TARGETS", "TINY", "MID", "measure", "stubbed_launches", "format_table", "markdown", "csv_text",
           "table_lines", "method_text", "profile"]
