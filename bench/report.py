"""The results: terminal table, results.json, results.csv and report.md (plot.png is in ``plot``)."""
from __future__ import annotations

import csv
import importlib.metadata
import json
import platform
import re
from pathlib import Path
from typing import Any

import torch
import triton

import triton_embed
from triton_embed import tuning

from . import bytes_model
from .impls import OURS
from .runner import Row, column_names

SCHEMA_VERSION = 1
#: Top-level keys of results.json.
JSON_KEYS = (
    "schema", "created", "command", "environment", "copy_bandwidth_gbps", "copy_bytes", "bytes_models",
    "tuned_configs", "cache_path", "notes", "rows", "failures", "ok",
)


def slug(name: str) -> str:
    """A file-name-safe form of a GPU name.

    >>> slug("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb-hbm3'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def environment(mode: str, device: torch.device, index_check: bool) -> dict[str, Any]:
    """Versions and the device the figures were measured on."""
    try:  # the installed version, without importing it (bitsandbytes' import takes seconds)
        bnb_version: str | None = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        bnb_version = None
    return {
        "mode": mode,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device_tag": tuning.device_tag(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "triton_embed": triton_embed.__version__,
        "cuda": torch.version.cuda,
        "bitsandbytes": bnb_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "index_check": index_check,
    }


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _speedups(row: Row) -> str:
    parts = []
    for peer, short in (("reference", "ref"), ("bitsandbytes", "bnb"), ("compile", "cmp")):
        value = getattr(row, f"speedup_vs_{peer}")
        if value is not None:
            parts.append(f"{value:.2f}x {short}")
    if row.det_over_atomic is not None:
        parts.append(f"det/atomic time {row.det_over_atomic:.2f}")
    return ", ".join(parts) or "—"


def table_lines(rows: list[Row]) -> list[tuple[str, ...]]:
    """The condensed table: one tuple of strings per row, header first."""
    header = ("case", "pass", "impl", "median ms", "p20–p80 ms", "GB/s", "% copy", "speed-up", "peak MiB", "max err")
    lines = [header]
    for r in rows:
        case = f"{r.op} {r.vocab}x{r.dim} N={r.tokens} {r.dist} {r.dtype}"
        spread = "—" if r.p20_ms is None else f"{r.p20_ms:.4g}–{r.p80_ms:.4g}"
        flag = "" if r.ok is not False else (" FAIL" if r.impl in OURS else " (outside tol)")
        err = _fmt(r.max_abs_err, ".2g") + flag
        lines.append((
            case, r.pass_, r.impl, _fmt(r.median_ms, ".4g"), spread, _fmt(r.gbps, ".3g"), _fmt(r.pct_copy, ".0f"),
            _speedups(r), _fmt(None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20, ".0f"), err,
        ))
    return lines


def format_table(rows: list[Row]) -> str:
    """The table for the terminal, columns padded to width."""
    lines = table_lines(rows)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def payload(
    command: list[str], env: dict[str, Any], copy: tuple[float, int], tuned: dict[str, tuning.Config],
    notes: list[str], rows: list[Row], failures: list[str], created: str,
) -> dict[str, Any]:
    """Everything results.json holds."""
    data = {
        "schema": SCHEMA_VERSION,
        "created": created,
        "command": command,
        "environment": env,
        "copy_bandwidth_gbps": copy[0],
        "copy_bytes": copy[1],
        "bytes_models": {
            "symbols": "N tokens, D dim, V vocab rows, U distinct ids, e bytes per weight element, i bytes per id (8)",
            "ops": bytes_model.MODELS,
            "zero_fill": bytes_model.FILL_MODEL,
            "copy": bytes_model.COPY_MODEL,
            "gbps": "forward: bytes / median; backward and fwd+bwd: bytes / (median − zero-fill median)",
        },
        "tuned_configs": tuned,
        "cache_path": str(tuning.cache_path()),
        "notes": notes,
        "rows": [r.as_dict() for r in rows],
        "failures": failures,
        "ok": not failures,
    }
    assert tuple(data) == JSON_KEYS
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """results.json: every figure, the environment, the tuned configs and the bytes models."""
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_csv(path: Path, rows: list[Row]) -> None:
    """results.csv: one line per (case, pass, implementation), header :func:`runner.column_names`."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=column_names())
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.as_dict().items()})


def markdown(data: dict[str, Any], rows: list[Row]) -> str:
    """report.md: environment, copy bandwidth, bytes models, notes, the table, the tuned configs."""
    env = data["environment"]
    where = env["gpu"] or "CPU (Triton interpreter)"
    out = [f"# triton_embed benchmark — {where}", ""]
    out.append(
        f"torch {env['torch']}, triton {env['triton']}, triton_embed {env['triton_embed']}, "
        f"CUDA {env['cuda']}, bitsandbytes {env['bitsandbytes'] or 'not installed'}; "
        f"index check {'on' if env['index_check'] else 'off'}; {data['created']}."
    )
    out.append("")
    out.append(
        f"**Copy bandwidth** (`dst.copy_(src)`, {data['copy_bytes'] / 2**30:.3g} GiB moved): "
        f"**{data['copy_bandwidth_gbps']:.0f} GB/s** — the ceiling for the % copy column."
    )
    if data["notes"]:
        out += ["", "## Notes", ""] + [f"- {note}" for note in data["notes"]]
    out += ["", "## Results", ""]
    lines = table_lines(rows)
    out.append("| " + " | ".join(lines[0]) + " |")
    out.append("|" + "---|" * len(lines[0]))
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    out += [
        "",
        "Speed-up = peer median / triton_embed median (same case and pass). `triton_embed[det]` is the "
        "deterministic weight-gradient path; its forward is the same kernel as `triton_embed`'s. "
        "Peak MiB: `torch.cuda.max_memory_allocated` delta over one forward+backward. "
        "Every figure, percentiles, zero-fill times and saved-for-backward bytes are in results.csv / results.json.",
        "",
        "## Bytes models",
        "",
        data["bytes_models"]["symbols"] + ".",
        "",
    ]
    for op, passes in data["bytes_models"]["ops"].items():
        for pass_, text in passes.items():
            out.append(f"- **{op} {pass_}**: {text}")
    out += [
        f"- **zero-fill** (timed apart): {data['bytes_models']['zero_fill']}",
        f"- **copy**: {data['bytes_models']['copy']}",
        f"- **GB/s**: {data['bytes_models']['gbps']}",
        "",
        "## Tuned configs",
        "",
        f"The launch configs the measured kernels used (tuned in this run, or read from the cache). "
        f"Cache: `{data['cache_path']}`, device tag `{env['device_tag']}`.",
        "",
    ]
    if data["tuned_configs"]:
        out += ["| key (kernel\\|dtype\\|dim\\|token bucket) | config |", "|---|---|"]
        out += [f"| {key.replace('|', chr(92) + '|')} | {cfg} |" for key, cfg in sorted(data["tuned_configs"].items())]
    else:
        out.append("None: under the Triton interpreter every kernel runs one fixed config (no GPU to time them).")
    out += ["", "## Correctness", ""]
    if data["failures"]:
        out += [f"- FAIL {failure}" for failure in data["failures"]]
    else:
        out.append("Every triton_embed result matched the float64 oracle within tolerance (see max err).")
    return "\n".join(out) + "\n"
