"""Runs the ahead-of-time check (``aot_compile.py``) as the tests do: in a fresh interpreter without
``TRITON_INTERPRET`` (interpreted kernels cannot be compiled), returning its JSON report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
DRIVER_TIMEOUT_S = 1500


def run_driver(*args: str) -> dict:
    """Run ``aot_compile.py`` in a fresh interpreter without TRITON_INTERPRET and return its report."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        proc = subprocess.run(
            [sys.executable, str(TESTS_DIR / "aot_compile.py"), "--json", str(out), *args],
            env=env, cwd=TESTS_DIR.parent, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
        )
        if not out.exists():
            pytest.fail(f"aot_compile.py {' '.join(args)} crashed (exit {proc.returncode}):\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return json.loads(out.read_text())


__all__ = ["run_driver", "DRIVER_TIMEOUT_S"]
