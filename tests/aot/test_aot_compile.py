"""Every Triton kernel compiles ahead of time for all six target GPUs, without a GPU, and its compiled code
meets the rules: options the backend knows, no spills, 128-bit row accesses, only documented approximate
math, no FMA, few barriers, enough resident warps, config-independent sums.

``tests/aot/aot_compile.py`` does the work in a subprocess started without ``TRITON_INTERPRET`` (``conftest.py``
sets it on machines without a GPU, and interpreted kernels cannot be compiled): ``triton.compile`` with an
explicit ``GPUTarget`` for sm_80, sm_90a, sm_100a, sm_120a, gfx942 and gfx950 (configs sampled: see its
docstring), reading PTX and ``ptxas -v`` on NVIDIA, AMDGCN and LLVM IR on AMD. The tests here read its JSON
report, one rule each (``aot_rules.py``). Self-tests at the bottom show each rule failing on a kernel built
to fail it. ``pytest -s`` shows the per-kernel summary and the full table.

Run alone: ``python -m pytest tests/aot/test_aot_compile.py -q -s`` (or ``python tests/aot/aot_compile.py --table``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import triton
import triton.language as tl

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import aot_read  # noqa: E402
import aot_rules  # noqa: E402
from aot_specs import TARGETS, KernelSpec, variant  # noqa: E402

DRIVER_TIMEOUT_S = 1500
#: Compiles for GPU targets on the host: nothing a GPU adds (the device run deselects it).
pytestmark = pytest.mark.host_only


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


@pytest.fixture(scope="module")
def report() -> dict:
    # AOT_REPORT=path reads a report that ``aot_compile.py --json path`` wrote (to iterate on the rules).
    saved = os.environ.get("AOT_REPORT")
    result = json.loads(Path(saved).read_text()) if saved else run_driver()
    print(f"\nAOT compile with Triton {result['triton_version']}: {len(result['results'])} compiles for "
          f"{', '.join(result['targets'])} in {result['elapsed_s']} s on {result['workers']} processes "
          f"({result['compile_cpu_s']} CPU s compiling)")
    print(aot_rules.format_summary(result["results"]))
    return result


def _failed(report: dict, rule: str) -> list[str]:
    return report["failures"].get(rule, [])


def _assert_rule(report: dict, rule: str, what: str) -> None:
    problems = _failed(report, rule)
    assert not problems, f"{len(problems)} compiles break the {what} rule:\n" + "\n".join(problems[:25])


# --- the package's kernels -----------------------------------------------------------------------

def test_every_kernel_has_an_aot_spec(report):
    assert not report["import_errors"], f"kernel modules failed to import: {report['import_errors']}"
    assert report["discovered"], "no *_kernel JIT functions found in triton_embed.kernels"
    problems = [f"kernel {key} has no AOT spec in tests/aot_specs.py" for key in report["missing_specs"]]
    problems += [
        f"@triton.jit function {k['key']} is neither a *_kernel nor a _private helper: rename it (kernels end "
        "in _kernel and need an AOT spec; device helpers start with _)" for k in report["unclassified"]
    ]
    discovered = {k["key"] for k in report["discovered"]}
    problems += [f"AOT spec {key} names no kernel of the package" for key in report["spec_keys"]
                 if key not in discovered]
    problems += [f"AOT spec of {b['kernel']} is unusable: {b['error']}" for b in report["bad_specs"]]
    # The fused StableEmbedding forward must read its rows with 128-bit loads, like the plain gather.
    problems += [
        f"{k['key']} looks like the fused StableEmbedding forward: set vector_loads in its spec"
        for k in report["discovered"]
        if k["module"].endswith(".stable_embedding") and ("forward" in k["name"] or "fwd" in k["name"])
        and k["name"] not in report["needs_vector_loads"]
    ]
    assert not problems, "\n".join(problems)


def test_every_kernel_compiles_for_every_target_with_options_its_backend_knows(report):
    """Every case of every kernel on all six targets, each config somewhere; the launch options are checked
    against the backend's own options (a KeyError at launch on ROCm for ``maxnreg``, before)."""
    print()
    print(aot_rules.format_table(report["results"]))
    assert set(report["targets"]) == set(TARGETS)
    _assert_rule(report, "compile", "compiles")
    _assert_rule(report, "coverage", "coverage")
    from aot_specs import SPECS

    for spec in SPECS.values():
        cases = {spec.variant(c).label for c in spec.cases(0)}
        for target in TARGETS:
            done = {r["variant"] for r in report["results"] if r["kernel"] == spec.name and r["target"] == target}
            assert cases <= done, f"{spec.name} on {target}: cases not compiled: {sorted(cases - done)}"


