"""The parts of the one GPU command (``device.run``): each a subprocess with its command, its limits and what it
brings back into OUT. Standard library only: the first part installs the package.

========================  ==============================================================================
``device-run.json``       the run: environment, each part's command, limit, seconds, exit code and result
``device-run.log``        every part's output except the tests'
``native-tests.txt``      the test suite natively on the GPU, one line per test and the failures' details
``validate.json``         ``--validate``: environment, correctness sweep, benchmark rows, target verdicts
``report.md``             the benchmark report (targets, table, configs)
``results.csv``           the benchmark rows
``tuning-cost.json``      what runtime tuning costs a training step at first use (``tuning_cost``)
``host-time.json``        host time per call (launches included) and the CPU path, against their peers (``host_time``)
========================  ==============================================================================

Another part plugs in as one more :class:`Part` in :data:`PARTS` (and its file, if it writes one: at most
:data:`MAX_FILES` in all).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
#: What the lent machine brings back: at most 8 files, plain names, at most two folders down.
MAX_FILES = 8
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
#: Seconds for the whole run on a GPU (the machine's one command may take 600 s: this leaves 120 s spare)
#: and for the CPU rehearsal.
BUDGET_S = {"gpu": 480.0, "cpu": 420.0}
LOG = "device-run.log"
RECORD = "device-run.json"
#: Test files run first on a GPU (what only a GPU shows); every other test file follows, by name.
GPU_FIRST = ("test_cuda_graphs.py", "test_out_of_range.py", "test_host_syncs.py", "test_config_independence.py",
             "test_embedding_properties.py", "test_stable_embedding.py", "test_stable_embedding_backward.py", "test_layer_norm.py", "test_numerics.py",
             "test_embedding_autograd.py", "test_quantized_kernels.py", "test_parallel.py")
#: The CPU rehearsal's tests (seconds on two cores): the GPU-only file (it skips, saying why) and edge inputs.
CPU_TESTS = ("test_cuda_graphs.py", "test_edge_inputs.py")
TEST_SELECTION = "not sweep and not host_only"


@dataclass(frozen=True)
class Part:
    """One part of the run. ``argv(ctx)`` is its command; ``limit_s`` its seconds at most on a GPU and on the
    CPU; ``floor_s`` the fewest worth starting it with; at ``limit - grace_s`` it gets ``stop`` (a signal it
    answers by writing what it has), at ``limit`` SIGKILL. Its output goes to ``output``; ``files`` are
    copied from its work folder into OUT when it ends; ``after(ctx, result)`` reads its result."""

    name: str
    argv: Callable[["Context"], list[str]]
    limit_s: dict[str, float]
    floor_s: float = 10.0
    stop: int = signal.SIGTERM
    grace_s: float = 15.0
    output: str = LOG
    after: Callable[["Context", dict[str, Any]], None] | None = None


@dataclass
class Context:
    """What the parts share: OUT, a scratch folder, the mode ("gpu" or "cpu"), the environment found."""

    out: Path
    work: Path
    mode: str
    python: str = sys.executable
    environment: dict[str, Any] = field(default_factory=dict)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def install_argv(ctx: Context, limit: float) -> list[str]:
    """pip install of this checkout, editable, with nothing else fetched or built in isolation (where the
    build backend, setuptools, is not installed, as in a bare venv of Python 3.12, pip fetches it)."""
    offline = ["--no-build-isolation", "--no-index"] if _has("setuptools") else []
    return [ctx.python, "-m", "pip", "install", "--no-deps", *offline, "--disable-pip-version-check", "-e", str(REPO)]


ENVIRONMENT_SCRIPT = r"""
import importlib.metadata as md, json, platform, subprocess, torch, triton
env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
       "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
       "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0, "cpus": __import__("os").cpu_count()}
if env["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
               memory_gib=round(p.total_memory / 2**30, 1))
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        env["driver"] = f"unknown ({exc})"
for dist in ("triton_embed", "numpy", "pytest", "hypothesis", "pytest-xdist", "pytest-timeout", "matplotlib",
             "bitsandbytes", "liger-kernel", "transformers"):
    try:
        env[dist] = md.version(dist)
    except md.PackageNotFoundError:
        env[dist] = None
