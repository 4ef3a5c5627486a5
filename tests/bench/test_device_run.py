"""The one GPU command (bench/device/run.py): each part time-boxed (a polite part stops at its signal, a deaf
one is killed, with what it left running), the record written after every part and on SIGTERM, the budget
shared so that a hung part cannot eat the later parts' floors, at most 8 plain files, and the test selection
it runs on a GPU."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from triton_embed.bench.device import parts as device_parts
from triton_embed.bench.device import run as device_run

REPO = Path(__file__).resolve().parents[2]


def _python(code: str):
    return lambda ctx, limit: [sys.executable, "-c", textwrap.dedent(code)]


def _part(name: str, code: str, limit: float, **kwargs) -> device_parts.Part:
    return device_parts.Part(name, _python(code), {"cpu": limit, "gpu": limit}, floor_s=1.0, grace_s=1.5, **kwargs)


POLITE = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: (print("writing what I have", flush=True), sys.exit(0)))
    time.sleep(60)
"""
DEAF = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("not listening", flush=True)
    time.sleep(60)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a killed process whose parent is gone may stay a zombie: not running)."""
    for _ in range(20):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def _strict(path: Path):
    return json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))


def test_each_part_is_time_boxed_and_recorded(tmp_path: Path) -> None:
    marker = tmp_path / "orphan.pid"
    orphan = f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(marker)!r}, "w").write(str(child.pid))
    """
    todo = [_part("quick", "print('hello')", 10), _part("fails", "import sys; sys.exit(3)", 10),
            _part("polite", POLITE, 3), _part("deaf", DEAF, 3), _part("leaves-a-child", orphan, 10)]
    out = tmp_path / "out"
    out.mkdir()
    start = time.monotonic()
    record = device_run.run(out, todo, mode="cpu", budget=60, say=lambda text: None)
    assert time.monotonic() - start < 30
    parts = {p["name"]: p for p in _strict(out / "device-run.json")["parts"]}
    assert record["complete"] is True and list(parts) == [p.name for p in todo]
    assert parts["quick"]["status"] == "ok" and parts["fails"]["status"] == "failed" and parts["fails"]["exit_code"] == 3
    assert parts["polite"]["status"] == "timed out" and parts["polite"]["exit_code"] == 0
    assert parts["deaf"]["status"] == "killed" and parts["deaf"]["exit_code"] == -signal.SIGKILL
    assert parts["deaf"]["seconds"] <= 3.0 + 1.0
    log = (out / "device-run.log").read_text()
    assert "hello" in log and "writing what I have" in log and "not listening" in log
    assert not _running(int(marker.read_text()))  # what a part leaves running goes with it
    assert record["files"] == ["device-run.json", "device-run.log"] and record["file_problems"] == []


def test_a_part_gets_what_is_left_after_the_later_parts_floors(tmp_path: Path) -> None:
    todo = [_part("hangs", DEAF, 100), _part("later", "print('ran')", 5), _part("last", "print('ran')", 5)]
    record = device_run.run(tmp_path, todo, mode="cpu", budget=12, say=lambda text: None)
    parts = {p["name"]: p for p in record["parts"]}
    assert parts["hangs"]["limit_s"] == pytest.approx(6.0, abs=0.2)  # 12 s less two (1 s floor + 2 s slack)
    assert parts["hangs"]["status"] == "killed"
    assert parts["later"]["status"] == "ok" and parts["last"]["status"] == "ok"
    assert device_run.limit_for(0, [_part("a", "", 50), _part("b", "", 50)], "cpu", 20.0) == 17.0
    tight = device_run.run(tmp_path, todo[1:], mode="cpu", budget=2.5, say=lambda text: None)
    assert [p["status"] for p in tight["parts"]] == ["not run", "ok"] and "budget" in tight["parts"][0]["note"]


