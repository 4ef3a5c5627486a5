"""Ahead-of-time compile every Triton kernel for sm_80 and sm_90 on a machine without a GPU.

    python tests/aot_compile.py --json report.json --table

For each kernel spec in ``tests/aot_specs.py`` (every config of its autotune family x its dtype/flag
variants x every target) this calls ``triton.compile`` with an explicit ``GPUTarget`` and reads the
``ptxas -v`` report of the generated PTX (``compiled.asm["ptx"]``), from the ``ptxas`` shipped in the Triton
wheel: registers, spill stores/loads, stack, shared memory (static from ptxas plus Triton's dynamic
allocation), and how many 128-bit global loads the PTX has. Triton runs ``ptxas -v`` itself to build the
cubin; its log is captured (``knobs.nvidia.dump_ptxas_log``) so that ptxas runs once per compile with
Triton's exact options; on a Triton cache hit ptxas is run here with the same options. It also discovers
every ``*_kernel`` JIT function in ``triton_embed.kernels`` and reports those without a spec.

Compiles run in a pool of processes (``--jobs``, default: the CPUs available, at most 8).

It must run *without* ``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` gives objects that cannot
be compiled), which is why ``tests/test_aot_compile.py`` starts it as a subprocess. Works with Triton
3.6 through 3.9; the version differences are handled in :func:`make_source` and :func:`ptxas_command`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import inspect
import io
import json
import multiprocessing
import os
import pkgutil
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion")
#: Config keys that are budgets a launcher turns into constexprs (ops/tiles.py), kept for launch_config.
BUDGET_KEYS = ("ELEMS",)
DEFAULT_SPECS = "aot_specs:SPECS"
DEFAULT_PACKAGE = "triton_embed.kernels"
#: Spill bytes (stores and loads each) tolerated per compile under Triton before 3.7, whose register
#: allocation leaves a few rare variants (a 16-values-per-thread LayerNorm tile at D = 8192 without affine
#: parameters, float64 at D = 4096, a 4-bit row streamed at D = 16384) with 12-32 bytes of stack traffic.
#: None at all from Triton 3.7 on.
OLD_TRITON_SPILL_BYTES = 32


def spill_allowance(version: str | None = None) -> int:
    """Spill bytes tolerated per compile for the given Triton version (default: the installed one)."""
    if version is None:
        import triton

        version = triton.__version__
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return OLD_TRITON_SPILL_BYTES if (major, minor) < (3, 7) else 0


def spilling(results: list[dict], allowance: int) -> list[dict]:
    """The compiled results whose spill stores or loads exceed ``allowance`` bytes."""
    return [r for r in results if r["ok"] and max(r["spill_stores"], r["spill_loads"]) > allowance]


# --------------------------------------------------------------------------------------------------
# Triton version shims
# --------------------------------------------------------------------------------------------------

def unwrap_jit(obj):
    """The JITFunction behind an object (autotune/heuristics wrappers keep it in ``.fn``), else None."""
    from triton.runtime.jit import JITFunction

    for _ in range(4):
        if isinstance(obj, JITFunction):
            return obj
        obj = getattr(obj, "fn", None)
        if obj is None:
            return None
    return None


def make_source(fn, signature: dict[str, str], constexprs: dict[str, Any], aligned: tuple[str, ...], target):
    """An ``ASTSource`` for ``fn``: ``signature`` maps every argument to a type or ``"constexpr"``, the
    constexpr values go in ``constexprs={name: value}`` (Triton >= 3.3; earlier 3.x called the argument
    ``constants``), and the ``aligned`` arguments get ``tt.divisibility = 16`` through ``attrs``, in the
    format the backend gives the runtime's own ``"D"`` specialisation. Checked with Triton 3.6 and 3.9."""
    from triton.compiler import ASTSource, make_backend

    names = list(fn.arg_names)
    parse_attr = make_backend(target).parse_attr
    attrs = {(names.index(a),): parse_attr("D") for a in aligned}
    spelling = "constexprs" if "constexprs" in inspect.signature(ASTSource.__init__).parameters else "constants"
    return ASTSource(fn=fn, signature=signature, attrs=attrs, **{spelling: constexprs})


