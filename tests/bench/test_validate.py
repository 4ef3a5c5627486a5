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
from triton_embed.bench.timing import Deadline, Interrupted, raise_on_term

HAS_CUDA = torch.cuda.is_available()


def _stages(log: list[str], fail_at: str | None = None, interrupt_at: str | None = None, slow_at: str | None = None,
            clock: list[float] | None = None):
    def stage(name: str):
        def run() -> dict:
            log.append(name)
            if name == interrupt_at:
                os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends: the handler raises Interrupted
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            if name == slow_at:
                clock[0] += 1000.0  # the stage overruns the whole budget
            if name == "summary" and interrupt_at is not None:
                os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM must not cut the summary short
            return {"ok": True, "value": name}
        return run

    return [validate.Stage(name, stage(name), always=name == "summary") for name in validate.STAGES]


def test_each_stage_is_written_as_it_finishes_and_a_sigterm_still_writes_the_summary(tmp_path: Path) -> None:
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
    assert log == ["environment", "compile", "sweep", "tuning", "summary"]  # no benchmark, but the summary
    assert list(data["stages"]) == list(validate.STAGES)
    assert data["stages"]["sweep"]["value"] == "sweep" and data["stages"]["sweep"]["status"] == "done"
    assert data["stages"]["tuning"]["status"] == "interrupted"
    assert data["stages"]["benchmark"]["status"] == "not run" and "SIGTERM" in data["stages"]["benchmark"]["note"]
    assert data["stages"]["summary"] == {"ok": True, "value": "summary", "status": "done",
                                         "seconds": data["stages"]["summary"]["seconds"]}
    assert data["complete"] is False and data["ok"] is False and data["schema"] == validate.SCHEMA
    assert data["finished"] is not None
    assert not list(tmp_path.glob(".validate.json-*"))  # atomic writes leave no temporary file


def test_a_failing_stage_fails_the_run_but_not_the_later_stages(tmp_path: Path) -> None:
    record = validate.Record(tmp_path / "validate.json", ["cmd"])
    log: list[str] = []
    validate.run_stages(_stages(log, fail_at="sweep"), record, say=lambda text: None)
    data = json.loads(record.path.read_text())
    assert log == list(validate.STAGES) and list(data["stages"]) == list(validate.STAGES)
    assert data["stages"]["sweep"]["status"] == "error" and "sweep broke" in data["stages"]["sweep"]["error"]
    assert data["stages"]["summary"]["status"] == "done"
    assert data["complete"] is False and data["ok"] is False


def test_an_overrun_budget_skips_the_later_stages_but_not_the_summary(tmp_path: Path) -> None:
    clock = [0.0]
    deadline = Deadline(100.0, clock=lambda: clock[0])
    record = validate.Record(tmp_path / "validate.json", ["cmd"])
    log: list[str] = []
    validate.run_stages(_stages(log, slow_at="sweep", clock=clock), record, say=lambda text: None, deadline=deadline)
    data = json.loads(record.path.read_text())
    assert log == ["environment", "compile", "sweep", "summary"]
    assert [data["stages"][n]["status"] for n in validate.STAGES] == ["done"] * 3 + ["skipped"] * 2 + ["done"]
    assert "time budget (100 s)" in data["stages"]["tuning"]["note"]
    assert data["complete"] is False and data["ok"] is False


def test_all_stages_done_is_complete(tmp_path: Path) -> None:
    record = validate.Record(tmp_path / "validate.json", ["cmd"])
    validate.run_stages(_stages([]), record, say=lambda text: None, deadline=Deadline(100.0))
    data = json.loads(record.path.read_text())
    assert data["complete"] is True and data["ok"] is True


@pytest.mark.host_only
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


@pytest.mark.host_only
def test_sigterm_during_the_benchmark_still_writes_the_summary(tmp_path: Path) -> None:
    """`timeout` sends SIGTERM when the budget is overrun: the run stops, and validate.json, report.md and the
    printed summary still carry the verdict on what was measured (exit 143, as a shell reports SIGTERM)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_EMBED_BENCH_REEXEC")}
    env.update(TRITON_EMBED_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "triton_embed.bench", "--validate", "--quick", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[1/"):  # the first benchmark case is done
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    stdout = "".join(lines) + rest
    assert proc.returncode == 143, stdout[-3000:]
    assert "interrupted (SIGTERM)" in stdout and "Performance targets" in stdout.split("stage benchmark interrupted")[1]
    data = json.loads((out / "validate.json").read_text())
    stages = data["stages"]
    assert [stages[n]["status"] for n in validate.STAGES] == ["done"] * 4 + ["interrupted", "done"]
    assert stages["benchmark"]["rows"] and stages["benchmark"]["cases_done"] >= 1
    assert [t["key"] for t in stages["summary"]["targets"]] == [t.key for t in summary.TARGETS]
    assert data["complete"] is False and data["ok"] is False and data["finished"]
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False and results["rows"]
    assert "## Performance targets" in (out / "report.md").read_text()


def test_a_killed_runs_record_gets_its_summary_afterwards(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to write the summary: the device run adds it from the rows validate.json holds
    (non-finite figures included, written as strings)."""
    from triton_embed.bench import verdict

    record = validate.Record(tmp_path / "validate.json", ["cmd"])
    record.data["environment"] = {"mode": "gpu"}
    record.stage("sweep", {"ok": True, "status": "done",
                           "checks": [{"name": "cuda_graph/training_step", "ok": True}]})
    row = {"op": "embedding", "pass": "forward", "vocab": 32000, "dim": 2048, "tokens": 16384, "dist": "zipf",
           "dtype": "bfloat16", "impl": "triton_embed", "pct_copy": 90.0, "speedup_vs_reference": float("inf")}
    record.stage("benchmark", {"ok": True, "status": "running", "rows": [row]})
    assert verdict.finish_file(record.path) is True
    data = json.loads(record.path.read_text())
    stages = data["stages"]
    assert stages["benchmark"]["status"] == "killed" and stages["summary"]["status"] == "done"
    assert "killed" in stages["summary"]["note"] and stages["summary"]["stages_not_done"] == ["benchmark"]
    targets = {t["key"]: t for t in stages["summary"]["targets"]}
    assert targets["embedding-forward-copy"]["status"] == "met" and targets["host-syncs"]["status"] == "met"
    assert targets["embedding-forward-eager"]["value"] == "inf"
    assert data["complete"] is False and data["ok"] is False
    assert verdict.finish_file(record.path) is False  # a finished summary is left alone


def test_no_tune_means_no_tuning_mid_case_either(tmp_path: Path, monkeypatch) -> None:
    """--no-tune benchmarks the cached or default configs, even where TRITON_EMBED_AUTOTUNE=1 would tune at
    first use; the setting is restored after the run."""
    from triton_embed.bench import cli

    monkeypatch.setenv("TRITON_EMBED_AUTOTUNE", "1")
    args = cli.parser().parse_args(["--validate", "--no-tune", "--out", str(tmp_path), "--time-budget", "100"])
    validation = validate.Validation(args, [], False, lambda text: None)
    assert validation.tuning()["keys"] == 0 and os.environ["TRITON_EMBED_AUTOTUNE"] == "0"
