"""Every Triton kernel and autotune config compiles ahead of time for sm_80 and sm_90, without a GPU.

``tests/aot_compile.py`` does the work in a subprocess started without ``TRITON_INTERPRET`` (``conftest.py``
sets it on machines without a GPU, and interpreted kernels cannot be compiled): ``triton.compile`` with an
explicit ``GPUTarget`` for each kernel x config x dtype variant x target, and ``ptxas -v`` (the wheel's) on
the generated PTX. The tests here read its JSON report: no kernel without a spec, no compile error, no
register spill, 128-bit loads where the spec demands them. Self-tests at the bottom show each check failing
on a kernel built to fail it. ``pytest -s`` shows the register / shared-memory table.

Run alone: ``python -m pytest tests/test_aot_compile.py -q -s`` (or ``python tests/aot_compile.py --table``).
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

import aot_compile  # noqa: E402
from aot_specs import TARGETS, KernelSpec, variant  # noqa: E402

DRIVER_TIMEOUT_S = 900


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


def describe(r: dict) -> str:
    return f"{r['kernel']} [{r.get('config_label', '?')}] [{r.get('variant', '?')}] {r['target']}"


@pytest.fixture(scope="module")
def report() -> dict:
    result = run_driver()
    print(f"\nAOT compile with Triton {result['triton_version']}: {len(result['results'])} compiles in "
          f"{result['elapsed_s']} s on {result['workers']} processes ({result['compile_cpu_s']} CPU s compiling)")
    print(aot_compile.format_summary(result["results"]))
    return result


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
        f"{k['key']} looks like the fused StableEmbedding forward: set needs_vector_loads=True in its spec"
        for k in report["discovered"]
        if k["module"].endswith(".stable_embedding") and ("forward" in k["name"] or "fwd" in k["name"])
        and k["name"] not in report["needs_vector_loads"]
    ]
    assert not problems, "\n".join(problems)


def test_every_kernel_and_config_compiles_for_sm80_and_sm90(report):
    print()
    print(aot_compile.format_table(report["results"]))
    failed = [r for r in report["results"] if not r["ok"]]
    assert not failed, f"{len(failed)} AOT compiles failed:\n" + "\n".join(
        f"{describe(r)}: {r['error']}" for r in failed[:20])
    targets = {aot_compile.arch_name(c) for c in TARGETS}
    for key in report["spec_keys"]:
        name = key.rsplit(".", 1)[1]
        compiled_for = {r["target"] for r in report["results"] if r["kernel"] == name}
        assert compiled_for == targets, f"{name} compiled for {compiled_for}, expected {targets}"


def test_no_register_spills(report):
    """No spill at all on Triton 3.7+; on older Triton a few bytes (``aot_compile.OLD_TRITON_SPILL_BYTES``)."""
    allowance = aot_compile.spill_allowance()
    spills = aot_compile.spilling(report["results"], allowance)
    assert not spills, f"register spills above {allowance} B:\n" + "\n".join(
        f"{describe(r)}: {r['registers']} registers, {r['spill_stores']} B spill stores, "
        f"{r['spill_loads']} B spill loads" for r in spills)


def test_forward_kernels_use_128bit_loads(report):
    """The gather (and the fused StableEmbedding forward) read rows with 16-byte loads (D % 16 == 0, unit
    column stride, 16-byte aligned pointers: the specialisation Triton's runtime gives a contiguous table)."""
    checked = [r for r in report["results"] if r["ok"] and r.get("needs_vector_loads")]
    assert checked, "no kernel is flagged needs_vector_loads"
    scalar = [r for r in checked if r["vector_loads"] < r["vector_loads_expected"]]
    assert not scalar, "kernels without (enough) 128-bit global loads:\n" + "\n".join(
        f"{describe(r)}: {r['vector_loads']} 128-bit loads, expected >= {r['vector_loads_expected']}"
        for r in scalar)


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
        f"{describe(r)}: {r['record_atomics']}" for r in wrong[:20])


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
    assert _one_claim_and_publish(aot_compile.record_atomics(good))
    plain = "@%p9 st.global.b64 [ %rd1 + 8 ], %rd2;\n@%p9 st.global.b64 [ %rd1 + 0 ], %rd3;"
    assert aot_compile.record_atomics(plain)["total"] == 0
    gpu_scope = good.replace(".sys", ".gpu")
    assert aot_compile.record_atomics(gpu_scope)["system_scope"] == 0
    two_threads = good.replace("@%p9 atom.global.sys.release", "@%p3 atom.global.sys.release")
    assert not _one_claim_and_publish(aot_compile.record_atomics(two_threads))


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
    more than the 255 registers a thread can have."""
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
def selftest_unspecced_kernel(x_ptr):
    """Discovered (its name ends in _kernel) but given no spec: must be reported."""
    tl.store(x_ptr, 1.0)


@triton.jit
def selftest_public_helper(x):
    """Neither _private nor *_kernel: must be reported as unclassified."""
    return x


_FP32_IN_OUT = variant({"x_ptr": "*fp32", "out_ptr": "*fp32"})
SELFTEST_SPECS = {
    spec.key: spec
    for spec in (
        KernelSpec("test_aot_compile", "selftest_broken_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 64, "num_warps": 1, "num_stages": 1},)),
        KernelSpec("test_aot_compile", "selftest_spilling_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 8192, "num_warps": 1, "num_stages": 1},)),
        KernelSpec("test_aot_compile", "selftest_scalar_load_kernel", "selftest", ({},),
                   lambda case: variant({"x_ptr": "*fp32", "out_ptr": "*fp32", "stride": "i32"}, element="fp32"),
                   needs_vector_loads=True, vector_tile=("ROWS", "COLS"),
                   configs=({"ROWS": 8, "COLS": 128, "num_warps": 1, "num_stages": 1},)),
    )
}


@pytest.fixture(scope="module")
def selftest_report() -> dict:
    result = run_driver("--specs", "test_aot_compile:SELFTEST_SPECS", "--discover", "test_aot_compile",
                        "--targets", "80", "--jobs", "1")
    return {"report": result, "by_kernel": {r["kernel"]: r for r in result["results"]}}


def test_selftest_compile_error_is_reported(selftest_report):
    r = selftest_report["by_kernel"]["selftest_broken_kernel"]
    assert not r["ok"] and r["error"], r
    assert "shape" in r["error"].lower() or "incompatible" in r["error"].lower(), r["error"]


def test_spill_allowance_applies_only_to_old_triton():
    assert aot_compile.spill_allowance("3.9.0") == aot_compile.spill_allowance("3.7.1+git") == 0
    assert aot_compile.spill_allowance("3.6.0") == aot_compile.OLD_TRITON_SPILL_BYTES
    fake = [{"ok": True, "spill_stores": 24, "spill_loads": 40}, {"ok": True, "spill_stores": 0, "spill_loads": 0}]
    assert aot_compile.spilling(fake, 32) == fake[:1] and aot_compile.spilling(fake, 64) == []


def test_selftest_spill_is_reported(selftest_report):
    r = selftest_report["by_kernel"]["selftest_spilling_kernel"]
    assert r["ok"], r["error"]
    assert r["spill_stores"] > 0 and r["spill_loads"] > 0, r
    assert aot_compile.spilling([r], aot_compile.OLD_TRITON_SPILL_BYTES) == [r], "the old-Triton allowance hides it"


def test_selftest_missing_vector_loads_are_reported(selftest_report):
    r = selftest_report["by_kernel"]["selftest_scalar_load_kernel"]
    assert r["ok"], r["error"]
    assert r["vector_loads"] < r["vector_loads_expected"], r


def test_selftest_kernel_without_spec_is_reported(selftest_report):
    report = selftest_report["report"]
    assert report["missing_specs"] == ["test_aot_compile.selftest_unspecced_kernel"], report["missing_specs"]
    assert [k["name"] for k in report["unclassified"]] == ["selftest_public_helper"], report["unclassified"]