def gpu_target(capability: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", capability, 32)


def arch_name(capability: int) -> str:
    """The ``--gpu-name`` Triton itself gives ptxas (``sm_90a`` for Hopper)."""
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability

        return sm_arch_from_capability(capability)
    except ImportError:
        return f"sm_{capability}{'a' if capability >= 90 else ''}"


def ptxas_path(capability: int) -> str:
    """The ptxas Triton uses for this target: it ships in the wheel (``backends/nvidia/bin``)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            return get_ptxas(capability).path
        except TypeError:  # versions whose get_ptxas takes no arch
            return get_ptxas().path
    except (ImportError, AttributeError):
        pass
    try:
        import triton

        return triton.knobs.nvidia.ptxas.path
    except AttributeError:
        import triton.backends.nvidia as nv

        return str(Path(nv.__file__).parent / "bin" / "ptxas")


def _triton_ptxas_extra_options() -> list[str]:
    """Options Triton adds to its own ptxas call that change register allocation (3.9: --regAllocOptLevel=2)."""
    try:
        from triton.backends.nvidia.compiler import CUDABackend

        src = inspect.getsource(CUDABackend.make_cubin)
    except Exception:
        return []
    return [opt for opt in ("--regAllocOptLevel=2",) if opt in src]


def ptxas_command(capability: int, ptx_file: str) -> list[str]:
    return [ptxas_path(capability), "-lineinfo", "-v", *_triton_ptxas_extra_options(),
            f"--gpu-name={arch_name(capability)}", ptx_file, "-o", os.devnull]


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------

def discover(package: str) -> dict[str, list[dict[str, str]]]:
    """Every ``@triton.jit`` function defined in ``package`` (or in that one module).

    ``kernels``: names ending in ``_kernel``; ``unclassified``: public names that neither end in ``_kernel``
    nor start with ``_`` (device helpers are ``_private``), so that a kernel cannot escape the check
    through its name; ``import_errors``: modules that failed to import."""
    root = importlib.import_module(package)
    modules = [root]
    errors = []
    if hasattr(root, "__path__"):
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
            name = f"{package}.{info.name}"
            try:
                modules.append(importlib.import_module(name))
            except Exception as exc:  # a module that cannot even be imported is a failure, not a skip
                errors.append({"module": name, "error": f"{type(exc).__name__}: {exc}"})
    kernels, unclassified, seen = [], [], set()
    for module in modules:
        for attr, obj in sorted(vars(module).items()):
            fn = unwrap_jit(obj)
            if fn is None:
                continue
            defined_in = getattr(fn, "module", None) or fn.fn.__module__
            name = fn.fn.__name__
            if defined_in != module.__name__ or (defined_in, name) in seen:
                continue  # re-exported from elsewhere
            seen.add((defined_in, name))
            entry = {"module": defined_in, "name": name, "key": f"{defined_in}.{name}"}
            if name.endswith("_kernel"):
                kernels.append(entry)
            elif not name.startswith("_"):
                unclassified.append(entry)
    return {"kernels": kernels, "unclassified": unclassified, "import_errors": errors}


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------

_SPECS: dict[str, dict] = {}


def load_specs(source: str) -> dict:
    if source not in _SPECS:
        module, attr = source.split(":")
        specs = getattr(importlib.import_module(module), attr)
        _SPECS[source] = specs if isinstance(specs, dict) else {s.key: s for s in specs}
    return _SPECS[source]


def load_kernel(spec):
    fn = unwrap_jit(getattr(importlib.import_module(spec.module), spec.name))
    if fn is None:
        raise TypeError(f"{spec.key} is not a @triton.jit function")
    return fn


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


_PTXAS_PATTERNS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "smem_static": re.compile(r"(\d+) bytes smem"),
}
# ld.global[.nc][.L1::evict_last][...].v4.b32 and friends; the width is lanes x bits.
_VECTOR_LOAD = re.compile(r"\bld\.global(?:\.[A-Za-z0-9_:]+)*?\.v(\d+)\.[a-z]+(\d+)\b")
# A predicated 64-bit global atomic and its qualifiers (kernels/errors.py's record: claim, fields, publish).
_RECORD_ATOMIC = re.compile(r"@(%p\d+)\s+atom\.global((?:\.[a-z]+)+?)\.(cas|exch)\.b64\b")


def parse_ptxas(log: str) -> dict[str, int]:
    out = {}
    for key, pattern in _PTXAS_PATTERNS.items():
        values = [int(v) for v in pattern.findall(log)]
        out[key] = max(values) if values else 0
    return out


def record_atomics(ptx: str) -> dict[str, Any]:
    """The error record's atomics in ``ptx`` (kernels/errors.py): compare-and-swaps (the claim), exchanges
    with release semantics (the publish) and relaxed ones (the fields), how many of each are at system scope
    (visible to the host through pinned memory), and the predicates that issue them (one: one thread)."""
    found = [(pred, set(quals.strip(".").split(".")), op) for pred, quals, op in _RECORD_ATOMIC.findall(ptx)]
    return {
        "cas": sum(op == "cas" for _, _, op in found),
        "publish": sum(op == "exch" and "release" in q for _, q, op in found),
        "fields": sum(op == "exch" and "release" not in q for _, q, op in found),
        "system_scope": sum("sys" in q for _, q, _ in found),
        "total": len(found),
        "predicates": sorted({pred for pred, _, _ in found}),
    }


def count_vector_loads(ptx: str, min_bits: int = 128) -> int:
    return sum(1 for lanes, bits in _VECTOR_LOAD.findall(ptx) if int(lanes) * int(bits) >= min_bits)


def expected_vector_loads(spec, variant, config) -> int:
    """128-bit loads a thread needs to read its share of the kernel's main tile (at least 1)."""
    if not spec.vector_tile or variant.element is None:
        return 1
    from aot_specs import ELEMENT_BYTES

    rows, cols = spec.vector_tile
    threads = 32 * config.get("num_warps", 4)
    tile_bytes = config[rows] * config[cols] * ELEMENT_BYTES[variant.element]
    return max(1, tile_bytes // threads // 16)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): the machine-load-independent cost."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def capture_triton_ptxas_log():
    """While compiling, collect the ``ptxas -v`` log of Triton's own cubin build (``dump_ptxas_log``
    prints it), so each compile runs ptxas once: with exactly Triton's options, on the PTX it generated."""
    buf = io.StringIO()
    nvidia = getattr(getattr(sys.modules.get("triton"), "knobs", None), "nvidia", None)
    if nvidia is None or not hasattr(nvidia, "dump_ptxas_log"):
        yield buf
        return
    previous = nvidia.dump_ptxas_log
    nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        nvidia.dump_ptxas_log = previous


def run_ptxas(capability: int, ptx: str, name: str) -> str:
    """``ptxas -v`` on ``ptx`` for the target (the log; the cubin is discarded)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx_file = os.path.join(tmp, f"{name}.ptx")
        Path(ptx_file).write_text(ptx)
        proc = subprocess.run(ptxas_command(capability, ptx_file), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stderr + proc.stdout


def compile_one(job: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """Compile one (kernel, config, variant, target); never raises: failures are reported in the result."""
    source, key, config_index, variant_index, capability = job
    spec = load_specs(source)[key]
    result: dict[str, Any] = {"kernel": spec.name, "module": spec.module, "target": arch_name(capability),
                              "capability": capability, "ok": False, "error": None}
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    try:
        fn = load_kernel(spec)
        config = kernel_configs(spec, list(fn.arg_names))[config_index]
        variant = spec.variants(config_index)[variant_index]
        if spec.launch_config is not None:  # the tile and options the launcher derives for this case
            config = spec.launch_config(config, spec.cases(config_index)[variant_index])
        result.update(config=config, config_label=config_label(config), variant=variant.label)
        signature, constexprs = build_signature(fn, spec, variant, config)
        target = gpu_target(capability)
        import triton

        options = {k: config[k] for k in LAUNCH_OPTIONS if k in config}
        with capture_triton_ptxas_log() as log:
            compiled = triton.compile(make_source(fn, signature, constexprs, variant.aligned, target),
                                      target=target, options=options)
        ptx = compiled.asm["ptx"]
        if isinstance(ptx, bytes):
            ptx = ptx.decode()
        result["smem_dynamic"] = int(getattr(compiled.metadata, "shared", 0) or 0)
        result["vector_loads"] = count_vector_loads(ptx)
        if "err_ptr" in fn.arg_names:  # writes the error record
            result["record_atomics"] = record_atomics(ptx)
        if spec.needs_vector_loads:
            result["vector_loads_expected"] = expected_vector_loads(spec, variant, config)
        ptxas_log = log.getvalue()
        if _PTXAS_PATTERNS["registers"].search(ptxas_log) and _PTXAS_PATTERNS["spill_stores"].search(ptxas_log):
            result["ptxas_run_by"] = "triton"
        else:  # a cache hit (no ptxas run), or a Triton that does not print the log: run ptxas -v here
            result["ptxas_run_by"] = "aot_compile"
            ptxas_log = run_ptxas(capability, ptx, spec.name)
        result.update(parse_ptxas(ptxas_log))
        result["smem"] = result["smem_static"] + result["smem_dynamic"]
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is data for the report
        message = f"{type(exc).__name__}: {exc}"
        result["error"] = message if len(message) < 4000 else message[:4000] + " ..."
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 3)
    result["needs_vector_loads"] = bool(spec.needs_vector_loads)
    return result


def plan(source: str, only: set[str] | None, targets: tuple[int, ...]) -> tuple[list[tuple], list[dict]]:
    """All jobs of a spec set, and the specs that could not be expanded (kernel missing, bad spec)."""
    jobs, bad = [], []
    for key, spec in load_specs(source).items():
        if only and spec.name not in only and key not in only:
            continue
        try:
            fn = load_kernel(spec)
            configs = kernel_configs(spec, list(fn.arg_names))
            variants = [spec.variants(ci) for ci in range(len(configs))]
            for ci, config in enumerate(configs):  # fail early on a spec that does not match the kernel
                for vi, variant in enumerate(variants[ci]):
                    launched = config
                    if spec.launch_config is not None:
                        launched = spec.launch_config(config, spec.cases(ci)[vi])
                    build_signature(fn, spec, variant, launched)
        except Exception as exc:  # noqa: BLE001
            bad.append({"kernel": spec.name, "module": spec.module, "error": f"{type(exc).__name__}: {exc}"})
            continue
        for ci in range(len(configs)):
            for vi in range(len(variants[ci])):
                for cap in targets:
                    jobs.append((source, key, ci, vi, cap))
    # Interleave the kernels, so that the slow ones do not all queue at the end of the pool.
    order = {key: i for i, key in enumerate(load_specs(source))}
    jobs.sort(key=lambda job: (job[2], job[3], job[4], order[job[1]]))
    return jobs, bad


def _init_worker() -> None:
    # TRITON_INTERPRET is read when @triton.jit runs: drop it before any kernel module is imported. (Only in
    # the compile processes: importing this module, as the pytest process does, changes nothing.)
    os.environ.pop("TRITON_INTERPRET", None)
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    warnings.filterwarnings("ignore")


def run(source: str = DEFAULT_SPECS, package: str | None = DEFAULT_PACKAGE, jobs: int | None = None,
        only: set[str] | None = None, targets: tuple[int, ...] = (80, 90)) -> dict[str, Any]:
    started = time.perf_counter()
    _init_worker()
    import triton

    report: dict[str, Any] = {"triton_version": triton.__version__, "spec_source": source}
    specs = load_specs(source)
    if package:
        found = discover(package)
        report["discovered"] = found["kernels"]
        report["unclassified"] = found["unclassified"]
        report["import_errors"] = found["import_errors"]
        report["missing_specs"] = [k["key"] for k in found["kernels"] if k["key"] not in specs]
    report["spec_keys"] = sorted(specs)
    report["needs_vector_loads"] = sorted(s.name for s in specs.values() if s.needs_vector_loads)
    report["ptxas"] = {arch_name(c): ptxas_command(c, "<ptx>") for c in targets}
    work, bad = plan(source, only, targets)
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


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def format_table(results: list[dict[str, Any]]) -> str:
    header = ("kernel", "config", "variant", "target", "regs", "smem", "spill st/ld", "v128 ld")
    rows = [header]
    for r in results:
        if not r["ok"]:
            rows.append((r["kernel"], r.get("config_label", "?"), r.get("variant", "?"), r["target"],
                         "FAILED", "", "", ""))
            continue
        vec = str(r["vector_loads"])
        if r.get("needs_vector_loads"):
            vec += f"/{r['vector_loads_expected']}"
        rows.append((r["kernel"], r["config_label"], r["variant"], r["target"], str(r["registers"]),
                     str(r["smem"]), f"{r['spill_stores']}/{r['spill_loads']}", vec))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_summary(results: list[dict[str, Any]]) -> str:
    """Per kernel and target: compiles, failures, register range, max shared memory, spilling compiles."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["kernel"], r["target"]), []).append(r)
    lines = [f"{'kernel':28} {'target':7} {'compiles':>8} {'failed':>6} {'regs':>9} {'max smem':>9} {'spilling':>8} "
             f"{'cpu s':>7}"]
    for (kernel, target), rs in groups.items():
        ok = [r for r in rs if r["ok"]]
        regs = f"{min(r['registers'] for r in ok)}-{max(r['registers'] for r in ok)}" if ok else "-"
        smem = max((r["smem"] for r in ok), default=0)
        spilling = sum(1 for r in ok if r["spill_stores"] or r["spill_loads"])
        cpu = sum(r.get("cpu_seconds", 0) for r in rs)
        lines.append(f"{kernel:28} {target:7} {len(rs):8} {len(rs) - len(ok):6} {regs:>9} {smem:9} {spilling:8} "
                     f"{cpu:7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--specs", default=DEFAULT_SPECS, help="MODULE:ATTR of the spec dict (default %(default)s)")
    parser.add_argument("--discover", default=DEFAULT_PACKAGE,
                        help="package or module whose *_kernel functions must all have specs ('' for none)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("AOT_JOBS", "0")) or None,
                        help="compile processes (default: available CPUs, at most 8; env AOT_JOBS)")
    parser.add_argument("--only", help="comma-separated kernel names to compile")
    parser.add_argument("--targets", default="80,90", help="compute capabilities (default %(default)s)")
    parser.add_argument("--table", action="store_true", help="print the per-compile table")
    args = parser.parse_args(argv)
    report = run(args.specs, args.discover or None, args.jobs,
                 set(args.only.split(",")) if args.only else None,
                 tuple(int(t) for t in args.targets.split(",")))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.table:
        print(format_table(report["results"]))
    print(format_summary(report["results"]))
    failed = [r for r in report["results"] if not r["ok"]]
    spills = spilling(report["results"], 0)
    allowance = spill_allowance()
    over = spilling(report["results"], allowance)
    tolerated = f" ({len(spills) - len(over)} within this Triton's {allowance} B allowance)" if allowance else ""
    print(f"{len(report['results'])} compiles, {len(failed)} failed, {len(spills)} spilling{tolerated}, "
          f"{report['elapsed_s']} s on {report['workers']} processes ({report['compile_cpu_s']} CPU s compiling)")
    return 1 if failed or over or report.get("missing_specs") or report["bad_specs"] else 0


if __name__ == "__main__":
    sys.exit(main())
