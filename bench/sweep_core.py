"""The machinery of the correctness sweep (``sweep``, ``sweep_special``): a check's record, the inputs of a sweep
shape, the comparison against the reference path and the float64 oracle with the tolerance rule
(``check.judge``), the runner that records every check whatever it raises, and the sweep's settings."""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

import triton_embed
from triton_embed.runtime import dispatch

from . import check
from .cases import Case, make_ids
from .timing import Deadline


@dataclass
class Check:
    """One check: ``ok`` None when it was skipped (the note says why)."""

    name: str
    ok: bool | None
    max_err: float | None = None
    tolerance: float | None = None
    seconds: float = 0.0
    note: str = ""


class Failed(Exception):
    """A check's property did not hold (the message says which)."""


class NotRun(Exception):
    """A check that cannot run here: recorded as skipped, with this message as its note."""


@dataclass(frozen=True)
class Data:
    """One sweep shape's inputs on the device (CPU-drawn ids, device tensors)."""

    weight: torch.Tensor
    ids: torch.Tensor
    grad: torch.Tensor

    @property
    def dim(self) -> int:
        """D."""
        return self.weight.shape[1]


def make_data(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> Data:
    """A random table, Zipf ids and an output gradient."""
    vocab, dim, tokens = shape
    gen = torch.Generator(device).manual_seed(seed)
    weight = torch.randn(vocab, dim, generator=gen, device=device).to(dtype)
    ids = make_ids(Case("embedding", vocab, dim, tokens, "zipf", "float32"), torch.Generator().manual_seed(seed))
    grad = torch.randn(tokens, dim, generator=gen, device=device).to(dtype)
    return Data(weight, ids.to(device), grad)


def leaf(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fresh copy of ``t`` (in ``dtype``) that requires grad: never ``t`` itself, whatever the dtypes."""
    return t.detach().to(dtype or t.dtype, copy=True).requires_grad_(True)


def compare(pairs: list[tuple[str, torch.Tensor | None, torch.Tensor | None, torch.Tensor, bool]]
            ) -> tuple[float, float, str]:
    """Judge (name, ours, same-dtype reference, float64 oracle, exact) tuples: (worst error, its tolerance,
    ""); raises :class:`Failed` naming every tensor outside its tolerance."""
    worst, worst_tol, bad = 0.0, 0.0, []
    for name, mine, ref, truth, exact in pairs:
        if mine is None:
            bad.append(f"{name}: missing")
            continue
        if tuple(mine.shape) != tuple(truth.shape):
            bad.append(f"{name}: shape {tuple(mine.shape)} != {tuple(truth.shape)}")
            continue
        err, _, tol, ok = check.judge(mine, ref, truth, exact=exact)
        if not ok:
            bad.append(f"{name}: " + ("differs from the reference" if exact else f"err {err:.3g} > tol {tol:.3g}"))
        if err >= worst:
            worst, worst_tol = err, tol
    if bad:
        raise Failed("; ".join(bad))
    return worst, worst_tol, ""


class Sweep:
    """Runs checks in turn and keeps their records; a check that raises is a failure, never the end."""

    def __init__(self, deadline: Deadline, say: Callable[[str], None]) -> None:
        self.deadline = deadline
        self.say = say
        self.checks: list[Check] = []

    def run(self, name: str, fn: Callable[[], tuple[float | None, float | None, str]]) -> Check:
        """Run one check (skipped once the deadline has passed)."""
        if self.deadline.expired():
            record = Check(name, None, note="skipped: the sweep's time budget ran out")
        else:
            start = time.perf_counter()
            try:
                err, tol, note = fn()
                record = Check(name, True, err, tol, note=note)
            except Failed as exc:
                record = Check(name, False, note=str(exc)[:500])
            except NotRun as exc:
                record = Check(name, None, note=str(exc))
            except Exception as exc:  # noqa: BLE001 - an error is a failed check; the sweep goes on
                record = Check(name, False, note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                               if str(exc) else type(exc).__name__)
            record.seconds = time.perf_counter() - start
        self.checks.append(record)
        if record.ok is False:
            self.say(f"  FAIL {name}: {record.note}")
        return record

    def result(self) -> dict[str, Any]:
        """The stage's record: ok, counts, and every check."""
        failed = [c.name for c in self.checks if c.ok is False]
        return {"ok": not failed, "checks": [asdict(c) for c in self.checks], "failed": failed,
                "passed": sum(c.ok is True for c in self.checks), "skipped": sum(c.ok is None for c in self.checks)}


@contextlib.contextmanager
def sweep_settings() -> Iterator[None]:
    """Poisoned outputs, no runtime tuning, the default (deferred) index check; restored afterwards."""
    autotune = os.environ.get("TRITON_EMBED_AUTOTUNE")
    mode = triton_embed.index_check_mode()
    os.environ["TRITON_EMBED_AUTOTUNE"] = "0"
    dispatch.set_poison(True)
    triton_embed.set_index_check("deferred")
    try:
        with warnings.catch_warnings():
            # The interpreter evaluates masked-out lanes too (a log of 0 in the general-p norm): numpy noise.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.*")
            yield
    finally:
        dispatch.set_poison(False)
        triton_embed.set_index_check(mode)
        if autotune is None:
            os.environ.pop("TRITON_EMBED_AUTOTUNE", None)
        else:
            os.environ["TRITON_EMBED_AUTOTUNE"] = autotune


__all__ = ["Check", "Failed", "NotRun", "Data", "make_data", "leaf", "compare", "Sweep", "sweep_settings"]
