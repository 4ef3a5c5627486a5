"""The one command for a lent GPU machine, from the repository root: ``python3 bench/device/run.py OUT``.

It installs the package (``pip install --no-deps --no-build-isolation -e .``: torch, Triton and the test
tools are already there, and there is no network), then runs each part of :data:`device_parts.PARTS`
(the native tests, ``--validate``, the first-use tuning cost) as a subprocess with its own time limit, so
that one hang cannot eat the others' time: at ``limit - grace`` a part is asked to stop (pytest with
SIGINT, which prints its summary; the benchmark with SIGTERM, which writes its verdict) and at its limit
it is killed with its children. The whole run keeps to :data:`device_parts.BUDGET_S` (480 s on a GPU: the
machine's one command may take 600 s); a part gets at most what is left after the later parts' floors.

``OUT/device-run.json`` is written first and after every part (and on SIGTERM to this process), and the
command exits 0 once it exists, whatever the parts found: the files carry the verdict. Standard library
only: it runs before the install. Without a GPU it rehearses the same parts at CPU size (CI runs it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__:
    from . import parts
else:  # run as a script, before the package is installed: its sibling file, loaded by path
    import importlib.util

    _spec = importlib.util.spec_from_file_location("device_parts", Path(__file__).with_name("parts.py"))
    parts = importlib.util.module_from_spec(_spec)
    sys.modules["device_parts"] = parts  # dataclasses resolve the module by name
    _spec.loader.exec_module(parts)

SCHEMA = "triton_embed.device_run/1"


class Stopped(BaseException):
    """This process got SIGTERM or SIGINT: stop the running part, write the record, exit."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def strict(value: Any) -> Any:
    """``value`` with NaN and infinities as strings (strict JSON has no token for them).

    >>> strict({"s": [float("nan"), 1.5, float("-inf")]})
    {'s': ['nan', 1.5, '-inf']}
    """
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def write_record(out: Path, record: dict[str, Any]) -> None:
    """device-run.json, strict JSON, replaced atomically."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".device-run-")
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(strict(record), indent=1, allow_nan=False, default=str) + "\n")
    os.replace(tmp, out / parts.RECORD)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_part(part: parts.Part, ctx: parts.Context, limit: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one part within ``limit`` seconds; its record (command, limit, seconds, exit code, status)."""
    argv = part.argv(ctx, limit)
    result: dict[str, Any] = {"name": part.name, "command": shlex.join(argv), "limit_s": round(limit, 1),
                              "seconds": 0.0, "exit_code": None, "status": "not run"}
    with open(ctx.out / part.output, "a") as sink:
        sink.write(f"\n===== {part.name} (limit {limit:.0f} s): {result['command']}\n")
        sink.flush()
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=parts.REPO, env=env, start_new_session=True)
        except OSError as exc:
            result.update(status="error", error=f"{type(exc).__name__}: {exc}")
            return result
        try:
            try:
                code = proc.wait(timeout=max(1.0, limit - part.grace_s))
            except subprocess.TimeoutExpired:
                result["status"] = "timed out"
                proc.send_signal(part.stop)
                try:
                    code = proc.wait(timeout=part.grace_s)
                except subprocess.TimeoutExpired:
                    result["status"] = "killed"
                    _kill_group(proc.pid)
                    code = proc.wait()
        except Stopped:  # this process was told to stop: the part gets its stop signal and a short grace
            result["status"] = "stopped"
            proc.send_signal(part.stop)
            try:
                code = proc.wait(timeout=min(part.grace_s, 10.0))
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                code = proc.wait()
        finally:
            _kill_group(proc.pid)  # what the part left running (test workers, compile pools)
        result["exit_code"], result["seconds"] = code, round(time.monotonic() - start, 1)
        if result["status"] == "not run":
            result["status"] = "ok" if code == 0 else "failed"
        sink.write(f"===== {part.name}: {result['status']} (exit {code}) in {result['seconds']} s\n")
    return result


#: Seconds kept back per later part beyond its floor: a part killed at its limit ends a little after it.
SLACK_S = 2.0


def limit_for(index: int, todo: Sequence[parts.Part], mode: str, left: float) -> float:
    """A part's limit: its own, within what is left once the later parts' floors (and a little slack each)
    are kept back.

    >>> demo = [parts.Part("a", lambda c, l: [], {"gpu": 100.0}, floor_s=10.0),
    ...         parts.Part("b", lambda c, l: [], {"gpu": 50.0}, floor_s=30.0)]
    >>> limit_for(0, demo, "gpu", 200.0), limit_for(0, demo, "gpu", 90.0)
    (100.0, 58.0)
    """
    later = todo[index + 1:]
    return min(todo[index].limit_s[mode], left - sum(p.floor_s + SLACK_S for p in later))


