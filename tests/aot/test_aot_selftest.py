"""The ahead-of-time check's rules can fail: each self-test compiles a kernel built to break one rule
(``aot_selftest_kernels.py``) and finds it reported."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import aot_rules  # noqa: E402
from aot_run import run_driver  # noqa: E402

#: Compiles for GPU targets on the host: nothing a GPU adds (the device run deselects it).
pytestmark = pytest.mark.host_only


@pytest.fixture(scope="module")
def selftest_report() -> dict:
    result = run_driver("--specs", "aot_selftest_kernels:SELFTEST_SPECS", "--discover", "aot_selftest_kernels",
                        "--targets", "90,gfx942", "--jobs", "1")
    return {"report": result, "failures": result["failures"],
            "by_kernel": {(r["kernel"], r["target"]): r for r in result["results"]}}


def _flagged(selftest_report, rule: str, kernel: str) -> list[str]:
    return [p for p in selftest_report["failures"].get(rule, []) if p.startswith(kernel + " ")]


def test_selftest_compile_error_is_reported(selftest_report):
    r = selftest_report["by_kernel"][("selftest_broken_kernel", "sm_90a")]
    assert not r["ok"] and r["error"], r
    assert "shape" in r["error"].lower() or "incompatible" in r["error"].lower(), r["error"]


def test_spill_allowance_applies_only_where_a_compiler_leaves_spills():
    assert aot_rules.spill_allowance("3.7.1+git") == aot_rules.spill_allowance("3.9.0") == 0
    assert aot_rules.spill_allowance("3.6.0") == aot_rules.OLD_TRITON_SPILL_BYTES
    assert aot_rules.spill_allowance("3.6.0", backend="hip") == 0
    fake = [{"ok": True, "spill_stores": 24, "spill_loads": 40}, {"ok": True, "spill_stores": 0, "spill_loads": 0}]
    assert aot_rules.spilling(fake, 32) == fake[:1] and aot_rules.spilling(fake, 64) == []
    compiled = {"kernel": "k", "target": "sm_90a", "backend": "cuda", "registers": 48, "spill_stores": 16,
                "spill_loads": 24, "rules": {"approx": [], "max_barriers": None, "min_warps": 0, "vector_loads": False,
                                             "vector_stores": False, "pins_fp_fusion": False}, "approx": {},
                "fp_fusion": False, "fma": 0, "barriers": 0, "occupancy": {"warps": 8}}
    assert "spills" in aot_rules._per_compile(compiled, "3.9.0")
    assert "spills" in aot_rules._per_compile({**compiled, "spills_without_reg_alloc_option": 8}, "3.9.0")
    assert "spills" not in aot_rules._per_compile({**compiled, "spills_without_reg_alloc_option": 0}, "3.9.0")
    calls = {**compiled, "spill_stores": 16, "spill_loads": 16, "subroutine_calls": 8}
    assert "spills" not in aot_rules._per_compile(calls, "3.9.0")
    assert "spills" in aot_rules._per_compile({**calls, "spill_loads": 24}, "3.9.0")


def test_selftest_spill_and_low_occupancy_are_reported(selftest_report):
    r = selftest_report["by_kernel"][("selftest_spilling_kernel", "sm_90a")]
    assert r["ok"], r["error"]
    assert r["spill_stores"] > 0 and r["spill_loads"] > 0, r
    assert aot_rules.spilling([r], aot_rules.OLD_TRITON_SPILL_BYTES) == [r], "the old-Triton allowance hides it"
    assert _flagged(selftest_report, "spills", "selftest_spilling_kernel")
    assert _flagged(selftest_report, "occupancy", "selftest_spilling_kernel"), r["occupancy"]


def test_selftest_missing_vector_loads_are_reported(selftest_report):
    r = selftest_report["by_kernel"][("selftest_scalar_load_kernel", "sm_90a")]
    assert r["ok"], r["error"]
    assert r["vector_loads"] < r["vector_loads_expected"], r
    assert len(_flagged(selftest_report, "vector loads", "selftest_scalar_load_kernel")) == 2


def test_selftest_approximate_math_is_reported_on_both_backends(selftest_report):
    flagged = _flagged(selftest_report, "numerics", "selftest_approx_kernel")
    assert len(flagged) == 2 and all("sqrt" in p for p in flagged), flagged


def test_selftest_fma_contraction_is_reported(selftest_report):
    r = selftest_report["by_kernel"][("selftest_fma_kernel", "sm_90a")]
    assert r["fp_fusion"] and r["fma"] > 0, r
    assert len(_flagged(selftest_report, "fma", "selftest_fma_kernel")) == 2


def test_selftest_an_option_hip_does_not_know_fails_the_compile(selftest_report):
    """``maxnreg`` passed to a ROCm launch: Triton's runtime raises KeyError; the check reports it."""
    assert selftest_report["by_kernel"][("selftest_row_sum_kernel", "sm_90a")]["ok"]
    hip = [r for r in selftest_report["report"]["results"]
           if r["kernel"] == "selftest_row_sum_kernel" and r["target"] == "gfx942"]
    assert hip and all(not r["ok"] and "maxnreg" in r["error"] and "KeyError" in r["error"] for r in hip), hip


def test_selftest_barriers_and_config_dependent_sums_are_reported(selftest_report):
    assert _flagged(selftest_report, "barriers", "selftest_row_sum_kernel")
    flagged = _flagged(selftest_report, "same sums", "selftest_row_sum_kernel")
    assert flagged and "wpc=4" in flagged[0] and "wpc=16" in flagged[0], flagged


def test_selftest_kernel_without_spec_is_reported(selftest_report):
    report = selftest_report["report"]
    assert report["missing_specs"] == ["aot_selftest_kernels.selftest_unspecced_kernel"], report["missing_specs"]
    assert [k["name"] for k in report["unclassified"]] == ["selftest_public_helper"], report["unclassified"]
