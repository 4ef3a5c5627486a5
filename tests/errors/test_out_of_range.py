"""Out-of-range ids (-1, V, 2**40) through every path (gather, dense and sparse backward, renorm, the fused
StableEmbedding forward and backward) and every mode (deferred, sync, off), in a process of its own: it
survives, nothing is written outside a buffer (guard rows stay bitwise unchanged), the table is never
changed, and the IndexError comes when the mode says it does. Then the calls' backwards and optimizer
steps, on the kernels and the reference path (out_of_range_backward_cases.py): a call that met a bad id
changes no parameter through any path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("out_of_range_cases.py")
BACKWARD_SCRIPT = Path(__file__).with_name("out_of_range_backward_cases.py")


def _run(script: Path) -> dict[str, str]:
    env = {**os.environ, "TRITON_EMBED_POISON": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=script.parent)
    assert proc.returncode == 0, f"the process died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    return _run(SCRIPT)


@pytest.fixture(scope="module")
def backward_results() -> dict[str, str]:
    return _run(BACKWARD_SCRIPT)


def test_every_case_ran(results):
    paths = {"gather", "renorm", "dense_backward", "sparse_backward", "stable_forward", "stable_backward"}
    assert {key.split("/")[0] for key in results} == paths
    assert len(results) == len(paths) * 3 * 3


def test_every_case_is_right(results):
    failed = {key: why for key, why in results.items() if why != "ok"}
    assert not failed, "\n\n".join(f"{key}: {why}" for key, why in failed.items())


def test_every_backward_case_ran(backward_results):
    paths = {"dense", "max_norm", "sparse", "sparse_before_the_host_sees_the_report", "stable_per_id",
             "stable_per_token", "stable_sparse", "stable_frozen_table", "layer_norm_after_lookup", "quantized_stable"}
    assert {key.split("/")[0] for key in backward_results} == paths
    assert len(backward_results) == len(paths) * 2 * 3 * 3  # paths x (kernels, reference) x modes x bad ids


def test_a_bad_call_changes_no_parameter(backward_results):
    failed = {key: why for key, why in backward_results.items() if why != "ok"}
    assert not failed, "\n\n".join(f"{key}: {why}" for key, why in list(failed.items())[:12])