print(json.dumps(env))
"""


def environment_argv(ctx: Context, limit: float) -> list[str]:
    """A short script printing the versions and the GPU as one JSON line."""
    return [ctx.python, "-c", ENVIRONMENT_SCRIPT]


def read_environment(ctx: Context, result: dict[str, Any]) -> None:
    """The environment part's JSON line into the record; its GPU count sets the mode."""
    log = (ctx.out / LOG).read_text(errors="replace").splitlines()
    for line in reversed(log):
        if line.startswith("{"):
            try:
                ctx.environment = json.loads(line)
            except ValueError:
                continue
            ctx.mode = "gpu" if ctx.environment.get("cuda_available") else "cpu"
            result["summary"] = {k: ctx.environment.get(k) for k in ("gpu", "torch", "triton", "driver")}
            return


def tests_argv(ctx: Context, limit: float) -> list[str]:
    """pytest natively on the GPU: every test but the property sweep and the host-only ones, no ``-x``, one
    line per test; in parallel workers (compiles dominate) and a per-test limit where the plugins are there."""
    found = {p.name: p for p in sorted((REPO / "tests").rglob("test_*.py"))}  # the test files, by name
    if ctx.mode == "gpu":  # every test file, named one by one: pytest keeps that order (a folder it would sort)
        rest = sorted(name for name in found if name not in GPU_FIRST)
        files = [str(found[name]) for name in (*GPU_FIRST, *rest)]
    else:
        files = [str(found[name]) for name in CPU_TESTS]
    argv = [ctx.python, "-m", "pytest", "-p", "no:cacheprovider", "-m", TEST_SELECTION, "-v", "-rfEs",
            "--color=no", *files]
    if ctx.mode == "gpu" and _has("xdist"):
        argv += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2))), "--dist", "loadfile"]
    if _has("pytest_timeout"):
        argv += ["--timeout", "120"]
    return argv


def read_tests(ctx: Context, result: dict[str, Any]) -> None:
    """pytest's counts (passed, failed, errors, skipped) from its last summary line."""
    text = (ctx.out / "native-tests.txt").read_text(errors="replace")
    lines = [line for line in text.splitlines() if re.search(r"\b(passed|failed|error|errors|skipped)\b", line)
             and " in " in line]
    if lines:
        counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)",
                                                          lines[-1])}
        counts["errors"] = counts.pop("error", 0) + counts.pop("errors", 0)
        result["summary"] = counts


#: What --validate writes that the run brings back (results.json repeats validate.json; no plot).
VALIDATE_FILES = ("validate.json", "report.md", "results.csv")
#: --validate's options in the device run: the default configs, what users get without a tuning run (the
#: tuning-cost part measures what tuning costs and gains); the plan (``--plan``) is checked with them.
VALIDATE_OPTIONS = ("--no-tune",)
#: Seconds the benchmark's budget keeps back from its part's limit: the process start (torch, CUDA) and
#: the grace period in which SIGTERM lets it write its verdict.
VALIDATE_RESERVE_S = 25.0


def validate_budget(limit: float) -> float:
    """--validate's --time-budget within its part's ``limit``.

    >>> validate_budget(250.0)
    225.0
    """
    return max(30.0, limit - VALIDATE_RESERVE_S)


def validate_argv(ctx: Context, limit: float) -> list[str]:
    """``--validate`` into the scratch folder, its time budget what the part's limit leaves; on the CPU, the
    ``--quick`` rehearsal."""
    budget = validate_budget(limit)
    argv = [ctx.python, "-m", "triton_embed.bench", "--validate", "--out", str(ctx.work / "validate"),
            "--name", "", "--time-budget", f"{budget:.0f}", *VALIDATE_OPTIONS]
    return argv + (["--quick"] if ctx.mode == "cpu" else [])


