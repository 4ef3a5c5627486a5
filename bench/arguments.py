"""The command line's argument types and checks: every value refused before any work (argparse's exit code 2
with a plain message), never a traceback after minutes of measuring."""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path


#: The largest shape argument: ids and offsets are int64 (a larger one fails the memory check anyway).
MAX_SHAPE = 2**62
#: The most interleaved timing rounds (each round times every pass of every implementation once).
MAX_ROUNDS = 100
#: The longest --time-budget: a week (a longer one is a typo; inf or nan is no budget at all).
MAX_TIME_BUDGET_S = 7 * 24 * 3600.0


def positive_int(text: str, most: int = MAX_SHAPE) -> int:
    """argparse type: a whole number from 1 to ``most`` (a shape of 0 or less has nothing to measure).

    >>> positive_int("4096")
    4096
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
    return value


def rounds_count(text: str) -> int:
    """argparse type of --rounds: 1 to :data:`MAX_ROUNDS`.

    >>> rounds_count("3")
    3
    """
    return positive_int(text, MAX_ROUNDS)


def positive_float(text: str, most: float = MAX_TIME_BUDGET_S) -> float:
    """argparse type: a finite number of seconds above 0 and at most ``most`` (``inf`` and ``nan`` are refused:
    they are no budget, and JSON cannot hold them).

    >>> positive_float("420")
    420.0
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    if value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most:.0f} s, got {value:g}")
    return value


def out_dir(text: str) -> Path:
    """argparse type: a folder path (an empty one would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder path (use . for the current folder)")
    return Path(text)


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
