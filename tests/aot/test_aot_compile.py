"""Every Triton kernel compiles ahead of time for all six target GPUs, without a GPU, and its compiled code
meets the rules: options the backend knows, no spills, 128-bit row accesses, only documented approximate
math, no FMA, few barriers, enough resident warps, config-independent sums.

``tests/aot/aot_compile.py`` does the work in a subprocess started without ``TRITON_INTERPRET`` (``conftest.py``
sets it on machines without a GPU, and interpreted kernels cannot be compiled): ``triton.compile`` with an
explicit ``GPUTarget`` for sm_80, sm_90a, sm_100a, sm_120a, gfx942 and gfx950 (configs sampled: see its
docstring), reading PTX and ``ptxas -v`` on NVIDIA, AMDGCN and LLVM IR on AMD. The tests here read its JSON
report, one rule each (``aot_rules.py``); ``test_aot_selftest.py`` shows each rule failing on a kernel built to
fail it. ``pytest -s`` shows the per-kernel summary and the full table.

Run alone: ``python -m pytest tests/aot/test_aot_compile.py -q -s`` (or ``python tests/aot/aot_compile.py --table``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import aot_read  # noqa: E402
import aot_rules  # noqa: E402
from aot_run import run_driver  # noqa: E402
from aot_specs import TARGETS  # noqa: E402

#: Compiles for GPU targets on the host: nothing a GPU adds (the device run deselects it).
pytestmark = pytest.mark.host_only


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
    problems = [f"kernel {key} has no AOT spec in tests/aot/aot_specs.py" for key in report["missing_specs"]]
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
