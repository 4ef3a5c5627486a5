"""Out-of-range ids (-1, V, 2**40) through every path (gather, dense and sparse backward, renorm, the fused
StableEmbedding forward and backward) and every mode (deferred, sync, off), in a process of its own: it
survives, nothing is written outside a buffer (guard rows stay bitwise unchanged), the table is never
changed, and the IndexError comes when the mode says it does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("out_of_range_cases.py")


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    env = {**os.environ, "TRITON_EMBED_POISON": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=SCRIPT.parent)
    assert proc.returncode == 0, f"the process died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_case_ran(results):
    paths = {"gather", "renorm", "dense_backward", "sparse_backward", "stable_forward", "stable_backward"}
    assert {key.split("/")[0] for key in results} == paths
    assert len(results) == len(paths) * 3 * 3


def test_every_case_is_right(results):
    failed = {key: why for key, why in results.items() if why != "ok"}
    assert not failed, "\n\n".join(f"{key}: {why}" for key, why in failed.items())
