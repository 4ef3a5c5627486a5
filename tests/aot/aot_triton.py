"""Triton version shims and plumbing of the ahead-of-time check (``aot_compile.py``): building an
``ASTSource``, the ptxas Triton uses and its options, capturing Triton's own ptxas log, discovering the
package's kernels. Checked with Triton 3.6 and 3.9."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


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


def ptxas_command(capability: int, ptx_file: str, fmad: bool = False, extra: bool = True) -> list[str]:
    """ptxas as Triton runs it: ``--fmad=false`` when FMA contraction is off (every launcher's setting);
    ``extra=False`` leaves out Triton's register-allocation option."""
    options = _triton_ptxas_extra_options() if extra else []
    return [ptxas_path(capability), "-lineinfo", *([] if fmad else ["--fmad=false"]), "-v", *options,
            f"--gpu-name={arch_name(capability)}", ptx_file, "-o", os.devnull]


def reg_alloc_option() -> bool:
    """Whether this Triton runs ptxas with ``--regAllocOptLevel=2`` (3.9 on: a workaround for a ptxas 13
    bug, under which ptxas sometimes spills a register or two with most of its registers unused)."""
    return bool(_triton_ptxas_extra_options())


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


def cpu_seconds() -> float:
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


def run_ptxas(capability: int, ptx: str, name: str, fmad: bool = False, extra: bool = True) -> str:
    """``ptxas -v`` on ``ptx`` for the target (the log; the cubin is discarded)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx_file = os.path.join(tmp, f"{name}.ptx")
        Path(ptx_file).write_text(ptx)
        proc = subprocess.run(ptxas_command(capability, ptx_file, fmad, extra), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stderr + proc.stdout




def nvdisasm_path() -> str:
    """The ``nvdisasm`` shipped in the Triton wheel (next to its ptxas)."""
    return str(Path(ptxas_path(90)).with_name("nvdisasm"))


def sass(cubin: bytes) -> str:
    """The SASS listing of a cubin (``nvdisasm -c``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(cubin)
        proc = subprocess.run([nvdisasm_path(), "-c", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvdisasm failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout
