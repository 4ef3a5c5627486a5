"""A static roofline of every kernel at the LM shapes: would it be issue-bound, latency-bound or
memory-bound on an H100 or a B200? A model from the compiled code, not a measurement.

The data (``roofline_data.py``) comes from ``python tests/aot/aot_roofline.py --write bench/roofline_data.py``:
per kernel, dtype and D, the hot region of its SASS (the program, or the loop that does the work), the
warp instructions one pass over it issues (SASS instructions x warps), the bytes that pass moves (the
tile: ids, rows read and written, statistics) and the programs resident per SM (registers and shared
memory from ``ptxas -v``). The model, per machine:

- **issue**: the SM schedulers issue one warp instruction per cycle each, so the machine issues
  ``SMs x 4 x clock`` warp instructions per second while memory moves ``bandwidth`` bytes: the *balance*
  is their ratio (instructions per byte). A kernel issuing more instructions per byte than the balance
  would be **issue-bound**; ``share`` = its instructions per byte / the balance is the issue time as a share
  of the memory time (at best: no stall, no dual issue);
- **latency**: to keep memory busy, an SM needs ``bandwidth / SMs x latency`` bytes in flight (Little's law).
  A pass's loads are issued together, so an SM has ``resident programs x bytes loaded per pass`` in flight;
  less than needed is **latency-bound**;
- else **memory-bound**: what the bytes model assumes.

>>> MACHINES["H100"].balance() > MACHINES["B200"].balance()
True
>>> verdict({"instructions": 100, "bytes": 1000, "bytes_loaded": 500, "occupancy": {"ctas": 8}}, MACHINES["H100"])
'memory'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Machine:
    """What the model needs of a GPU (vendors' figures; the clock is the boost clock; latency assumed)."""

    name: str
    bandwidth: float  # HBM bytes per second
    sms: int
    clock: float  # Hz
    schedulers: int = 4  # warp schedulers per SM, one warp instruction per cycle each
    latency: float = 650e-9  # seconds from a load's issue to its data, under load (assumed)

    def balance(self) -> float:
        """Warp instructions the SMs can issue per byte memory moves."""
        return self.sms * self.schedulers * self.clock / self.bandwidth

    def bytes_in_flight(self) -> float:
        """Bytes one SM must have in flight to keep memory busy."""
        return self.bandwidth / self.sms * self.latency


MACHINES = {
    "H100": Machine("H100 SXM", 3.35e12, 132, 1.755e9),
    "B200": Machine("B200", 8.0e12, 148, 1.965e9),
}
ABBREVIATION = {"memory": "mem", "issue": "ISSUE", "latency": "lat"}
#: Why a kernel the model calls issue-bound on an H100 stays so (a test holds the data to this list).
REMAINING = {
    "quantized_stable_fwd_kernel": "it dequantizes every element (int8 to float, times the row's scale) "
                                   "and reads 1 byte per element where a bf16 table reads 2, so the "
                                   "LayerNorm's instructions are spread over fewer bytes",
    "quantized_stable_bwd_kernel": "as the quantized forward: the LayerNorm backward's instructions over "
                                   "1-byte codes",
}


def instructions_per_byte(row: dict[str, Any]) -> float:
    return row["instructions"] / row["bytes"]


def verdict(row: dict[str, Any], machine: Machine) -> str:
    """"issue", "latency" or "memory" (see the module docstring)."""
    if instructions_per_byte(row) > machine.balance():
        return "issue"
    if row["occupancy"]["ctas"] * row["bytes_loaded"] < machine.bytes_in_flight():
        return "latency"
    return "memory"


def _pick(rows: list[dict], kernel: str, dtype: str, dim: int, target: str) -> dict | None:
    return next((r for r in rows if (r["kernel"], r["dtype"], r["dim"], r["target"]) == (kernel, dtype, dim, target)),
                None)


def _cell(h100: dict | None, b200: dict | None) -> str:
    if h100 is None or b200 is None:
        return "–"
    share = [instructions_per_byte(r) / MACHINES[m].balance() for r, m in ((h100, "H100"), (b200, "B200"))]
    occupancy = h100["occupancy"]
    return (f"{instructions_per_byte(h100):.2f} · {share[0]:.0%} / {share[1]:.0%} · "
            f"{occupancy['ctas']}×{h100['config'].get('num_warps', 4)} · "
            f"{ABBREVIATION[verdict(h100, MACHINES['H100'])]} / {ABBREVIATION[verdict(b200, MACHINES['B200'])]}")


def table(rows: list[dict] | None = None) -> str:
    """The markdown table: one line per kernel and dtype, one column per D."""
    rows = rows if rows is not None else _rows()
    dims = sorted({r["dim"] for r in rows})
    head = " | ".join(f"D = {d}" for d in dims)
    lines = [f"| kernel | dtype | hot region | {head} |", "|---|---|---|" + "---|" * len(dims)]
    seen = []
    for r in rows:
        if (r["kernel"], r["dtype"]) not in seen:
            seen.append((r["kernel"], r["dtype"]))
    for kernel, dtype in seen:
        region = next(r.get("region", "?") for r in rows if r["kernel"] == kernel and r["dtype"] == dtype)
        cells = [_cell(_pick(rows, kernel, dtype, d, "sm_90a"), _pick(rows, kernel, dtype, d, "sm_100a")) for d in dims]
        lines.append(f"| {kernel} | {dtype} | {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def issue_bound(rows: list[dict] | None = None, machine: str = "H100") -> list[dict]:
    """The rows the model calls issue-bound on ``machine``."""
    rows = rows if rows is not None else _rows()
    target = {"H100": "sm_90a", "B200": "sm_100a"}[machine]
    return [r for r in rows if r["target"] == target and verdict(r, MACHINES[machine]) == "issue"]


def remaining_note(rows: list[dict] | None = None) -> str:
    """Which kernels stay issue-bound on an H100 at the LM shapes, and why; and how many on a B200."""
    rows = rows if rows is not None else _rows()
    flagged = issue_bound(rows)
    if not flagged:
        text = "No kernel is predicted issue-bound on an H100 at these shapes."
    else:
        parts = []
        for kernel in sorted({r["kernel"] for r in flagged}):
            shapes = ", ".join(f"{r['dtype']} D = {r['dim']}" for r in flagged if r["kernel"] == kernel)
            parts.append(f"{kernel} ({shapes}): {REMAINING.get(kernel, 'no reason recorded')}")
        text = "Predicted issue-bound on an H100: " + "; ".join(parts) + "."
    on_b200 = len(issue_bound(rows, "B200"))
    shapes = len([r for r in rows if r["target"] == "sm_100a"])
    return (f"{text} On a B200, whose balance is half an H100's, {on_b200} of the {shapes} kernel shapes are "
            "predicted issue-bound (most bf16 ones): its bandwidth grew 2.4x, its issue rate 1.3x.")


def _rows() -> list[dict]:
    from .roofline_data import ROWS

    return ROWS


def legend() -> str:
    h100, b200 = MACHINES["H100"], MACHINES["B200"]
    return (f"Each cell: warp instructions issued per byte moved in the hot region · issue time as a share of the "
            f"memory time on H100 / B200 (balance {h100.balance():.3f} and {b200.balance():.3f} instructions per "
            f"byte) · programs × warps resident per SM (H100) · verdict H100 / B200: mem = memory-bound, "
            f"ISSUE = issue-bound, lat = latency-bound (fewer bytes in flight than bandwidth × "
            f"{h100.latency * 1e9:.0f} ns: {h100.bytes_in_flight() / 1024:.0f} KiB per SM on H100, "
            f"{b200.bytes_in_flight() / 1024:.0f} KiB on B200). H100 SXM: {h100.bandwidth / 1e12:.2f} TB/s, "
            f"{h100.sms} SMs at {h100.clock / 1e9:.3f} GHz; B200: {b200.bandwidth / 1e12:.0f} TB/s, {b200.sms} SMs at "
            f"{b200.clock / 1e9:.3f} GHz; 4 schedulers per SM issuing one warp instruction per cycle.")
