"""Ahead-of-time compile every Triton kernel for every target GPU on a machine without a GPU.

    python tests/aot/aot_compile.py --table                       # the default (sampled) check, all six targets
    python tests/aot/aot_compile.py --all-configs --targets 90     # every config of every case, one target

For each kernel spec in ``tests/aot/aot_specs.py`` this calls ``triton.compile`` with an explicit ``GPUTarget``
(``aot_targets.py``: sm_80, sm_90a, sm_100a, sm_120a, gfx942, gfx950) and the launch options the launcher
passes on that backend, after checking that the backend's compiler knows every one of them (Triton's
runtime raises a KeyError for an unknown option). It then reads the compiled code (``aot_read.py``):
registers, spills, shared memory, occupancy, 128-bit loads and stores, barriers, approximate math, FMA, and
the layout of every reduction. ``aot_rules.py`` turns those readings into failures.

On NVIDIA targets the register and spill figures come from ``ptxas -v`` (the wheel's ``ptxas``): Triton runs
it itself to build the cubin and its log is captured (``knobs.nvidia.dump_ptxas_log``); on a Triton cache
hit ptxas is run here with Triton's options. On AMD targets they come from the AMDGCN listing's metadata.

Which compiles (the *sampled* default): every case of every kernel (``KernelSpec.cases(0)``: every dtype
row and every flag setting) on every target, each with one config, the config index rotating with the case
and the target so that every config is compiled somewhere; plus, for the kernels whose sums must not move
with the config (``same_sums``), every config of every case on one target per backend (sm_90a, gfx942), so
that their reduction layouts can be compared. ``--all-configs`` compiles every config x its cases x every
target (``AOT_EXHAUSTIVE=1`` widens the cases to the full rows x settings product). It also discovers every
``*_kernel`` JIT function in ``triton_embed.kernels`` and reports those without a spec.

Compiles run in a pool of processes (``--jobs``, default: the CPUs available, at most 8). It must run
*without* ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled), which is why
``tests/aot/test_aot_compile.py`` starts it as a subprocess. Works with Triton 3.6 through 3.9.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import aot_read  # noqa: E402
from aot_read import record_atomics  # noqa: E402,F401 - the error record's atomics, read in the PTX
import aot_rules  # noqa: E402
import aot_targets  # noqa: E402
from aot_triton import (  # noqa: E402
    capture_triton_ptxas_log, cpu_seconds, discover, load_kernel, load_specs, make_source, ptxas_command,
    reg_alloc_option, run_ptxas, sass,
)

LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion", "waves_per_eu")
#: Config keys that are budgets a launcher turns into constexprs (ops/tiles.py), kept for launch_config.
BUDGET_KEYS = ("ELEMS",)
DEFAULT_SPECS = "aot_specs:SPECS"
DEFAULT_PACKAGE = "triton_embed.kernels"
#: Where ``same_sums`` kernels compile every config (one target per backend).
SWEEP_TARGETS = ("sm_90a", "gfx942")
ELEMENT_BYTES = {"fp64": 8, "i64": 8, "fp32": 4, "i32": 4, "bf16": 2, "fp16": 2, "i16": 2, "i8": 1}


def kernel_configs(spec, arg_names: list[str]) -> list[dict[str, int]]:
    """The family's configs restricted to the constexprs this kernel takes, duplicates dropped."""
    out = []
    for config in spec.config_list():
        kept = {k: v for k, v in config.items() if k in arg_names or k in LAUNCH_OPTIONS or k in BUDGET_KEYS}
        if kept not in out:
            out.append(kept)
    return out


def config_label(config: dict[str, int]) -> str:
    meta = ",".join(f"{k}={v}" for k, v in config.items() if k not in LAUNCH_OPTIONS)
    return f"{meta} w{config.get('num_warps', 4)}s{config.get('num_stages', 1)}"


