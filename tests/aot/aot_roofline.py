"""The compiled-code half of the static roofline: each kernel at the LM shapes, compiled for sm_90a (H100)
and sm_100a (B200) as its launcher launches it (default config), read from its SASS.

    python tests/aot/aot_roofline.py --write bench/roofline_data.py     # regenerate the checked-in data

For each (kernel, dtype, D): the *hot region* of the SASS (``nvdisasm`` from the Triton wheel): the whole
program for kernels that do their work once per program, or the loop that does it (the innermost loop with
the most global loads, or for the per-id StableEmbedding backward the loop over runs: the one with
barriers); the SASS instructions in it (each issued once per warp) times the warps; the bytes one pass over
the region moves, from the tile the launcher derives (ids, rows read, rows written, statistics; see
:data:`CASES`); registers and shared memory from ``ptxas -v``, hence the programs resident per SM. The
model itself (machine balance, verdicts) is ``triton_embed.bench.roofline``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import re
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import aot_read  # noqa: E402
import aot_targets  # noqa: E402
from aot_compile import LAUNCH_OPTIONS, _init_worker, build_signature, kernel_configs  # noqa: E402
from aot_triton import capture_triton_ptxas_log, load_kernel, load_specs, make_source, run_ptxas, sass  # noqa: E402

DIMS = (768, 2048, 4096)
DTYPES = {"bf16": 2, "fp32": 4}
#: Tokens per run assumed for the per-id StableEmbedding backward: N/U of the LM shapes' Zipf draws is 2.4-3.1.
TOKENS_PER_RUN = 3
TARGETS = {"H100": "sm_90a", "B200": "sm_100a"}


def _case(kernel: str, dt: str, dim: int) -> dict[str, Any] | None:
    """The spec case the launchers use for this kernel at an LM shape (None: not launched there)."""
    row = {"w": dt, "idx": "i64", "dim": dim}
    cases = {
        "gather_rows_kernel": row,
        "claim_rows_kernel": {"idx": "i64"} if dt == "fp32" and dim == DIMS[0] else None,
        "renorm_rows_kernel": {**row, "NORM_KIND": 2},
        "embedding_bwd_pieces_kernel": {"w": dt, "idx": "i64", "EVERY_RUN": False, "dim": dim},
        "embedding_bwd_rows_kernel": {**row, "SCALE_BY_FREQ": False, "PARAM_GRADS": False},
        "layer_norm_fwd_kernel": {"x": dt, "params": "x", "HAS_WEIGHT": True, "HAS_BIAS": True, "dim": dim},
        "layer_norm_bwd_kernel": {"x": dt, "params": "x", "HAS_WEIGHT": True, "dim": dim},
        "layer_norm_param_grad_kernel": {"x": dt, "params": "x", "HAS_WEIGHT": True, "HAS_BIAS": True, "dim": dim},
        "stable_embedding_fwd_kernel": {**row, "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
        # bf16 tables take the per-token backward; float32 tables the per-id one.
        "stable_embedding_bwd_kernel": {**row, "MODE": 0, "ALL_ROWS": False, "HAS_WEIGHT": True, "cast": "fp32"}
        if dt == "bf16" else None,
        "stable_embedding_runs_kernel": {**row, "SCALE_BY_FREQ": False, "HAS_WEIGHT": True} if dt == "fp32" else None,
        "quantized_gather_kernel": {"w": dt, "FORMAT": 0, "idx": "i64", "dim": dim},
        "quantized_stable_fwd_kernel": {"w": dt, "FORMAT": 0, "idx": "i64", "cast": "fp32", "HAS_WEIGHT": True,
                                        "HAS_BIAS": True, "dim": dim},
        "quantized_stable_bwd_kernel": {"w": dt, "FORMAT": 0, "idx": "i64", "cast": "fp32", "HAS_WEIGHT": True,
                                        "dim": dim},
    }
    return cases.get(kernel)


def _bytes(kernel: str, c: dict[str, int], e: int, dim: int) -> tuple[int, int]:
    """(bytes one pass over the hot region moves, of which loaded) for launched config ``c``: the table
    gives (loaded, stored) per kernel; ``e`` bytes per row element, int64 ids, float32 statistics."""
    t, d = c.get("BLOCK_T", 1), min(c.get("BLOCK_D", dim), dim)
    table: dict[str, tuple[int, int]] = {
        "gather_rows_kernel": (t * 8 + t * d * e, t * d * e),
        "claim_rows_kernel": (1024 * 8 + 1024 * 4, 1024 * 4),  # ids; each owner read and written once
        "renorm_rows_kernel": (t * 12 + t * dim * e, 0),  # ids, owners, the row read (a row within max_norm)
        "embedding_bwd_pieces_kernel": (4 * (8 + d * e), 0),  # UNROLL rows per pass: token, gradient row
        "embedding_bwd_rows_kernel": (4 * (8 + d * e), 0),
        "layer_norm_fwd_kernel": (t * dim * e, t * dim * e + t * 8),  # x; y, mean, rstd written
        "layer_norm_bwd_kernel": (2 * t * dim * e + t * 8, t * dim * e),  # x, dy, mean, rstd; dx written
        "layer_norm_param_grad_kernel": (2 * 32 * d * 4, 0),  # PARTIAL_GROUP rows of both partials
        "stable_embedding_fwd_kernel": (t * (8 + dim * e), t * (dim * e + 8)),
        "stable_embedding_bwd_kernel": (t * (8 + 2 * dim * e + 8), t * dim * e),
        "stable_embedding_runs_kernel": (TOKENS_PER_RUN * (8 + dim * e) + dim * e + 8 + 8, dim * e),
        "quantized_gather_kernel": (t * 8 + t * d + t * 4, t * d * e),  # int8 codes and row scale
        "quantized_stable_fwd_kernel": (t * (8 + dim + 4), t * (dim * e + 8)),
        "quantized_stable_bwd_kernel": (t * (8 + dim + 4 + dim * e + 8), 0),
    }
    loaded, stored = table[kernel]
    return loaded + stored, loaded


#: Which region of the SASS is hot: "program", "loop" (innermost, most global loads), "runs" (with barriers),
#: "norm pass" (the program without the loop that stores: the renorm's second pass, which rows within max_norm
#: skip).
REGION = {"renorm_rows_kernel": "norm pass", "embedding_bwd_pieces_kernel": "loop", "embedding_bwd_rows_kernel": "loop", "layer_norm_bwd_kernel": "loop",
          "layer_norm_param_grad_kernel": "loop", "stable_embedding_bwd_kernel": "loop",
          "quantized_stable_bwd_kernel": "loop", "stable_embedding_runs_kernel": "runs"}

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", re.M)
_LABEL = re.compile(r"^(\.L_x_\d+|\$[\w$.]+):", re.M)
_BRANCH = re.compile(r"\bBRA(?:\.[A-Z.]+)?\s+`?\(?(\.L_x_\d+)")


def hot_region(listing: str, kind: str) -> tuple[int, int, str]:
    """(instructions, global loads, description) of the hot region of a SASS listing (see the module doc).
    The kernel's straight path ends at its first unpredicated ``EXIT``: what follows is out of line (the
    shuffles' fallbacks for divergent warps, a division's slow path, the trailing self-branch) and is left
    out, as is the error record's block (run only for an out-of-range id). Loops are found by their
    backward branches."""
    main = listing.split("\n$__internal", 1)[0]
    instructions: list[tuple[int, str]] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    for line in main.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        hit = _LINE.match(line)
        if hit:
            address = int(hit.group(1), 16)
            labels.update({name: address for name in pending})
            pending = []
            instructions.append((address, hit.group(2).strip()))
            if hit.group(2).strip() == "EXIT":
                break
    loops = []
    for address, text in instructions:
        target = _BRANCH.search(text)
        if target and target.group(1) in labels and labels[target.group(1)] <= address:
            body = [t for a, t in instructions if labels[target.group(1)] <= a <= address]
            if len(body) > 2:
                loops.append((labels[target.group(1)], address, body))

    def loads(body: list[str]) -> int:
        return sum(1 for t in body if re.search(r"\bLDG(?:\.|\s)", t))

    # Code that runs only when an id is out of range: the error record's block, which a forward branch
    # skips and which claims the record with a compare-and-swap (kernels/errors.py). Not run in a normal call.
    error_block: set[int] = set()
    for address, text in instructions:
        target = _BRANCH.search(text)
        if target and target.group(1) in labels and labels[target.group(1)] > address:
            skipped = [(a, t) for a, t in instructions if address < a < labels[target.group(1)]]
            if any(re.search(r"\bATOMG?\.\S*CAS", t) for _, t in skipped):
                error_block.update(a for a, _ in skipped)
    instructions = [(a, t) for a, t in instructions if a not in error_block]

    if kind == "norm pass":  # the renorm without its second pass (skipped for rows within max_norm)
        rescaling = [lp for lp in loops if any(re.search(r"\bSTG(?:\.|\s)", t) for t in lp[2])]
        chosen = [t for a, t in instructions if not any(lp[0] <= a <= lp[1] for lp in rescaling)]
        what = "norm pass"
    elif kind == "program" or not loops:
        chosen, what = [t for _, t in instructions], "program"
    elif kind == "runs":
        chosen, what = max(loops, key=lambda lp: (sum("BAR" in t for t in lp[2]), -len(lp[2])))[2], "loop over runs"
    else:
        innermost = [lp for lp in loops if not any(o is not lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
        chosen, what = max(innermost, key=lambda lp: (loads(lp[2]), len(lp[2])))[2], "row loop"
    return len([t for t in chosen if not t.startswith("NOP")]), loads(chosen), what


def measure(job: tuple[str, str, str, int]) -> dict[str, Any]:
    """Compile one (kernel, dtype, D, target) and read its hot region; never raises."""
    key, dt, target_name, dim = job
    spec = load_specs("aot_specs:SPECS")[key]
    out: dict[str, Any] = {"kernel": spec.name, "dtype": dt, "dim": dim, "target": target_name}
    try:
        import triton

        fn = load_kernel(spec)
        case = _case(spec.name, dt, dim)
        config = spec.launched(kernel_configs(spec, list(fn.arg_names))[0], case, "cuda")
        variant = spec.variant(case)
        signature, constexprs = build_signature(fn, spec, variant, config)
        target = aot_targets.gpu_target(target_name)
        with capture_triton_ptxas_log():
            compiled = triton.compile(make_source(fn, signature, constexprs, variant.aligned, target), target=target,
                                      options={k: config[k] for k in LAUNCH_OPTIONS if k in config})
        ptx = compiled.asm["ptx"]
        info = aot_read.parse_ptxas(run_ptxas(aot_targets.capability(target_name), ptx, spec.name))
        warps = config.get("num_warps", 4)
        smem = info["smem_static"] + int(getattr(compiled.metadata, "shared", 0) or 0)
        instructions, loads, region = hot_region(sass(compiled.asm["cubin"]), REGION.get(spec.name, "program"))
        moved, loaded = _bytes(spec.name, config, DTYPES[dt], dim)
        out.update(config={k: v for k, v in config.items() if k != "enable_fp_fusion"}, region=region,
                   instructions=instructions * warps, global_loads=loads, bytes=moved, bytes_loaded=loaded,
                   registers=info["registers"], smem=smem,
                   occupancy=aot_targets.occupancy(target_name, warps, info["registers"], smem))
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return out


def jobs(dims: tuple[int, ...] = DIMS, targets: tuple[str, ...] = tuple(TARGETS.values())
         ) -> list[tuple[str, str, str, int]]:
    out = []
    for key, spec in load_specs("aot_specs:SPECS").items():
        for dt in DTYPES:
            for dim in dims:
                if _case(spec.name, dt, dim) is not None:
                    out += [(key, dt, target, dim) for target in targets]
    return out


def differences(fresh: list[dict[str, Any]], saved: list[dict[str, Any]]) -> list[str]:
    """Where freshly measured rows differ from the saved ones (the same Triton must give the same code)."""
    index = {(r["kernel"], r["dtype"], r["dim"], r["target"]): r for r in saved}
    out = []
    for r in fresh:
        old = index.get((r["kernel"], r["dtype"], r["dim"], r["target"]))
        if old is None:
            out.append(f"{r['kernel']} {r['dtype']} D={r['dim']} {r['target']}: not in the saved data")
            continue
        for field in ("instructions", "bytes", "bytes_loaded", "registers", "config", "region", "error"):
            if r.get(field) != old.get(field):
                out.append(f"{r['kernel']} {r['dtype']} D={r['dim']} {r['target']}: {field} {old.get(field)} -> "
                           f"{r.get(field)}")
    return out


def run(workers: int | None = None, work: list[tuple[str, str, str, int]] | None = None) -> list[dict[str, Any]]:
    _init_worker()
    work = work if work is not None else jobs()
    workers = workers or max(1, min(8, len(os.sched_getaffinity(0))))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        return list(pool.map(measure, work, chunksize=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="write the rows as a Python module here (bench/roofline_data.py)")
    parser.add_argument("--check", action="store_true",
                        help="measure D = 4096 on sm_90a only and compare with bench/roofline_data.py")
    args = parser.parse_args(argv)
    import triton

    if args.check:
        from triton_embed.bench.roofline_data import ROWS, TRITON_VERSION

        if TRITON_VERSION != triton.__version__:
            print(f"SKIP: the data is from Triton {TRITON_VERSION}, this is {triton.__version__}")
            return 0
        problems = differences(run(work=jobs((4096,), ("sm_90a",))), ROWS)
        print("\n".join(problems) or "the saved roofline data matches the compiled code")
        return 1 if problems else 0
    rows = run()

    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"FAILED {r['kernel']} {r['dtype']} D={r['dim']} {r['target']}: {r['error']}")
    if args.write and not failed:
        body = "\n".join("    {" + ", ".join(f"{k!r}: {r[k]!r}" for k in sorted(r)) + "}," for r in rows)
        text = ('"""Generated by ``python tests/aot/aot_roofline.py --write bench/roofline_data.py``: each kernel\'s hot\n'
                'region at the LM shapes, read from its SASS (see ``roofline.py``), one row per line. Do not edit by '
                'hand."""\n\n'
                f"TRITON_VERSION = {triton.__version__!r}\nROWS = [\n{body}\n]\n")
        Path(args.write).write_text(text)
    from triton_embed.bench import roofline

    print(roofline.table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
