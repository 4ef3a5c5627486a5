"""plot.png: triton_embed's speed-up over each peer and its % of copy bandwidth, per case and pass.

matplotlib is the optional extra ``plot`` (``pip install triton_embed[plot]``); without it no PNG is made.
"""
from __future__ import annotations

from pathlib import Path

from .impls import OURS, PEERS, speedup_field
from .runner import Row


def matplotlib_available() -> bool:
    """Whether matplotlib imports (the ``plot`` extra)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _label(row: Row) -> str:
    dtype = SHORT_DTYPES.get(row.dtype, row.dtype)
    shape = f"{row.vocab}x{row.dim}" if row.vocab else f"D={row.dim}"
    return f"{row.op} {shape} N={row.tokens} {row.dist} {dtype} {row.pass_}"


def write_plot(path: Path, rows: list[Row], title: str) -> bool:
    """Draw the plot; ``False`` (and nothing written) when matplotlib is missing or nothing was timed."""
    if not matplotlib_available():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r.impl == OURS and r.median_ms is not None]
    if ours:
        return _draw_ours(plt, path, ours, title)
    timed = [r for r in rows if r.median_ms is not None]
    if not timed:
        return False
    # Only peers were timed (the CPU run): show their times, no speed-ups exist.
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(timed)), 4.5))
    ax.bar(range(len(timed)), [r.median_ms for r in timed], color="tab:gray")
    ax.set_xticks(range(len(timed)), [f"{_label(r)} {r.impl}" for r in timed], rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("median ms")
    ax.set_title(title + "\n(no GPU: triton_embed checked, not timed; GPU figures need a GPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _draw_ours(plt, path: Path, ours: list[Row], title: str) -> bool:
    labels = [_label(r) for r in ours]
    x = range(len(ours))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.35 * len(ours)), 9), sharex=True)
    drawn = [p for p in PEERS if any(getattr(r, speedup_field(p)) for r in ours)]
    width = 0.8 / max(1, len(drawn))
    for k, peer in enumerate(drawn):
        values = [getattr(r, speedup_field(peer)) or 0.0 for r in ours]
        top.bar([i + (k - (len(drawn) - 1) / 2) * width for i in x], values, width, label=f"vs {peer}")
    top.axhline(1.0, color="black", linewidth=0.8)
    top.set_ylabel("speed-up (peer time / ours)")
    if drawn:
        top.legend(fontsize=8)
    top.set_title(title, fontsize=10)
    bottom.bar(list(x), [r.pct_copy or 0.0 for r in ours], color="tab:green")
    bottom.axhline(85.0, color="tab:red", linewidth=0.8, linestyle="--", label="85% target (embedding forward)")
    bottom.axhline(80.0, color="tab:orange", linewidth=0.8, linestyle=":", label="80% target (every op)")
    bottom.set_ylabel("% of copy bandwidth (minimum bytes)")
    bottom.legend(fontsize=8)
    bottom.set_xticks(list(x), labels, rotation=75, ha="right", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
