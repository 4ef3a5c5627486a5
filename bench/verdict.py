"""The verdict of a ``--validate`` run: the summary stage's record (the performance targets met, missed or not
measured, and which stages did not finish), also for a validate.json whose process was killed before its
summary stage could run (``python -m triton_embed.bench.verdict validate.json``: the device run does this
when the run ignored SIGTERM and had to be killed)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import files
from .summary import evaluate, format_summary


def stage_record(rows: list[dict[str, Any]], gpu: bool, host_syncs: int | None, stages: dict[str, dict[str, Any]]
                 ) -> dict[str, Any]:
    """The summary stage's record: every target's verdict, the counts, and the stages that did not finish.

    >>> record = stage_record([], False, None, {"sweep": {"status": "interrupted"}})
    >>> record["not measured"], record["stages_not_done"]
    (22, ['sweep'])
    """
    verdicts = evaluate(rows, gpu, host_syncs)
    counts = {s: sum(v["status"] == s for v in verdicts) for s in ("met", "missed", "not measured")}
    not_done = [name for name, stage in stages.items() if name != "summary" and stage.get("status") != "done"]
    return {"ok": True, "targets": verdicts, **counts, "stages_not_done": not_done}


def host_syncs_of(sweep: dict[str, Any]) -> int | None:
    """0 when the sweep's CUDA-graph capture of a training step matched, 1 when it failed, None when it did not
    run (the summary's host-sync target).

    >>> host_syncs_of({"checks": [{"name": "cuda_graph/training_step", "ok": True}]})
    0
    """
    graph = next((c for c in sweep.get("checks", ()) if c["name"].startswith("cuda_graph")), None)
    if graph is None or graph["ok"] is None:
        return None
    return 0 if graph["ok"] else 1


def _loose(value: Any) -> Any:
    """The inverse of :func:`files.strict` for figures: "nan"/"inf"/"-inf" back to floats.

    >>> _loose({"a": "inf", "b": ["nan", "x"]})["a"]
    inf
    """
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {key: _loose(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_loose(item) for item in value]
    return value


def finish_file(path: Path) -> bool:
    """Add the summary stage to a validate.json that lacks a finished one (its run was killed): the verdict on
    the rows it holds, marked as written afterwards; the run stays incomplete and not ok. False when there was
    nothing to do."""
    data = json.loads(path.read_text())
    stages = data.setdefault("stages", {})
    if stages.get("summary", {}).get("status") == "done":
        return False
    rows = _loose(stages.get("benchmark", {}).get("rows") or [])
    gpu = data.get("environment", {}).get("mode") == "gpu"
    record = stage_record(rows, gpu, host_syncs_of(stages.get("sweep", {})), stages)
    record.update(status="done", seconds=0.0,
                  note="written after the run was killed: the verdict on the rows validate.json held")
    for stage in stages.values():
        if stage.get("status") == "running":
            stage["status"] = "killed"
            stage["ok"] = False
    stages["summary"] = record
    data.update(complete=False, ok=False)
    files.write_json(path, data)
    print(format_summary(record["targets"]))
    return True


if __name__ == "__main__":  # pragma: no cover - run by the device run as a subprocess
    for name in sys.argv[1:]:
        finish_file(Path(name))
