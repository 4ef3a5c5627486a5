"""``python -m triton_embed.bench --validate``: validate.json written stage by stage (and left consistent when
a stage fails or the process gets SIGTERM), and the whole command end to end (``--quick``: the CPU rehearsal
at its smallest; CI runs the full one)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from triton_embed.bench import report, summary, validate
from triton_embed.bench.timing import Interrupted, raise_on_term

HAS_CUDA = torch.cuda.is_available()


def _stages(log: list[str], fail_at: str | None = None, interrupt_at: str | None = None):
    def stage(name: str):
        def run() -> dict:
            log.append(name)
            if name == interrupt_at:
                os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends: the handler raises Interrupted
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            return {"ok": True, "value": name}
        return run

    return [(name, stage(name)) for name in validate.STAGES]


def test_each_stage_is_written_as_it_finishes_and_a_sigterm_keeps_them(tmp_path: Path) -> None:
    record = validate.Record(tmp_path / "validate.json", ["cmd"])
    assert json.loads(record.path.read_text())["stages"] == {}
    log: list[str] = []
    restore = raise_on_term()
    try:
        with pytest.raises(Interrupted):
            validate.run_stages(_stages(log, interrupt_at="tuning"), record, say=lambda text: None)
    finally:
        restore()
    data = json.loads(record.path.read_text())
    assert log == ["environment", "sweep", "tuning"]
    assert list(data["stages"]) == ["environment", "sweep", "tuning"]
    assert data["stages"]["sweep"]["value"] == "sweep" and data["stages"]["sweep"]["status"] == "done"
    assert data["stages"]["tuning"]["status"] == "interrupted"
    assert data["complete"] is False and data["ok"] is False and data["schema"] == validate.SCHEMA
    assert not list(tmp_path.glob(".validate.json-*"))  # atomic writes leave no temporary file


def test_a_failing_stage_fails_the_run_but_not_the_later_stages(tmp_path: Path) -> None:
    record = validate.Record(tmp_path / "validate.json", ["cmd"])
    log: list[str] = []
    validate.run_stages(_stages(log, fail_at="sweep"), record, say=lambda text: None)
    data = json.loads(record.path.read_text())
    assert log == list(validate.STAGES) and list(data["stages"]) == list(validate.STAGES)
    assert data["stages"]["sweep"]["status"] == "error" and "sweep broke" in data["stages"]["sweep"]["error"]
    assert data["complete"] is True and data["ok"] is False


def test_validate_end_to_end(tmp_path: Path) -> None:
    """The prepared command as a user runs it (a subprocess without TRITON_INTERPRET: the re-exec path)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_EMBED_BENCH_REEXEC")}
    env["TRITON_EMBED_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "triton_embed.bench", "--validate", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for stage in validate.STAGES:
        assert f"== {stage}" in proc.stdout
    assert "Performance targets" in proc.stdout and "validate: ok" in proc.stdout

    data = json.loads((out / "validate.json").read_text())
    assert data["complete"] is True and data["ok"] is True and list(data["stages"]) == list(validate.STAGES)
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["index_check"] == "deferred"
    sweep = data["stages"]["sweep"]
    names = [c["name"] for c in sweep["checks"]]
    for prefix in ("embedding/", "renorm/", "stable/", "layer_norm/", "big_table", "out_of_range/gather/deferred",
                   "out_of_range/gather/sync", "deterministic/embedding", "cuda_graph/"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert all(set(c) == {"name", "ok", "max_err", "tolerance", "seconds", "note"} for c in sweep["checks"])
    assert sweep["failed"] == [] and all(c["ok"] is not False for c in sweep["checks"])
    if not HAS_CUDA:
        assert next(c for c in sweep["checks"] if c["name"].startswith("cuda_graph"))["ok"] is None
    bench = data["stages"]["benchmark"]
    assert bench["cases_done"] == bench["cases"] and bench["skipped"] == []
    assert {r["op"] for r in bench["rows"]} == {"embedding", "stable", "layer_norm", "renorm"}
    assert bench["configs"] and "time budget" in bench["methodology"]["text"].lower()
    targets = data["stages"]["summary"]["targets"]
    assert [t["key"] for t in targets] == [t.key for t in summary.TARGETS]
    results = json.loads((out / "results.json").read_text())
    assert tuple(results) == report.JSON_KEYS and results["ok"] is True
    assert (out / "results.csv").exists() and "## Performance targets" in (out / "report.md").read_text()