def file_problems(out: Path) -> list[str]:
    """What the lent machine would not bring back from ``out``: more than MAX_FILES files, odd names, depth."""
    found = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(found)} files (at most {parts.MAX_FILES})"] if len(found) > parts.MAX_FILES else []
    for path in out.rglob("*"):
        relative = path.relative_to(out)
        if not parts.NAME_OK.match(path.name):
            problems.append(f"{relative}: a name of other than letters, digits, '.', '_', '-'")
        if path.is_file() and len(relative.parts) > 3:
            problems.append(f"{relative}: more than two folders down")
    return problems


def run(out: Path, todo: Sequence[parts.Part] = parts.PARTS, mode: str | None = None,
        budget: float | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``todo`` into ``out`` within the budget; the record written as device-run.json."""
    mode = mode or ("gpu" if shutil.which("nvidia-smi") else "cpu")
    budget = parts.BUDGET_S[mode] if budget is None else budget
    clock_end = time.monotonic() + budget
    ctx = parts.Context(out=out, work=Path(tempfile.mkdtemp(prefix="triton-embed-device-run-")), mode=mode)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_EMBED_BENCH_REEXEC"}
    env.update(PYTHONUNBUFFERED="1", TRITON_EMBED_CACHE_DIR=str(ctx.work / "tuning-cache"))
    record: dict[str, Any] = {"schema": SCHEMA, "command": shlex.join([sys.executable, *sys.argv]), "started": _now(),
                              "finished": None, "mode": mode, "budget_s": budget, "environment": {}, "parts": [],
                              "complete": False, "files": [], "file_problems": []}
    write_record(out, record)

    def stop(signum: int, frame: object) -> None:
        raise Stopped()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index, part in enumerate(todo):
            limit = limit_for(index, todo, ctx.mode, clock_end - time.monotonic())
            if limit < part.floor_s:
                result = {"name": part.name, "status": "not run", "limit_s": round(max(limit, 0.0), 1),
                          "note": f"the run's budget ({budget:.0f} s) left too little for it"}
            else:
                say(f"== {part.name} (at most {limit:.0f} s)")
                result = run_part(part, ctx, limit, env)
                if result["status"] == "stopped":
                    record["parts"].append(result)
                    raise Stopped()
                if part.after is not None:
                    try:
                        part.after(ctx, result)
                    except Exception as exc:  # noqa: BLE001 - reading one part's result must not stop the run
                        result["after_error"] = f"{type(exc).__name__}: {exc}"
            record["parts"].append(result)
            record["mode"], record["environment"] = ctx.mode, ctx.environment
            write_record(out, record)
            say(f"   {part.name}: {result['status']} in {result.get('seconds', 0.0)} s"
                + (f" — {json.dumps(result['summary'], default=str)[:300]}" if result.get("summary") else ""))
        record["complete"] = True
    except Stopped:
        record["note"] = "this run got SIGTERM or SIGINT: the parts after the stopped one did not run"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        record["finished"] = _now()
        for leftover in out.glob(".device-run-*"):  # a write cut short by the signal
            leftover.unlink(missing_ok=True)
        record["files"] = sorted(p.name for p in out.iterdir() if not p.name.startswith(".device-run-"))
        record["file_problems"] = file_problems(out)
        write_record(out, record)
        shutil.rmtree(ctx.work, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    """``run.py OUT``: 0 once OUT/device-run.json is written, 2 when OUT cannot be written."""
    p = argparse.ArgumentParser(prog="python3 bench/device/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder that the lent machine brings back ($OUT)")
    p.add_argument("--budget", type=float, help="seconds for the whole run (default 480 on a GPU, 420 on the CPU)")
    args = p.parse_args(argv)
    if args.budget is not None and not 0 < args.budget <= 3600:
        p.error(f"--budget must be above 0 and at most 3600 seconds, got {args.budget}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_record(args.out, {"schema": SCHEMA, "started": _now(), "parts": []})
    except OSError as exc:
        print(f"error: cannot write into {args.out}: {exc}", file=sys.stderr)
        return 2
    record = run(args.out, budget=args.budget, say=lambda text: print(text, flush=True))
    print(f"device run {'complete' if record['complete'] else 'stopped'}: files {', '.join(record['files'])} in "
          f"{args.out}" + (f"; PROBLEMS: {record['file_problems']}" if record["file_problems"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
