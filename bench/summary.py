"""The performance targets (README, "Performance targets") against the benchmark's rows: met, missed by how much, or not measured.

Each target is judged on its worst case over the benchmarked shapes (LM shapes only where §5 says so):
the smallest speed-up or % of copy bandwidth, the largest memory share. "bitsandbytes" falls back to the
reference path where bitsandbytes is not importable: it runs the same PyTorch ops, op for op, and is
labelled "reference (bitsandbytes' ops)". "torch.compile" is the faster of its two modes on each case.
Works on row dicts (``Row.as_dict()`` or results.json rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import host_time
from .cases import LM_DIMS, LM_VOCABS, TABLE_OPS

OURS = "triton_embed"


@dataclass(frozen=True)
class Target:
    """One §5 target: which of our rows it reads, the metric, and the bound (``at_most``: an upper bound)."""

    key: str
    title: str
    op: str | None
    passes: tuple[str, ...]
    metric: str
    threshold: float
    dtype: str | None = None
    lm_only: bool = True
    at_most: bool = False


TARGETS = (
    Target("embedding-forward-copy", "Embedding forward, % of copy bandwidth (LM shapes)", "embedding",
           ("forward",), "pct_copy", 85.0),
    Target("embedding-forward-eager", "Embedding forward vs PyTorch eager (every shape)", "embedding",
           ("forward",), "eager", 1.0, lm_only=False),
    Target("stable-forward-bnb-bf16", "StableEmbedding forward vs bitsandbytes, bf16", "stable", ("forward",),
           "bnb", 3.0, dtype="bfloat16"),
    Target("stable-forward-bnb-fp32", "StableEmbedding forward vs bitsandbytes, fp32", "stable", ("forward",),
           "bnb", 1.8, dtype="float32"),
    Target("stable-forward-compile", "StableEmbedding forward vs torch.compile", "stable", ("forward",),
           "compile", 1.2),
    Target("stable-backward-bnb", "StableEmbedding backward vs bitsandbytes", "stable", ("backward",), "bnb", 2.0),
    Target("stable-fwd+bwd-bnb", "StableEmbedding forward+backward vs bitsandbytes", "stable", ("fwd+bwd",),
           "bnb", 2.5),
    Target("stable-fwd+bwd-compile", "StableEmbedding forward+backward vs torch.compile", "stable", ("fwd+bwd",),
           "compile", 1.3),
    Target("embedding-backward-eager-bf16", "Embedding backward vs PyTorch eager, bf16 (LM shapes)", "embedding",
           ("backward",), "eager", 1.2, dtype="bfloat16"),
    Target("embedding-backward-eager-fp32", "Embedding backward vs PyTorch eager, fp32 (LM shapes)", "embedding",
           ("backward",), "eager", 1.2, dtype="float32"),
    Target("renorm-eager", "max_norm renorm + lookup vs PyTorch eager", "renorm", ("forward",), "eager", 2.0),
    Target("stable-activation-memory", "StableEmbedding memory kept for backward, % of bitsandbytes'", "stable",
           ("forward",), "memory", 10.0, at_most=True),
    Target("every-op-copy", "Every op and pass, % of copy bandwidth on its minimum bytes (LM shapes)", None,
           ("forward", "backward", "fwd+bwd"), "pct_copy", 80.0),
    Target("host-syncs", "Host syncs per training step (CUDA-graph capture of a step)", None, (), "syncs", 0.0,
           at_most=True),
    # The cost around the kernels (``host_time``): ours / the peer's, per call.
    *(Target(t.key, ("Host time per call, " if t.section == "host" else "The CPU path, ") + t.title
             + f" vs {t.peer}", t.op, (t.pass_,), "host", t.bound, lm_only=False, at_most=True)
      for t in host_time.TARGETS),
)


def lm_shape(row: dict[str, Any]) -> bool:
    """Whether a row is at a §5 LM shape: vocab and dim of §5 (dim only without a table), 8–32K tokens.

    >>> lm_shape({"op": "embedding", "vocab": 32000, "dim": 2048, "tokens": 16384})
    True
    """
    table_ok = row["op"] not in TABLE_OPS or row["vocab"] in LM_VOCABS
    return table_ok and row["dim"] in LM_DIMS and 8192 <= row["tokens"] <= 32768


def _label(row: dict[str, Any]) -> str:
    if row["op"] in TABLE_OPS:
        return f"{row['op']} V={row['vocab']} D={row['dim']} N={row['tokens']} {row['dist']} {row['dtype']}"
    return f"{row['op']} D={row['dim']} N={row['tokens']} {row['dtype']}"


def _value(target: Target, row: dict[str, Any], peers: dict[tuple, dict[str, dict]]) -> tuple[float | None, str]:
    """(the row's figure for the target, the peer it is against)."""
    if target.metric == "pct_copy":
        return row.get("pct_copy"), "copy bandwidth"
    if target.metric == "eager":
        return row.get("speedup_vs_reference"), "PyTorch eager"
    if target.metric == "bnb":
        if row.get("speedup_vs_bitsandbytes") is not None:
            return row["speedup_vs_bitsandbytes"], "bitsandbytes"
        return row.get("speedup_vs_reference"), "reference (bitsandbytes' ops)"
    if target.metric == "compile":
        found = [row.get(f) for f in ("speedup_vs_compile", "speedup_vs_compile_max") if row.get(f) is not None]
        return (min(found) if found else None), "torch.compile (faster mode)"
    if target.metric == "memory":
        others = peers.get(_case_key(row), {})
        peer = others.get("bitsandbytes") or others.get("reference")
        if peer is None or not peer.get("saved_bytes") or row.get("saved_bytes") is None:
            return None, "bitsandbytes"
        name = "bitsandbytes" if others.get("bitsandbytes") else "reference (bitsandbytes' ops)"
        return 100.0 * row["saved_bytes"] / peer["saved_bytes"], name
    raise ValueError(f"unknown metric {target.metric!r}")


def _case_key(row: dict[str, Any]) -> tuple:
    return (row["op"], row["pass"], row["vocab"], row["dim"], row["tokens"], row["dist"], row["dtype"])


def _fmt(target: Target, value: float) -> str:
    if target.metric in ("pct_copy", "memory"):
        return f"{value:.0f}%"
    if target.metric == "host":
        return f"{value:.2f}x"
    if target.metric == "syncs":
        return f"{value:.0f}"
    return f"{value:.2f}x"


def evaluate(rows: list[dict[str, Any]], gpu: bool, host_syncs: int | None = None,
             host: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every target's verdict: ``status`` "met", "missed" or "not measured", the worst value and its case.
    ``host_syncs``: from the correctness sweep's CUDA-graph capture of a training step: 0 when it captured
    and replayed right (a host sync breaks a capture), 1 when it failed, None when it did not run.
    ``host``: :func:`host_time.measure`'s result (the host-time and CPU-path targets; None: not measured)."""
    host_rows = {row["key"]: row for row in (host or {}).get("rows", [])}
    peers: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["impl"] != OURS:
            peers.setdefault(_case_key(row), {})[row["impl"]] = row
    verdicts = []
    for target in TARGETS:
        bound = "= 0" if target.metric == "syncs" else ("≤ " if target.at_most else "≥ ") + _fmt(target, target.threshold)
        verdict: dict[str, Any] = {"key": target.key, "title": target.title, "target": bound, "value": None,
                                   "case": None, "against": None, "status": "not measured", "shortfall_pct": None}
        if target.metric == "syncs":
            candidates = [] if host_syncs is None else [(float(host_syncs), "training step", "CUDA graph")]
        elif target.metric == "host":
            row = host_rows.get(target.key)
            candidates = [] if row is None else [(row["ratio"], row["shape"], row["peer"])]
        else:
            candidates = []
            for row in rows:
                if row["impl"] != OURS or row["pass"] not in target.passes:
                    continue
                if (target.op and row["op"] != target.op) or (target.dtype and row["dtype"] != target.dtype):
                    continue
                if target.lm_only and not lm_shape(row):
                    continue
                value, against = _value(target, row, peers)
                if value is not None:
                    candidates.append((value, _label(row) + f" {row['pass']}", against))
        if not candidates:
            if target.metric == "syncs":
                verdict["note"] = "the CUDA-graph check needs a GPU" if not gpu else "the CUDA-graph check did not run"
            elif target.metric == "host":
                verdict["note"] = "host time not measured in this run"
            else:
                verdict["note"] = "no GPU: triton_embed is not timed" if not gpu else "no row measured it"
            verdicts.append(verdict)
            continue
        value, case, against = (max if target.at_most else min)(candidates, key=lambda c: c[0])
        met = value <= target.threshold if target.at_most else value >= target.threshold
        verdict.update(value=value, case=case, against=against, status="met" if met else "missed")
        if not met and target.threshold:
            verdict["shortfall_pct"] = 100.0 * abs(target.threshold - value) / target.threshold
        verdicts.append(verdict)
    return verdicts


def format_summary(verdicts: list[dict[str, Any]]) -> str:
    """The one-screen summary: one line per target."""
    lines = ["Performance targets (worst case over the benchmarked shapes):"]
    for v in verdicts:
        target = next(t for t in TARGETS if t.key == v["key"])
        if v["status"] == "not measured":
            state, detail = "not measured", f"({v.get('note', '')})"
        else:
            figure = _fmt(target, v["value"])
            short = f", missed by {v['shortfall_pct']:.0f}%" if v["shortfall_pct"] is not None else ""
            state = "met" if v["status"] == "met" else "MISSED"
            detail = f"{figure}{short} vs {v['against']} — {v['case']}"
        lines.append(f"  {state:<12} {v['title']} [{v['target']}]: {detail}")
    return "\n".join(lines)


def markdown(verdicts: list[dict[str, Any]]) -> list[str]:
    """The summary as a markdown table (lines)."""
    out = ["| target | bound | status | worst case | against | case |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        target = next(t for t in TARGETS if t.key == v["key"])
        figure = "—" if v["value"] is None else _fmt(target, v["value"])
        status = v["status"] if v["shortfall_pct"] is None else f"missed by {v['shortfall_pct']:.0f}%"
        if v["status"] == "not measured" and v.get("note"):
            status = f"not measured ({v['note']})"
        out.append(f"| {v['title']} | {v['target']} | {status} | {figure} | {v['against'] or '—'} | "
                   f"{v['case'] or '—'} |")
    return out