def test_sigterm_to_the_run_stops_the_part_and_keeps_the_record(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from triton_embed.bench.device import parts as device_parts, run as device_run
        slow = device_parts.Part("slow", lambda c, l: [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                 {{"cpu": 50.0}}, floor_s=1.0, grace_s=2.0)
        after = device_parts.Part("after", lambda c, l: [sys.executable, "-c", "print('ran')"], {{"cpu": 5.0}}, floor_s=1.0)
        device_run.run(Path({str(tmp_path)!r}), [slow, after], mode="cpu", budget=60, say=lambda t: print(t, flush=True))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for line in proc.stdout:
            if line.startswith("== slow"):
                time.sleep(1.0)
                proc.send_signal(signal.SIGTERM)
                break
        proc.wait(timeout=30)
    finally:
        proc.kill()
    data = _strict(tmp_path / "device-run.json")
    assert [p["name"] for p in data["parts"]] == ["slow"] and data["parts"][0]["status"] == "stopped"
    assert data["complete"] is False and "SIGTERM" in data["note"] and data["finished"]


def test_file_problems_are_what_the_lent_machine_would_not_bring_back(tmp_path: Path) -> None:
    for n in range(9):
        (tmp_path / f"f{n}.txt").write_text("x")
    (tmp_path / "a b.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "file").write_text("x")
    problems = device_run.file_problems(tmp_path)
    assert problems[0] == "11 files (at most 8)"
    assert any("a b.txt" in p for p in problems) and any("more than two folders down" in p for p in problems)


def test_the_parts_can_write_at_most_eight_plain_files() -> None:
    files = {device_parts.RECORD, device_parts.LOG, *device_parts.VALIDATE_FILES, "tuning-cost.json",
             "host-time.json"}
    files |= {part.output for part in device_parts.PARTS}
    assert len(files) <= device_parts.MAX_FILES and all(device_parts.NAME_OK.match(f) for f in files)
    assert [p.name for p in device_parts.PARTS][:2] == ["install", "environment"]
    gpu_limits = sum(p.limit_s["gpu"] for p in device_parts.PARTS)
    assert sum(p.floor_s for p in device_parts.PARTS) < device_parts.BUDGET_S["gpu"] < 600 - 60
    assert gpu_limits <= device_parts.BUDGET_S["gpu"] + 60  # trimmed by the budget, never by much


def test_on_a_gpu_the_tests_run_natively_without_x_and_without_the_host_only_ones(tmp_path: Path) -> None:
    ctx = device_parts.Context(out=tmp_path, work=tmp_path, mode="gpu")
    argv = device_parts.tests_argv(ctx, 120.0)
    assert argv[1:4] == ["-m", "pytest", "-p"] and "-x" not in argv
    assert argv[argv.index("-m", 2) + 1] == "not sweep and not host_only"
    files = [Path(a).name for a in argv if a.endswith(".py")]
    assert files[:len(device_parts.GPU_FIRST)] == list(device_parts.GPU_FIRST)
    assert sorted(files) == sorted(p.name for p in (REPO / "tests").rglob("test_*.py"))  # names are unique
    cpu = device_parts.tests_argv(device_parts.Context(out=tmp_path, work=tmp_path, mode="cpu"), 90.0)
    assert {Path(a).name for a in cpu if a.endswith(".py")} == set(device_parts.CPU_TESTS)


def test_the_gpu_selection_collects_each_test_once_in_its_order(tmp_path: Path) -> None:
    """The files named one by one: pytest collects each selected test once, GPU_FIRST files first."""
    argv = device_parts.tests_argv(device_parts.Context(out=tmp_path, work=tmp_path, mode="gpu"), 120.0)
    argv = [a for a in argv if a not in ("-v", "-rfEs")] + ["--collect-only", "-q"]
    argv = argv[:argv.index("--timeout")] + argv[argv.index("--timeout") + 2:] if "--timeout" in argv else argv
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    items = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0 and len(items) > 500 and len(items) == len(set(items))
    files = list(dict.fromkeys(item.split("::")[0] for item in items))
    assert [Path(f).name for f in files[:3]] == list(device_parts.GPU_FIRST[:3])
    assert not any(Path(f).name == "test_aot_compile.py" for f in files)


def test_multi_gpu_tests_skip_with_the_reason_on_a_one_gpu_machine(monkeypatch) -> None:
    import conftest

    class Item:
        def __init__(self, keywords):
            self.keywords, self.markers = keywords, []

        def add_marker(self, marker):
            self.markers.append(marker)

    monkeypatch.setattr(conftest, "HAS_CUDA", True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    items = [Item({"multi_gpu": True}), Item({})]
    conftest.pytest_collection_modifyitems(None, items)
    assert "needs 2 CUDA GPUs" in items[0].markers[0].kwargs["reason"] and "has 1" in items[0].markers[0].kwargs["reason"]
    assert items[1].markers == []


@pytest.mark.parametrize("budget", ["nan", "inf", "-5", "0", "1e9", "ten"])
def test_a_bad_budget_is_refused_before_any_work(tmp_path: Path, budget: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        device_run.main([str(tmp_path / "out"), "--budget", budget])
    assert exit_info.value.code == 2 and "--budget" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_record_is_strict_json_whatever_a_part_reports(tmp_path: Path) -> None:
    def odd(ctx, result):
        result["summary"] = {"steady_ms": float("nan"), "ratio": float("inf")}

    todo = [device_parts.Part("odd", _python("pass"), {"cpu": 10.0}, floor_s=1.0, after=odd)]
    device_run.run(tmp_path, todo, mode="cpu", budget=30, say=lambda text: None)
    assert _strict(tmp_path / "device-run.json")["parts"][0]["summary"] == {"steady_ms": "nan", "ratio": "inf"}


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-1"])
def test_the_tuning_cost_budget_is_refused_before_any_work(budget: str, capsys) -> None:
    from triton_embed.bench import tuning_cost

    with pytest.raises(SystemExit) as exit_info:
        tuning_cost.main(["--time-budget", budget])
    assert exit_info.value.code == 2 and "--time-budget" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["arguments", "device.compile_ahead", "device.parts", "device.run", "device.plan",
                                  "report", "device.run_trace", "device.trace", "verdict"])
def test_the_bench_docstring_examples_run(name: str) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"triton_embed.bench.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
