"""The results: terminal table, results.json, results.csv and report.md (plot.png is in ``plot``)."""
from __future__ import annotations

import csv
import importlib.metadata
import io
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch
import triton

import triton_embed
from triton_embed import tuning

from . import bytes_model, host_time, summary
from .files import text_table, write_text
from .impls import OURS, PEERS, speedup_field
from .runner import Row, column_names

SCHEMA_VERSION = 2
#: Top-level keys of results.json.
JSON_KEYS = (
    "schema", "created", "command", "environment", "methodology", "copy_bandwidth_gbps", "copy_bytes",
    "bytes_models", "configs", "cache_path", "notes", "skipped", "rows", "host_time", "targets", "failures",
    "checked", "complete", "ok",
)
SHORT = {"reference": "ref", "bitsandbytes": "bnb", "compile": "cmp", "compile-max": "cmp-max", "liger": "liger"}


def slug(name: str) -> str:
    """A file-name-safe form of a GPU name.

    >>> slug("NVIDIA H100 80GB HBM3")
    'nvidia-h100-80gb-hbm3'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def _version(dist: str) -> str | None:
    try:  # the installed version, without importing it (bitsandbytes' import takes seconds)
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(mode: str, device: torch.device, index_check: str) -> dict[str, Any]:
    """Versions and the device the figures were measured on."""
    return {
        "mode": mode,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device_tag": tuning.device_tag(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "triton_embed": triton_embed.__version__,
        "cuda": torch.version.cuda,
        "bitsandbytes": _version("bitsandbytes"),
        "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "index_check": index_check,
        # The benchmark runs with "auto" whatever this says (it measures the kernels); recorded as set.
        "backend_env": os.environ.get("TRITON_EMBED_BACKEND"),
        "backend": triton_embed.get_backend(),
    }


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _speedups(row: Row, by_key: dict[tuple, Row]) -> str:
    parts = []
    for peer in PEERS:
        value = getattr(row, speedup_field(peer))
        other = by_key.get((row.op, row.vocab, row.dim, row.tokens, row.dist, row.dtype, row.pass_, peer))
        model = f" (model {other.model_speedup:.2f}x)" if other is not None and other.model_speedup else ""
        if value is not None:
            parts.append(f"{value:.2f}x {SHORT[peer]}{model}")
        elif model and row.impl == OURS:
            parts.append(f"— {SHORT[peer]}{model}")
    return ", ".join(parts) or "—"


def table_lines(rows: list[Row]) -> list[tuple[str, ...]]:
    """The condensed table: one tuple of strings per row, header first."""
    header = ("case", "pass", "impl", "median ms", "rounds min–max ms", "GB/s", "% copy", "speed-up (model)",
              "MB model", "peak MiB", "max err")
    by_key = {(r.op, r.vocab, r.dim, r.tokens, r.dist, r.dtype, r.pass_, r.impl): r for r in rows}
    lines = [header]
    for r in rows:
        case = (f"{r.op} {r.vocab}x{r.dim} N={r.tokens} {r.dist} {r.dtype}" if r.vocab
                else f"{r.op} D={r.dim} N={r.tokens} {r.dtype}")
        spread = "—" if r.round_min_ms is None else f"{r.round_min_ms:.4g}–{r.round_max_ms:.4g} ({r.rounds})"
        flag = "" if r.ok is not False else (" FAIL" if r.impl == OURS else " (outside tol)")
        lines.append((
            case, r.pass_, r.impl, _fmt(r.median_ms, ".4g"), spread, _fmt(r.gbps, ".3g"), _fmt(r.pct_copy, ".0f"),
            _speedups(r, by_key) if r.impl == OURS else "—",
            _fmt(None if r.model_bytes is None else r.model_bytes / 1e6, ".4g"),
            _fmt(None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20, ".0f"),
            _fmt(r.max_abs_err, ".2g") + flag,
        ))
    return lines


def format_table(rows: list[Row]) -> str:
    """The table for the terminal, columns padded to width."""
    return text_table(table_lines(rows))


def config_lines(configs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per tuning key: the config that ran and where it came from."""
    if not configs:
        return ["(no kernel config was chosen)"]
    return [f"{key}: {entry['config']} [{entry['source']}]" for key, entry in sorted(configs.items())]


