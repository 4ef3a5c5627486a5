"""Choose how the benchmark runs: compiled kernels on a GPU, or the Triton interpreter on the CPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, i.e. when ``triton_embed`` is imported.
``python -m triton_embed.bench`` imports ``triton_embed/__init__.py`` before this package, so on a machine
without CUDA the flag comes too late: the process re-executes itself with the flag in its environment.
"""
from __future__ import annotations

import os
import sys

#: Set in the re-executed process, so a failure to enable the interpreter cannot loop.
REEXEC_MARK = "TRITON_EMBED_BENCH_REEXEC"


def interpreter_on() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False")


def _kernels_imported() -> bool:
    return any(name == "triton_embed.kernels" or name.startswith("triton_embed.kernels.") for name in sys.modules)


def ensure_runtime(argv: list[str]) -> str:
    """Return ``"gpu"``, ``"interpreter"`` or ``"plan"``; without CUDA, make sure the kernels run under the
    interpreter (``--plan``, which traces the compiled kernels' launches: that they do not).

    ``TRITON_INTERPRET=1`` already in the environment selects the interpreter run even on a GPU machine.

    Sets ``TRITON_INTERPRET=1`` when no kernel is decorated yet, else re-executes
    ``python -m triton_embed.bench ARGV`` with it (this call then never returns).
    """
    import torch

    if "--plan" in argv:  # traces the compiled kernels' launches: never under the interpreter
        if not interpreter_on():
            return "plan"
        if os.environ.get(REEXEC_MARK):
            raise SystemExit("triton_embed.bench: could not leave the Triton interpreter for --plan")
        os.environ.pop("TRITON_INTERPRET")
        os.environ[REEXEC_MARK] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "triton_embed.bench", *argv])
    if interpreter_on():  # asked for explicitly (or set by conftest / a re-exec): the interpreter run
        return "interpreter"
    if torch.cuda.is_available():
        return "gpu"
    if "-h" in argv or "--help" in argv:
        return "interpreter"  # help runs no kernel: no need to re-execute
    if os.environ.get(REEXEC_MARK):
        raise SystemExit("triton_embed.bench: could not enable TRITON_INTERPRET=1 for the CPU run")
    os.environ["TRITON_INTERPRET"] = "1"
    if not _kernels_imported():
        return "interpreter"
    os.environ[REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "triton_embed.bench", *argv])
    raise AssertionError("unreachable")  # pragma: no cover