def read_validate(ctx: Context, result: dict[str, Any]) -> None:
    """Bring validate.json, report.md and results.csv into OUT; a validate.json whose run was killed before
    its summary gets the verdict on the rows it holds."""
    folder = ctx.work / "validate"
    record = folder / "validate.json"
    if not record.exists():
        return
    try:
        data = json.loads(record.read_text())
    except ValueError as exc:
        result["summary"] = {"error": f"validate.json unreadable: {exc}"}
        data = None
    if data is not None and data.get("stages", {}).get("summary", {}).get("status") != "done":
        finish = [ctx.python, "-m", "triton_embed.bench.verdict", str(record)]
        with open(ctx.out / LOG, "a") as sink:
            sink.write("\n===== validate.json has no summary: writing it from its rows\n")
            sink.flush()
            subprocess.run(finish, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, timeout=120, check=False)
        data = json.loads(record.read_text())
    for name in VALIDATE_FILES:
        if (folder / name).exists():
            shutil.copyfile(folder / name, ctx.out / name)
    if data is not None:
        summary = data.get("stages", {}).get("summary", {})
        result["summary"] = {
            "ok": data.get("ok"), "complete": data.get("complete"),
            "stages": {name: stage.get("status") for name, stage in data.get("stages", {}).items()},
            **{k: summary.get(k) for k in ("met", "missed", "not measured")},
            "targets": {t["key"]: t["status"] for t in summary.get("targets", ())},
        }


def tuning_cost_argv(ctx: Context, limit: float) -> list[str]:
    """What first-use tuning costs a training step, into OUT/tuning-cost.json."""
    return [ctx.python, "-m", "triton_embed.bench.tuning_cost", "--out", str(ctx.out / "tuning-cost.json"),
            "--time-budget", f"{max(10.0, limit - 15.0):.0f}"]


def read_tuning_cost(ctx: Context, result: dict[str, Any]) -> None:
    """The headline figures of tuning-cost.json."""
    path = ctx.out / "tuning-cost.json"
    if path.exists():
        try:
            result["summary"] = json.loads(path.read_text()).get("summary")
        except ValueError as exc:
            result["summary"] = {"error": f"tuning-cost.json unreadable: {exc}"}


def host_time_argv(ctx: Context, limit: float) -> list[str]:
    """Host time per call and the CPU path against their peers, into OUT/host-time.json (CPU: ``--quick``)."""
    argv = [ctx.python, "-m", "triton_embed.bench.host_time", "--out", str(ctx.out / "host-time.json"),
            "--time-budget", f"{max(10.0, limit - 15.0):.0f}"]
    return argv + (["--quick"] if ctx.mode == "cpu" else [])


def read_host_time(ctx: Context, result: dict[str, Any]) -> None:
    """Each row's ratio to its peer and whether its target is met."""
    path = ctx.out / "host-time.json"
    if path.exists():
        try:
            rows = json.loads(path.read_text()).get("rows", ())
        except ValueError as exc:
            result["summary"] = {"error": f"host-time.json unreadable: {exc}"}
            return
        result["summary"] = {f"{row['section']}: {row['op']}": {"ratio": row["ratio"], "met": row["met"]}
                             for row in rows}


#: The parts, in order. Another part plugs in here: a name, its command, its limits, and what it leaves.
PARTS = (
    Part("install", install_argv, {"gpu": 45.0, "cpu": 120.0}, floor_s=20.0),
    Part("environment", environment_argv, {"gpu": 20.0, "cpu": 30.0}, floor_s=10.0, after=read_environment),
    Part("native-tests", tests_argv, {"gpu": 120.0, "cpu": 90.0}, floor_s=30.0, stop=signal.SIGINT,
         output="native-tests.txt", after=read_tests),
    Part("validate", validate_argv, {"gpu": 250.0, "cpu": 150.0}, floor_s=60.0, grace_s=20.0, after=read_validate),
    Part("tuning-cost", tuning_cost_argv, {"gpu": 60.0, "cpu": 60.0}, floor_s=15.0, after=read_tuning_cost),
    Part("host-time", host_time_argv, {"gpu": 45.0, "cpu": 60.0}, floor_s=15.0, after=read_host_time),
)