def test_no_register_spills(report):
    """None on AMD; on NVIDIA none from Triton 3.7 on (32 B before), except a spill that only Triton 3.9's
    ``--regAllocOptLevel=2`` ptxas option makes (the same PTX assembles without spills otherwise) and up to
    16 B saved around a subroutine call (a float64 division's slow path)."""
    _assert_rule(report, "spills", "spill")


def test_rows_move_in_128bit_loads_and_stores(report):
    """The gather and the fused StableEmbedding forward read (and the gather writes) rows with 16-byte
    accesses (D % 16 == 0, unit column stride, 16-byte aligned pointers: the specialisation Triton's runtime
    gives a contiguous table)."""
    assert any(r["rules"]["vector_loads"] for r in report["results"]), "no kernel is checked for vector loads"
    _assert_rule(report, "vector loads", "128-bit load")
    _assert_rule(report, "vector stores", "128-bit store")


def test_compiled_numerics_follow_each_ops_policy(report):
    """No approximate square root, division, reciprocal, exp2 or log2 except the LayerNorm family's
    documented float32 rsqrt; no FMA anywhere (every launcher pins contraction off, and it reached the
    compiler)."""
    _assert_rule(report, "numerics", "approximate-math")
    _assert_rule(report, "fma", "FMA")


def test_barriers_and_occupancy(report):
    _assert_rule(report, "barriers", "barrier")
    _assert_rule(report, "occupancy", "occupancy")


def test_sums_compile_to_the_same_layout_under_every_config(report):
    """The LayerNorm family sums rows with tl.sum: its order follows the reduction's layout, which must be
    the same for every tuned config of a case (``tiles.py`` fixes the warps by D)."""
    swept = [r for r in report["results"] if r["ok"] and r["rules"]["same_sums"]]
    assert swept and any(r["reduce_layouts"] for r in swept), "no reduction layout was read"
    _assert_rule(report, "same sums", "same-sums")


RECORD_WRITERS = {"gather_rows_kernel", "claim_rows_kernel", "stable_embedding_fwd_kernel", "quantized_gather_kernel",
                  "quantized_stable_fwd_kernel", "error_probe_kernel"}


def test_the_error_record_is_claimed_and_published_atomically(report):
    """Every kernel that takes the error record writes it as kernels/errors.py says, in the compiled code: one
    64-bit compare-and-swap claims it, three exchanges write the fields, one release exchange publishes it,
    all at system scope (the host reads the record in pinned memory) and from one thread (one predicate),
    so that the release orders the fields before the COMPLETE state."""
    checked = [r for r in report["results"] if r["ok"] and "record_atomics" in r]
    assert {r["kernel"] for r in checked} == RECORD_WRITERS
    wrong = [r for r in checked if not _one_claim_and_publish(r["record_atomics"])]
    assert not wrong, "error record not written atomically:\n" + "\n".join(
        f"{aot_rules.describe(r)}: {r['record_atomics']}" for r in wrong[:20])


def _one_claim_and_publish(found: dict) -> bool:
    return (found["cas"], found["fields"], found["publish"], found["system_scope"], found["total"]) == (1, 3, 1, 5, 5) \
        and len(found["predicates"]) == 1


def test_record_atomics_reads_ptx():
    """The PTX reading behind the check above, on hand-written lines: plain stores are not a claim."""
    good = "\n".join([
        "@%p9 atom.global.relaxed.sys.cas.b64 %rd5, [ %rd31 + 0 ], %rd6, %rd7;",
        *["@%p9 atom.global.sys.relaxed.exch.b64 %rd21, [ %rd22 + 0 ], %rd23;"] * 3,
        "@%p9 atom.global.sys.release.exch.b64 %rd30, [ %rd31 + 0 ], %rd32;",
    ])
    assert _one_claim_and_publish(aot_read.record_atomics(good))
    plain = "@%p9 st.global.b64 [ %rd1 + 8 ], %rd2;\n@%p9 st.global.b64 [ %rd1 + 0 ], %rd3;"
    assert aot_read.record_atomics(plain)["total"] == 0
    gpu_scope = good.replace(".sys", ".gpu")
    assert aot_read.record_atomics(gpu_scope)["system_scope"] == 0
    two_threads = good.replace("@%p9 atom.global.sys.release", "@%p3 atom.global.sys.release")
    assert not _one_claim_and_publish(aot_read.record_atomics(two_threads))


