"""The host-time benchmark (``bench/host_time.py``): its stub really launches nothing and undoes itself,
``measure`` returns every row with its ratio and verdict (timings are the benchmark's, never a test's: only
the shape of the result is checked here), and the rows reach the targets summary and the report."""
from __future__ import annotations

import torch
from triton.runtime import jit

import triton_embed
from triton_embed import functional
from triton_embed.bench import host_time, summary
from triton_embed.bench.timing import Deadline

ROW_KEYS = {"key", "section", "op", "shape", "ours_us", "peer", "peer_us", "ratio", "target", "met"}


def test_stubbed_launches_launch_nothing_and_undo_themselves():
    table = torch.randn(50, 8)
    ids = torch.tensor([3, 7, 3])
    kinds = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:
        pass
    before = [kind.__dict__.get("__getitem__") for kind in kinds]
    with host_time.stubbed_launches():
        assert triton_embed.runtime.dispatch.use_triton(table)  # CPU tensors take the kernels' path
        out = functional.embedding(ids, table)  # its launch a no-op: nothing written
        assert torch.isnan(out).all()  # the tests poison every kernel output
    assert [kind.__dict__.get("__getitem__") for kind in kinds] == before
    assert torch.equal(functional.embedding(ids, table), table[ids])


def test_measure_returns_every_row_and_restores_the_settings(monkeypatch):
    monkeypatch.setattr(host_time, "REPEATS", {key: (2, 2, 1) for key in host_time.REPEATS})
    monkeypatch.setattr(host_time, "MID", (300, 16, 64))  # small: only the result's shape is checked
    threads = torch.get_num_threads()
    triton_embed.set_backend("auto")
    result = host_time.measure("cpu", quick=True, bitsandbytes=False)
    assert torch.get_num_threads() == threads and triton_embed.get_backend() == "auto"
    assert triton_embed.runtime.dispatch._poison["enabled"]  # the test fixture's setting, back
    assert result["launches"] == "stubbed" and "no-op" in result["method"]
    assert any("bitsandbytes" in note for note in result["notes"])
    rows = result["rows"]
    assert [row["key"] for row in rows] == [t.key for t in host_time.TARGETS]
    for row, target in zip(rows, host_time.TARGETS):
        assert set(row) == ROW_KEYS
        assert row["ours_us"] > 0 and row["peer_us"] > 0 and row["ratio"] > 0
        assert row["target"] == target.bound and row["met"] == (row["ratio"] <= target.bound)
    assert rows[1]["peer"] == "reference (bitsandbytes' ops)"

    table = host_time.format_table(result)
    assert "host time (stubbed)" in table and "CPU path" in table
    assert host_time.csv_text(result).count("\n") == len(rows) + 1
    md = "\n".join(host_time.markdown(result))
    assert md.count("\n| ") == len(rows) + 1

    verdicts = {v["key"]: v for v in summary.evaluate([], gpu=False, host=result)}
    for row in rows:
        verdict = verdicts[row["key"]]
        assert verdict["value"] == row["ratio"] and verdict["status"] == ("met" if row["met"] else "missed")
    missing = {v["key"]: v for v in summary.evaluate([], gpu=False)}
    assert all(missing[row["key"]]["status"] == "not measured" for row in rows)


def test_a_spent_time_budget_measures_nothing():
    result = host_time.measure("cpu", deadline=Deadline(0), bitsandbytes=False)
    assert result["rows"] == []
    assert len([note for note in result["notes"] if "time budget" in note]) == len(host_time.TARGETS)
