"""The rules every compile of the ahead-of-time check must meet, and its report tables.

Per compile (the spec's rules travel with each result, ``rules_of``): it compiled with options the backend
knows; no register spill (a few bytes before Triton 3.7 on NVIDIA, see :func:`spill_allowance`); at least the
128-bit loads and stores its main tiles need; no approximate math beyond the op's documented classes; no
FMA where the launcher pins contraction off (every launcher does), and the option reached the compiler; at
most ``max_barriers`` barriers; at least ``min_warps`` warps resident per SM (CU). Across compiles: every
kernel on every target, and for ``same_sums`` kernels the same reduction layouts under every config of a
case (the order of a ``tl.sum`` follows its layout, so equal layouts mean equal bits).
"""
from __future__ import annotations

import re

#: Spill bytes (stores and loads each) tolerated per compile on NVIDIA under Triton before 3.7, whose
#: register allocation leaves a few rare variants (a float64 tile at D = 4096, a 4-bit row streamed at
#: D = 16384) with 12-32 bytes of stack traffic.
OLD_TRITON_SPILL_BYTES = 32
#: From Triton 3.9 on, Triton runs ptxas with ``--regAllocOptLevel=2`` (its workaround for a ptxas 13 bug),
#: under which ptxas parks a register or two on the stack in a few variants while most of its registers
#: are unused (48 of 255, say). Such a spill passes only if the same PTX assembles without any spill when
#: that option is left out (``spills_without_reg_alloc_option``): register pressure would spill either way.
#: Spill bytes tolerated in a kernel that calls a subroutine (SASS ``CALL``: the slow path of a correctly
#: rounded float64 division), whose calling convention saves a few live registers to the stack around it.
CALL_SPILL_BYTES = 16


def spill_allowance(version: str | None = None, backend: str = "cuda") -> int:
    """Spill bytes tolerated per compile for the given Triton version (default: the installed one): none on
    AMD, none from Triton 3.7 on."""
    if backend != "cuda":
        return 0
    if version is None:
        import triton

        version = triton.__version__
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return OLD_TRITON_SPILL_BYTES if (major, minor) < (3, 7) else 0


def spilling(results: list[dict], allowance: int | None = None, version: str | None = None) -> list[dict]:
    """The compiled results whose spill stores or loads exceed ``allowance`` bytes (default: the version's
    allowance for each result's backend)."""
    out = []
    for r in results:
        limit = allowance if allowance is not None else spill_allowance(version, r.get("backend", "cuda"))
        if r["ok"] and max(r["spill_stores"], r["spill_loads"]) > limit:
            out.append(r)
    return out


def rules_of(spec) -> dict:
    """The rules of a spec, as data carried by each of its results."""
    return {"approx": sorted(spec.approx), "max_barriers": spec.max_barriers, "min_warps": spec.min_warps,
            "pins_fp_fusion": spec.pins_fp_fusion, "same_sums": spec.same_sums,
            "vector_loads": spec.vector_loads is not None, "vector_stores": spec.vector_stores is not None}


def describe(r: dict) -> str:
    return f"{r['kernel']} [{r.get('config_label', '?')}] [{r.get('variant', '?')}] {r['target']}"


def _per_compile(r: dict, version: str | None) -> dict[str, str]:
    rules, out = r["rules"], {}
    spill = max(r["spill_stores"], r["spill_loads"])
    allowed = spill_allowance(version, r["backend"])
    if r.get("subroutine_calls"):
        allowed = max(allowed, CALL_SPILL_BYTES)
    if spill > allowed and r.get("spills_without_reg_alloc_option", 1) > 0:
        out["spills"] = f"{r['registers']} registers, {r['spill_stores']} B spill stores, {r['spill_loads']} B loads"
    for kind in ("loads", "stores"):
        if rules[f"vector_{kind}"] and r[f"vector_{kind}"] < r[f"vector_{kind}_expected"]:
            out[f"vector {kind}"] = f"{r[f'vector_{kind}']} 128-bit {kind}, expected >= {r[f'vector_{kind}_expected']}"
    extra = {k: n for k, n in r["approx"].items() if k not in rules["approx"]}
    if extra:
        out["numerics"] = f"approximate math {extra} (allowed: {rules['approx'] or 'none'})"
    if rules["pins_fp_fusion"] and (r["fp_fusion"] or r["fma"]):
        out["fma"] = f"FMA contraction {'on' if r['fp_fusion'] else 'off'}, {r['fma']} fused multiply-adds"
    if rules["max_barriers"] is not None and r["barriers"] > rules["max_barriers"]:
        out["barriers"] = f"{r['barriers']} barriers, at most {rules['max_barriers']}"
    if r["occupancy"]["warps"] < rules["min_warps"]:
        occ = r["occupancy"]
        out["occupancy"] = (f"{occ['ctas']} programs x {r['config'].get('num_warps', 4)} warps resident "
                            f"(limit: {occ['limit']}; {r['registers']} registers, {r['smem']} B shared), "
                            f"at least {rules['min_warps']} warps wanted")
    return out