def build_signature(fn, spec, variant, config) -> tuple[dict[str, str], dict[str, Any]]:
    meta = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    constexprs = {**variant.constexprs, **meta}
    names = list(fn.arg_names)
    unknown = sorted(n for n in {*variant.types, *variant.constexprs} if n not in names)
    if unknown:
        raise KeyError(f"spec of {spec.name} names arguments the kernel does not take: {unknown}")
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in variant.types:
            signature[name] = variant.types[name]
        else:
            raise KeyError(f"spec of {spec.name} ({variant.label}) gives no type or value for argument {name!r}")
    return signature, {k: v for k, v in constexprs.items() if k in names}


def expected_vector(tile: tuple[str, str] | None, variant, config, warp_size: int) -> int:
    """128-bit accesses a thread needs to move its share of a ``rows x cols`` tile (at least 1)."""
    if not tile or variant.element is None:
        return 1
    rows, cols = tile
    threads = warp_size * config.get("num_warps", 4)
    return max(1, config[rows] * config[cols] * ELEMENT_BYTES[variant.element] // threads // 16)


def unknown_options(target, options: dict[str, Any]) -> tuple[list[str], Any]:
    """The options the backend's compiler does not know (each a KeyError at launch), and its parsed options."""
    from triton.compiler import make_backend

    parsed = make_backend(target).parse_options(dict(options))
    return sorted(k for k in options if k not in parsed.__dict__), parsed


def _read(result: dict, compiled, backend: str, capability: int | None, log: str, name: str,
          fn_args: list[str]) -> None:
    asm = {k: (v.decode() if isinstance(v, bytes) and k != "cubin" and k != "hsaco" else v)
           for k, v in compiled.asm.items()}
    if backend == "cuda":
        code = asm["ptx"]
        if not (aot_read._PTXAS_PATTERNS["registers"].search(log) and "spill stores" in log):
            log = run_ptxas(capability, code, name, fmad=bool(result["fp_fusion"]))  # a cache hit: no log
            result["ptxas_run_by"] = "aot_compile"
        else:
            result["ptxas_run_by"] = "triton"
        result.update(aot_read.parse_ptxas(log))
        if "err_ptr" in fn_args:  # writes the error record (kernels/errors.py)
            result["record_atomics"] = aot_read.record_atomics(code)
        if result["spill_stores"] or result["spill_loads"]:
            if reg_alloc_option():  # without Triton's register-allocation workaround too? (Not: its artefact.)
                plain = aot_read.parse_ptxas(run_ptxas(capability, code, name, bool(result["fp_fusion"]), extra=False))
                result["spills_without_reg_alloc_option"] = max(plain["spill_stores"], plain["spill_loads"])
            result["subroutine_calls"] = aot_read.count_calls(sass(compiled.asm["cubin"]))
        numerics = code
    else:
        code = asm["amdgcn"]
        result.update(aot_read.parse_amdgcn(code))
        numerics = asm["llir"]
    result["vector_loads"] = aot_read.count_vector(code, backend, "load")
    result["vector_stores"] = aot_read.count_vector(code, backend, "store")
    result["barriers"] = aot_read.count_barriers(code, backend)
    result["approx"] = aot_read.approximations(numerics, backend)
    result["fma"] = aot_read.count_fma(numerics, backend)
    result["reduce_layouts"] = aot_read.reduce_layouts(asm.get("ttgir", ""))


def compile_one(job: tuple) -> dict[str, Any]:
    """Compile one (kernel, config, case, target) and read it; never raises: failures are data."""
    source, key, config_index, rotation, case_index, target_name = job
    spec = load_specs(source)[key]
    machine = aot_targets.MACHINES[target_name]
    result: dict[str, Any] = {"kernel": spec.name, "module": spec.module, "target": target_name,
                              "backend": machine.backend, "ok": False, "error": None}
    started, cpu_started = time.perf_counter(), cpu_seconds()
    try:
        fn = load_kernel(spec)
        case = spec.cases(rotation)[case_index]
        variant = spec.variant(case)
        config = spec.launched(kernel_configs(spec, list(fn.arg_names))[config_index], case, machine.backend)
        result.update(config=config, config_label=config_label(config), variant=variant.label)
        signature, constexprs = build_signature(fn, spec, variant, config)
        target = aot_targets.gpu_target(target_name)
        options = {k: config[k] for k in LAUNCH_OPTIONS if k in config}
        unknown, parsed = unknown_options(target, options)
        if unknown:
            raise KeyError(f"launch options {unknown} are unknown to Triton's {machine.backend} backend: its runtime "
                           "raises KeyError at the launch")
        result["fp_fusion"] = bool(parsed.enable_fp_fusion)
        import triton

        with capture_triton_ptxas_log() as log:
            compiled = triton.compile(make_source(fn, signature, constexprs, variant.aligned, target),
                                      target=target, options=options)
        result["smem_dynamic"] = int(getattr(compiled.metadata, "shared", 0) or 0)
        capability = aot_targets.capability(target_name) if machine.backend == "cuda" else None
        _read(result, compiled, machine.backend, capability, log.getvalue(), spec.name, list(fn.arg_names))
        result["smem"] = result["smem_static"] + result["smem_dynamic"]
        result["occupancy"] = aot_targets.occupancy(target_name, config.get("num_warps", 4), result["registers"],
                                                    result["smem"])
        result["vector_loads_expected"] = expected_vector(spec.vector_loads, variant, config, machine.warp_size)
        result["vector_stores_expected"] = expected_vector(spec.vector_stores, variant, config, machine.warp_size)
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is data for the report
        message = f"{type(exc).__name__}: {exc}"
        result["error"] = message if len(message) < 4000 else message[:4000] + " ..."
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["cpu_seconds"] = round(cpu_seconds() - cpu_started, 3)
    result["rules"] = aot_rules.rules_of(spec)
    return result


def plan(source: str, only: set[str] | None, targets: tuple[str, ...], all_configs: bool = False
         ) -> tuple[list[tuple], list[dict]]:
    """The jobs of a spec set (see the module docstring), and the specs that cannot be expanded."""
    jobs, bad, seen = [], [], set()
    sweep = {t for t in SWEEP_TARGETS if t in targets}
    for key, spec in load_specs(source).items():
        if only and spec.name not in only and key not in only:
            continue
        try:
            fn = load_kernel(spec)
            configs = kernel_configs(spec, list(fn.arg_names))
            wanted = []  # (config index, case rotation, case index, target)
            for ti, target in enumerate(targets):
                rotations = range(len(configs)) if all_configs else (0,)
                for rotation in rotations:
                    for vi in range(len(spec.cases(rotation))):
                        if all_configs:
                            chosen = [rotation]
                        elif spec.same_sums and target in sweep:
                            chosen = range(len(configs))
                        else:
                            chosen = [(vi + ti) % len(configs)]
                        wanted += [(ci, rotation, vi, target) for ci in chosen]
            for ci, rotation, vi, target in wanted:
                case = spec.cases(rotation)[vi]
                launched = spec.launched(configs[ci], case, aot_targets.backend_of(target))
                build_signature(fn, spec, spec.variant(case), launched)  # fail early on a spec that does not fit
                identity = (key, spec.variant(case).label, tuple(sorted(launched.items())), target)
                if identity not in seen:
                    seen.add(identity)
                    jobs.append((source, key, ci, rotation, vi, target))
        except Exception as exc:  # noqa: BLE001
            bad.append({"kernel": spec.name, "module": spec.module, "error": f"{type(exc).__name__}: {exc}"})
    # Interleave the kernels, so that the slow ones do not all queue at the end of the pool.
    order = {key: i for i, key in enumerate(load_specs(source))}
    jobs.sort(key=lambda job: (job[4], job[2], job[5], order[job[1]]))
    return jobs, bad


def _init_worker() -> None:
    # TRITON_INTERPRET is read when @triton.jit runs: drop it before any kernel module is imported. (Only in
    # the compile processes: importing this module, as the pytest process does, changes nothing.)
    os.environ.pop("TRITON_INTERPRET", None)
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    warnings.filterwarnings("ignore")


def run(source: str = DEFAULT_SPECS, package: str | None = DEFAULT_PACKAGE, jobs: int | None = None,
        only: set[str] | None = None, targets: tuple[str, ...] = aot_targets.ALL_TARGETS,
        all_configs: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    _init_worker()
    import triton

    report: dict[str, Any] = {"triton_version": triton.__version__, "spec_source": source,
                              "targets": list(targets), "all_configs": all_configs}
    specs = load_specs(source)
    if package:
        found = discover(package)
        report["discovered"] = found["kernels"]
        report["unclassified"] = found["unclassified"]
        report["import_errors"] = found["import_errors"]
        report["missing_specs"] = [k["key"] for k in found["kernels"] if k["key"] not in specs]
    report["spec_keys"] = sorted(specs)
    report["needs_vector_loads"] = sorted(s.name for s in specs.values() if s.needs_vector_loads)
    report["ptxas"] = {t: ptxas_command(aot_targets.capability(t), "<ptx>") for t in targets
                       if aot_targets.backend_of(t) == "cuda"}
    work, bad = plan(source, only, targets, all_configs)
    order = {key: i for i, key in enumerate(specs)}
    report["bad_specs"] = bad
    workers = jobs or max(1, min(8, len(os.sched_getaffinity(0))))
    report["workers"] = workers
    if workers > 1 and len(work) > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            results = list(pool.map(compile_one, work, chunksize=1))
    else:
        results = [compile_one(job) for job in work]
    report["results"] = sorted(results, key=lambda r: (order.get(f"{r['module']}.{r['kernel']}", 0),))
    report["elapsed_s"] = round(time.perf_counter() - started, 2)
    report["compile_cpu_s"] = round(sum(r["cpu_seconds"] for r in results), 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--specs", default=DEFAULT_SPECS, help="MODULE:ATTR of the spec dict (default %(default)s)")
    parser.add_argument("--discover", default=DEFAULT_PACKAGE,
                        help="package or module whose *_kernel functions must all have specs ('' for none)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("AOT_JOBS", "0")) or None,
                        help="compile processes (default: available CPUs, at most 8; env AOT_JOBS)")
    parser.add_argument("--only", help="comma-separated kernel names to compile")
    parser.add_argument("--targets", default="all",
                        help="target names or capabilities, comma-separated, or 'all' (default %(default)s: "
                             + ", ".join(aot_targets.ALL_TARGETS) + ")")
    parser.add_argument("--all-configs", action="store_true",
                        default=os.environ.get("AOT_ALL_CONFIGS", "0") not in ("0", ""),
                        help="every config of every case on every target (env AOT_ALL_CONFIGS=1)")
    parser.add_argument("--table", action="store_true", help="print the per-compile table")
    args = parser.parse_args(argv)
    report = run(args.specs, args.discover or None, args.jobs, set(args.only.split(",")) if args.only else None,
                 aot_targets.parse_targets(args.targets), args.all_configs)
    report["failures"] = aot_rules.failures(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.table:
        print(aot_rules.format_table(report["results"]))
    print(aot_rules.format_summary(report["results"]))
    for rule, problems in report["failures"].items():
        for problem in problems[:10]:
            print(f"FAIL [{rule}] {problem}")
    total = sum(len(p) for p in report["failures"].values())
    print(f"{len(report['results'])} compiles for {', '.join(report['targets'])}: {total} failures, "
          f"{report['elapsed_s']} s on {report['workers']} processes ({report['compile_cpu_s']} CPU s compiling)")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
