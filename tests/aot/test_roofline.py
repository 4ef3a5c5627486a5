"""The static roofline (``bench/roofline.py``, data from ``tests/aot/aot_roofline.py``): the saved data covers
every kernel at the LM shapes and matches what this Triton compiles, its SASS reading finds the right
region, and every kernel it calls issue-bound on an H100 is explained in the README's note."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import aot_roofline  # noqa: E402
from triton_embed.bench import roofline  # noqa: E402
from triton_embed.bench.roofline_data import ROWS  # noqa: E402

#: Reads and recompiles for GPU targets on the host: nothing a GPU adds (the device run deselects it).
pytestmark = pytest.mark.host_only

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
.L_x_1:
        /*0020*/                   LDG.E.128 R8, desc[UR4][R2.64] ;
        /*0030*/                   FADD R4, R4, R8 ;
.L_x_2:
        /*0040*/                   LDG.E.128 R12, desc[UR4][R2.64] ;
        /*0050*/                   LDG.E.128 R16, desc[UR4][R2.64] ;
        /*0060*/                   FADD R4, R4, R12 ;
        /*0070*/               @P0 BRA `(.L_x_2) ;
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0090*/               @P1 BRA `(.L_x_1) ;
        /*00a0*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*00b0*/                   EXIT ;
.L_x_3:
        /*00c0*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;
        /*00d0*/                   BRA `(.L_x_1) ;
.L_x_4:
        /*00e0*/                   BRA `(.L_x_4) ;
"""


def test_hot_region_reads_loops_and_stops_at_the_exit():
    assert aot_roofline.hot_region(SASS, "program") == (12, 4, "program")  # out-of-line code after EXIT left out
    assert aot_roofline.hot_region(SASS, "loop") == (4, 2, "row loop")  # the innermost loop, most loads
    assert aot_roofline.hot_region(SASS, "runs") == (8, 3, "loop over runs")  # the loop with the barrier
    assert aot_roofline.hot_region(SASS, "norm pass")[0] == 12  # no loop stores: nothing left out
    storing = SASS.replace("FADD R4, R4, R12", "STG.E.128 desc[UR4][R2.64], R4")
    assert aot_roofline.hot_region(storing, "norm pass")[0] == 4  # both loops store (the inner one is in both)


def test_the_error_records_block_is_not_counted():
    """A block behind a forward branch that claims the record (a compare-and-swap) runs only for a bad id."""
    guarded = SASS.replace("        /*0000*/                   MOV R1, c[0x0][0x28] ;\n", """\
        /*0000*/               @!P4 BRA `(.L_x_9) ;
        /*0004*/                   ATOMG.E.CAS.64.STRONG.SYS PT, R28, [R26], R28, R30 ;
        /*0008*/                   ATOMG.E.EXCH.64.STRONG.SYS PT, RZ, desc[UR8][R26.64], R28 ;
.L_x_9:
""")
    assert aot_roofline.hot_region(guarded, "program") == (12, 4, "program")  # the branch, not the block


def test_saved_data_covers_every_kernel_at_the_lm_shapes():
    expected = {(job[0].rsplit(".", 1)[1], job[1], job[3], job[2]) for job in aot_roofline.jobs()}
    saved = {(r["kernel"], r["dtype"], r["dim"], r["target"]) for r in ROWS}
    assert expected == saved, (expected - saved, saved - expected)
    assert not [r for r in ROWS if "error" in r]
    from aot_specs import SPECS

    covered = {r["kernel"] for r in ROWS}
    assert {s.name for s in SPECS.values()} - covered == {"error_probe_kernel"}


def test_every_kernel_issue_bound_on_an_h100_is_explained():
    flagged = {r["kernel"] for r in roofline.issue_bound(ROWS)}
    assert flagged == set(roofline.REMAINING), "update roofline.REMAINING (the README's note) to the data"
    note = roofline.remaining_note(ROWS)
    assert all(kernel in note for kernel in flagged)


def test_model_verdicts():
    h100 = roofline.MACHINES["H100"]
    row = {"instructions": 100, "bytes": 1000, "bytes_loaded": 4096, "occupancy": {"ctas": 8}}
    assert roofline.verdict(row, h100) == "memory"
    assert roofline.verdict({**row, "instructions": 400}, h100) == "issue"  # 0.4 > 0.277 per byte
    assert roofline.verdict({**row, "occupancy": {"ctas": 1}}, h100) == "latency"  # 4 KiB in flight
    assert 0.27 < h100.balance() < 0.28 and 0.14 < roofline.MACHINES["B200"].balance() < 0.15


def test_saved_data_matches_what_this_triton_compiles():
    """D = 4096 on sm_90a recompiled: the same Triton must give the same instructions, bytes and registers."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(TESTS_DIR / "aot_roofline.py"), "--check"], env=env,
                          cwd=TESTS_DIR.parent, capture_output=True, text=True, timeout=900)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