# --- self-tests: the checks above can fail ------------------------------------------------------
# These kernels are compiled by the same driver (it imports this module in a process without
# TRITON_INTERPRET); they are not in triton_embed.kernels, so the package checks never see them.

@triton.jit
def selftest_broken_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """Adds a BLOCK vector to a 2*BLOCK one: nothing fails until the kernel is compiled (or run)."""
    x = tl.load(x_ptr + tl.arange(0, BLOCK))
    y = tl.load(x_ptr + tl.arange(0, 2 * BLOCK))
    tl.store(out_ptr + tl.arange(0, BLOCK), x + y)


@triton.jit
def selftest_spilling_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """One warp holds BLOCK floats live across a reduction: with BLOCK = 8192 that is 256 per thread,
    more than the 255 registers a thread can have (and one warp of 255 registers is low occupancy)."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, x / tl.sum(x * x, axis=0))


@triton.jit
def selftest_scalar_load_kernel(x_ptr, out_ptr, stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A ROWS x COLS tile at a runtime column stride: Triton cannot prove contiguity, so no 128-bit loads."""
    r = tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, COLS)[None, :]
    tl.store(out_ptr + r * COLS + c, tl.load(x_ptr + r * COLS + c * stride))


@triton.jit
def selftest_approx_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """``tl.sqrt`` is the hardware approximation (sqrt.approx / llvm.amdgcn.sqrt); the op allows none."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.sqrt(tl.load(x_ptr + offs)))


@triton.jit
def selftest_fma_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """x * x + 1: fused when the launch leaves contraction on."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, x * x + 1.0)


@triton.jit
def selftest_row_sum_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """A tl.sum over a row: its layout, hence its order, changes with num_warps."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr, tl.sum(tl.load(x_ptr + offs), axis=0))


@triton.jit
def selftest_unspecced_kernel(x_ptr):
    """Discovered (its name ends in _kernel) but given no spec: must be reported."""
    tl.store(x_ptr, 1.0)


@triton.jit
def selftest_public_helper(x):
    """Neither _private nor *_kernel: must be reported as unclassified."""
    return x


def _as_is(config: dict, case: dict, backend: str) -> dict:
    """A launcher that passes its config's options to every backend (``maxnreg`` included)."""
    return dict(config)


_FP32_IN_OUT = variant({"x_ptr": "*fp32", "out_ptr": "*fp32"})
_SELF = "test_aot_compile"
SELFTEST_SPECS = {
    spec.key: spec
    for spec in (
        KernelSpec(_SELF, "selftest_broken_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 64, "num_warps": 1, "num_stages": 1},)),
        KernelSpec(_SELF, "selftest_spilling_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 8192, "num_warps": 1, "num_stages": 1},), min_warps=16),
        KernelSpec(_SELF, "selftest_scalar_load_kernel", "selftest", ({},),
                   lambda case: variant({"x_ptr": "*fp32", "out_ptr": "*fp32", "stride": "i32"}, element="fp32"),
                   vector_loads=("ROWS", "COLS"), configs=({"ROWS": 8, "COLS": 128, "num_warps": 1, "num_stages": 1},)),
        KernelSpec(_SELF, "selftest_approx_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 256, "num_warps": 2, "num_stages": 1},)),
        KernelSpec(_SELF, "selftest_fma_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT, launch_config=_as_is,
                   configs=({"BLOCK": 256, "num_warps": 2, "num_stages": 1, "enable_fp_fusion": True},)),
        KernelSpec(_SELF, "selftest_row_sum_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT, same_sums=True,
                   max_barriers=0, launch_config=_as_is,
                   configs=({"BLOCK": 4096, "num_warps": 4, "num_stages": 1, "maxnreg": 128},
                            {"BLOCK": 4096, "num_warps": 16, "num_stages": 1, "maxnreg": 128})),
    )
}


@pytest.fixture(scope="module")
def selftest_report() -> dict:
    result = run_driver("--specs", "test_aot_compile:SELFTEST_SPECS", "--discover", "test_aot_compile",
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
    assert report["missing_specs"] == ["test_aot_compile.selftest_unspecced_kernel"], report["missing_specs"]
    assert [k["name"] for k in report["unclassified"]] == ["selftest_public_helper"], report["unclassified"]