def failures(report: dict) -> dict[str, list[str]]:
    """Every failure of a report, by rule (empty lists dropped)."""
    found: dict[str, list[str]] = {"coverage": [], "compile": []}
    version = report.get("triton_version")
    found["coverage"] += [f"kernel {key} has no AOT spec" for key in report.get("missing_specs", [])]
    found["coverage"] += [f"AOT spec of {b['kernel']} is unusable: {b['error']}" for b in report.get("bad_specs", [])]
    targets = set(report.get("targets", []))
    for key in report.get("spec_keys", []):
        name = key.rsplit(".", 1)[1]
        done = {r["target"] for r in report["results"] if r["kernel"] == name}
        if report["results"] and done and done != targets:
            found["coverage"].append(f"{name} compiled for {sorted(done)}, not {sorted(targets)}")
    layouts: dict[tuple, dict[str, list[str]]] = {}
    for r in report["results"]:
        if not r["ok"]:
            found["compile"].append(f"{describe(r)}: {r['error']}")
            continue
        for rule, message in _per_compile(r, version).items():
            found.setdefault(rule, []).append(f"{describe(r)}: {message}")
        if r["rules"]["same_sums"]:
            layouts.setdefault((r["kernel"], r["variant"], r["target"]), {})[r["config_label"]] = r["reduce_layouts"]
    for (kernel, variant, target), by_config in layouts.items():
        if len({tuple(v) for v in by_config.values()}) > 1:
            found.setdefault("same sums", []).append(
                f"{kernel} [{variant}] {target}: reduction layouts differ across configs: " + "; ".join(
                    f"{label}: {layout}" for label, layout in by_config.items()))
    return {rule: problems for rule, problems in found.items() if problems}


def format_table(results: list[dict]) -> str:
    header = ("kernel", "config", "variant", "target", "regs", "smem", "spill st/ld", "occ", "bar", "v128 ld/st")
    rows = [header]
    for r in results:
        if not r["ok"]:
            rows.append((r["kernel"], r.get("config_label", "?"), r.get("variant", "?"), r["target"], "FAILED",
                         "", "", "", "", ""))
            continue
        occ = r["occupancy"]
        rows.append((r["kernel"], r["config_label"], r["variant"], r["target"], str(r["registers"]), str(r["smem"]),
                     f"{r['spill_stores']}/{r['spill_loads']}", f"{occ['ctas']}x{r['config'].get('num_warps', 4)}",
                     str(r["barriers"]), f"{r['vector_loads']}/{r['vector_stores']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_summary(results: list[dict]) -> str:
    """Per kernel and target: compiles, failures, registers, max shared memory, fewest resident warps, most
    barriers, spilling compiles, CPU seconds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["kernel"], r["target"]), []).append(r)
    lines = [f"{'kernel':28} {'target':7} {'compiles':>8} {'failed':>6} {'regs':>7} {'smem':>6} {'warps':>5} "
             f"{'bar':>4} {'spill':>5} {'cpu s':>6}"]
    for (kernel, target), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        regs = f"{min(r['registers'] for r in ok)}-{max(r['registers'] for r in ok)}" if ok else "-"
        smem = max((r["smem"] for r in ok), default=0)
        warps = min((r["occupancy"]["warps"] for r in ok), default=0)
        barriers = max((r["barriers"] for r in ok), default=0)
        spills = sum(1 for r in ok if r["spill_stores"] or r["spill_loads"])
        cpu = sum(r.get("cpu_seconds", 0) for r in rs)
        lines.append(f"{kernel:28} {target:7} {len(rs):8} {len(rs) - len(ok):6} {regs:>7} {smem:6} {warps:5} "
                     f"{barriers:4} {spills:5} {cpu:6.1f}")
    return "\n".join(lines)