def payload(
    command: list[str], env: dict[str, Any], methodology: dict[str, Any], copy: tuple[float, int],
    configs: dict[str, dict[str, Any]], notes: list[str], skipped: list[str], rows: list[Row],
    failures: list[str], created: str, host_syncs: int | None = None, complete: bool = True,
    host: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything results.json holds. ``checked``: triton_embed rows compared with the oracle; ``complete``:
    the run was not cut short; ``ok``: complete and no mismatch. ``host``: :func:`host_time.measure`'s result
    (``host_time``; None where it did not run)."""
    row_dicts = [r.as_dict() for r in rows]
    data = {
        "schema": SCHEMA_VERSION,
        "created": created,
        "command": command,
        "environment": env,
        "methodology": methodology,
        "copy_bandwidth_gbps": copy[0],
        "copy_bytes": copy[1],
        "bytes_models": {
            "symbols": bytes_model.SYMBOLS,
            "minimum": bytes_model.MINIMUM,
            "own": bytes_model.OWN,
            "copy": bytes_model.COPY_MODEL,
            "gbps": "min_bytes / median for every implementation; % copy = GB/s / copy bandwidth",
        },
        "configs": configs,
        "cache_path": str(tuning.cache_path()),
        "notes": notes,
        "skipped": skipped,
        "rows": row_dicts,
        "host_time": host,
        "targets": summary.evaluate(row_dicts, env["mode"] == "gpu", host_syncs, host),
        "failures": failures,
        "checked": sum(1 for r in rows if r.impl == OURS and r.ok is not None),
        "complete": complete,
        "ok": not failures and complete,
    }
    assert tuple(data) == JSON_KEYS
    return data


def write_csv(path: Path, rows: list[Row]) -> None:
    """results.csv: one line per (case, pass, implementation), header :func:`runner.column_names`."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=column_names())
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.as_dict().items()})
    write_text(path, buffer.getvalue())


def markdown(data: dict[str, Any], rows: list[Row]) -> str:
    """report.md: environment, method, §5 targets, notes, the table, bytes models, configs, correctness."""
    env, method = data["environment"], data["methodology"]
    where = env["gpu"] or "CPU (Triton interpreter)"
    out = [f"# triton_embed benchmark — {where}", ""]
    if not data["complete"]:
        out += ["**Interrupted: the run was cut short; the figures below are the cases finished before.**", ""]
    out.append(
        f"torch {env['torch']}, triton {env['triton']}, triton_embed {env['triton_embed']}, CUDA {env['cuda']}, "
        f"bitsandbytes {env['bitsandbytes'] or 'not installed'}, liger-kernel {env['liger_kernel'] or 'not installed'}; "
        f"{data['created']}."
    )
    out += ["", f"**Method.** {method['text']}", ""]
    out.append(
        f"**Copy bandwidth** (`dst.copy_(src)`, {data['copy_bytes'] / 2**30:.3g} GiB moved): "
        f"**{data['copy_bandwidth_gbps']:.0f} GB/s** — the ceiling for the % copy column."
    )
    out += ["", "## Performance targets", ""] + summary.markdown(data["targets"])
    if data.get("host_time"):
        out += [""] + host_time.markdown(data["host_time"])
    if data["notes"]:
        out += ["", "## Notes", ""] + [f"- {note}" for note in data["notes"]]
    if data["skipped"]:
        out += ["", "## Skipped", ""] + [f"- {item}" for item in data["skipped"]]
    out += ["", "## Results", ""]
    lines = table_lines(rows)
    out.append("| " + " | ".join(lines[0]) + " |")
    out.append("|" + "---|" * len(lines[0]))
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    out += [
        "",
        "Median ms: median of the rounds' medians; rounds min–max: the lowest and highest round median (number "
        "of rounds). GB/s and % copy: the op's *minimum* bytes over the median, for every implementation. "
        "Speed-up: peer median / triton_embed median, same case and pass; (model x): the ratio of the peer's "
        "own bytes model to ours — a prediction, not a measurement. MB model: the implementation's own bytes "
        "model. Peak MiB: `torch.cuda.max_memory_allocated` delta over one forward+backward. Percentiles and "
        "memory kept for backward are in results.csv / results.json.",
        "",
        "## Bytes models (models, not measurements)",
        "",
        data["bytes_models"]["symbols"],
        "",
    ]
    for op, passes in data["bytes_models"]["minimum"].items():
        for pass_, text in passes.items():
            out.append(f"- **minimum, {op} {pass_}**: {text}")
    out += [f"- **{impl}**: {text}" for impl, text in data["bytes_models"]["own"].items()]
    out += [f"- **copy**: {data['bytes_models']['copy']}", f"- **GB/s**: {data['bytes_models']['gbps']}", ""]
    out += ["## Kernel configs", "",
            f"Per tuning key, the config the measured launches used and where it came from (cache: the tuning "
            f"cache `{data['cache_path']}`, device tag `{env['device_tag']}`; tuned: timed at first use; default: "
            f"the first config of its list). Under the interpreter every kernel runs one fixed config.", ""]
    out += [f"- `{line}`" for line in config_lines(data["configs"])]
    out += ["", "## Correctness", ""]
    if data["failures"]:
        out += [f"- FAIL {failure}" for failure in data["failures"]]
    elif not data["checked"]:
        out.append("No triton_embed result was checked (--no-check, or no case ran).")
    else:
        out.append(f"Every checked triton_embed result ({data['checked']} rows) matched the float64 oracle within "
                   "tolerance (see max err).")
    return "\n".join(out) + "\n"
