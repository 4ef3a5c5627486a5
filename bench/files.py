"""Writing the benchmark's files: atomically (a reader never sees half a file) and, for JSON, strictly (RFC 8259:
no NaN or Infinity tokens, so every reader can parse it); and its tables as plain text."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (a temporary file in the same folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, ±inf) spelled as a string, and tuples as lists:
    what :func:`write_json` writes, so that every reader (not only Python's) can parse it.

    >>> strict({"err": float("nan"), "ms": [1.5, float("inf")], "n": (1, -float("inf"))})
    {'err': 'nan', 'ms': [1.5, 'inf'], 'n': [1, '-inf']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def json_text(data: Any) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity tokens) of ``data``, non-finite floats as strings.

    >>> json.loads(json_text({"budget": float("inf"), "runs": 3}))
    {'budget': 'inf', 'runs': 3}
    """
    return json.dumps(strict(data), indent=1, allow_nan=False) + "\n"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A strict JSON file (:func:`json_text`), written atomically."""
    write_text(path, json_text(data))


def text_table(lines: Sequence[Sequence[str]]) -> str:
    """Rows of cells as the terminal shows them: columns padded to width, a rule under the header (row 0).

    >>> print(text_table([["op", "µs"], ["gather", "3.2"]]))
    op      µs
    ------  ---
    gather  3.2
    """
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


__all__ = ["write_text", "strict", "json_text", "write_json", "text_table"]

