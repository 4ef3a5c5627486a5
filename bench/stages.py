"""Stages run in turn into a JSON record that is rewritten atomically as each finishes, whatever happens: a
stage that fails does not stop the later ones, a spent budget skips the stages not yet begun, and after
SIGTERM or Ctrl-C the stages marked ``always`` (the summary: the reason for the run) still run.
``--validate``'s machinery (``validate``)."""
from __future__ import annotations

import contextlib
import datetime
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from . import files
from .timing import Deadline, Interrupted

SCHEMA = "triton_embed.validate/1"
Say = Callable[[str], None]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Record:
    """The record (validate.json) in memory, rewritten atomically after every change."""

    def __init__(self, path: Path, command: list[str]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"schema": SCHEMA, "command": command, "started": _now(), "finished": None,
                                     "environment": {}, "stages": {}, "ok": True, "complete": False}
        self.write()

    def stage(self, name: str, result: dict[str, Any]) -> None:
        """Store a stage's record (finished or in progress) and write the file."""
        self.data["stages"][name] = result
        if result.get("ok") is False:
            self.data["ok"] = False
        self.write()

    def write(self) -> None:
        """Rewrite the file (temporary file + ``os.replace``)."""
        files.write_json(self.path, self.data)


@dataclass(frozen=True)
class Stage:
    """One stage: its name, what runs it, and ``always``: it runs whatever happened before it (the summary,
    the reason for the run, is written after an interrupted, failed or overrun stage too)."""

    name: str
    run: Callable[[], dict[str, Any]]
    always: bool = False


def run_stages(stages: list[Stage], record: Record, say: Say, deadline: Deadline | None = None) -> None:
    """Run each stage and record it as it finishes. An error fails that stage, never the later ones. Once
    ``deadline`` has passed, the stages not yet started are recorded as skipped. An :class:`Interrupted`
    (SIGTERM, Ctrl-C) marks the running stage interrupted and the later ones not run, except the ``always``
    stages, which still run (with further signals held off until they end); then it propagates."""
    interrupted: Interrupted | None = None
    for stage in stages:
        name = stage.name
        if interrupted is not None and not stage.always:
            record.stage(name, {"ok": False, "status": "not run", "note": f"the run was interrupted ({interrupted.name})",
                                "seconds": 0.0})
            continue
        if deadline is not None and deadline.expired() and not stage.always:
            say(f"== {name}: skipped, the time budget ({deadline.seconds:.0f} s) is spent")
            record.stage(name, {"ok": False, "status": "skipped",
                                "note": f"the time budget ({deadline.seconds:.0f} s) was spent before it began",
                                "seconds": 0.0})
            continue
        say(f"== {name}")
        start = time.perf_counter()
        try:
            with _signals_held(interrupted is not None):
                result = stage.run()
        except Interrupted as exc:
            interrupted = exc
            say(f"  stage {name} interrupted ({exc.name}): writing what it has, then the summary")
            result = dict(record.data["stages"].get(name) or {})
            result.update(ok=False, status="interrupted")
        except Exception as exc:  # noqa: BLE001 - a failing stage must not lose the others
            say(f"  stage {name} failed: {type(exc).__name__}: {exc}")
            result = {"ok": False, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:1000],
                      "traceback": traceback.format_exc()[-3000:]}
        result.setdefault("status", "done")
        result["seconds"] = round(time.perf_counter() - start, 2)
        record.stage(name, result)
    record.data["complete"] = interrupted is None and all(
        record.data["stages"].get(stage.name, {}).get("status") == "done" for stage in stages)
    record.data["finished"] = _now()
    record.write()
    if interrupted is not None:
        raise interrupted


@contextlib.contextmanager
def _signals_held(hold: bool) -> Iterator[None]:
    """While ``hold``: SIGTERM and SIGINT are ignored (the summary after an interruption runs to its end; it
    takes well under a second), then the previous handlers come back."""
    if not hold or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
