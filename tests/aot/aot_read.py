"""Reading what Triton compiled, for the ahead-of-time check: pure text functions, no Triton import.

- NVIDIA: the ``ptxas -v`` log (registers, spills, stack, static shared memory) and the PTX (vector loads
  and stores, ``bar.sync``, approximate math, FMA);
- AMD: the AMDGCN assembly's metadata (VGPRs, SGPRs, spills, scratch, LDS, LLVM's occupancy), its
  instructions (``*_dwordx4`` loads and stores, ``s_barrier``) and the LLVM IR (approximate intrinsics,
  FMA and fast-math flags: on AMD a correctly rounded division or square root expands into FMAs itself, so
  contraction is read where it is decided, in the IR and the compile options);
- both: the layout of every ``tt.reduce`` operand in the TTGIR, which fixes the order of its sum.
"""
from __future__ import annotations

import re

_PTXAS_PATTERNS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "smem_static": re.compile(r"(\d+) bytes smem"),
}
# ld.global[.nc][.L1::evict_last][...].v4.b32 and friends; the width is lanes x bits.
_PTX_VECTOR = {
    "load": re.compile(r"\bld\.global(?:\.[A-Za-z0-9_:]+)*?\.v(\d+)\.[a-z]+(\d+)\b"),
    "store": re.compile(r"\bst\.global(?:\.[A-Za-z0-9_:]+)*?\.v(\d+)\.[a-z]+(\d+)\b"),
}
_AMD_VECTOR = {
    "load": re.compile(r"^\s*(?:global|buffer)_load_dwordx4\b", re.M),
    "store": re.compile(r"^\s*(?:global|buffer)_store_dwordx4\b", re.M),
}
#: Approximate math, by class: PTX instructions on NVIDIA; LLVM intrinsics and fast-math flags on AMD
#: (``llvm.sqrt``/``fdiv`` without ``afn``/``arcp`` are correctly rounded there; the ``amdgcn`` intrinsics
#: and ``llvm.exp2``/``llvm.log`` of float32 are the hardware's approximations).
APPROX_PTX = {
    "sqrt": re.compile(r"\bsqrt\.approx\.[a-z0-9.]+"),
    "rsqrt": re.compile(r"\brsqrt\.approx\.[a-z0-9.]+"),
    "div": re.compile(r"\bdiv\.(?:approx|full)\.[a-z0-9.]+"),
    "rcp": re.compile(r"\brcp\.approx\.[a-z0-9.]+"),
    "exp2": re.compile(r"\bex2\.approx\.[a-z0-9.]+"),
    "log2": re.compile(r"\blg2\.approx\.[a-z0-9.]+"),
    "trig": re.compile(r"\b(?:sin|cos|tanh)\.approx\.[a-z0-9.]+"),
}
APPROX_LLIR = {
    "sqrt": re.compile(r"@llvm\.amdgcn\.sqrt\.|\bcall\s+afn\b[^\n]*@llvm\.sqrt\."),
    "rsqrt": re.compile(r"@llvm\.amdgcn\.rsq\."),
    "div": re.compile(r"\bfdiv\s+(?:[a-z]+\s+)*(?:afn|arcp|fast)\b"),
    "rcp": re.compile(r"@llvm\.amdgcn\.rcp\."),
    "exp2": re.compile(r"@llvm\.amdgcn\.exp2\.|@llvm\.exp2?\.(?:v\d+)?f32\b"),
    "log2": re.compile(r"@llvm\.amdgcn\.log\.|@llvm\.log2?\.(?:v\d+)?f32\b"),
    "trig": re.compile(r"@llvm\.(?:sin|cos)\.|@llvm\.amdgcn\.(?:sin|cos)\."),
}
# A predicated 64-bit global atomic and its qualifiers (kernels/errors.py's record: claim, fields, publish).
_RECORD_ATOMIC = re.compile(r"@(%p\d+)\s+atom\.global((?:\.[a-z]+)+?)\.(cas|exch)\.b64\b")
_PTX_FMA = re.compile(r"^\s*(?:@!?%p\d+\s+)?(?:fma|mad)\.rn[a-z0-9.]*\.f(?:32|64)\b", re.M)
# Contraction in the LLVM IR: ``fmuladd`` or the ``contract``/``fast`` flags. (An explicit ``llvm.fma`` is an
# algorithm's own step, such as Triton 3.6's correctly rounded square root on AMD, not a contraction.)
_LLIR_FMA = re.compile(r"@llvm\.fmuladd\.|\b(?:contract|fast)\b")
# Triton 3.6's correctly rounded float32 square root on AMD: rsq, Newton steps by explicit FMAs, and a
# class test of the same operand for the special values. Its rsq is not an approximation of the result.
_AMD_PRECISE_SQRT = re.compile(r"@llvm\.amdgcn\.rsq\.f32\(float (%[\w.]+)\)(?=(?:.*\n){1,12}?.*@llvm\.is\.fpclass\.f32\(float \1,)")
_AMD_META = {
    "registers": re.compile(r"; TotalNumVgprs: (\d+)"),
    "vgprs": re.compile(r"\.vgpr_count:\s+(\d+)"),
    "sgprs": re.compile(r"\.sgpr_count:\s+(\d+)"),
    "vgpr_spills": re.compile(r"\.vgpr_spill_count:\s+(\d+)"),
    "sgpr_spills": re.compile(r"\.sgpr_spill_count:\s+(\d+)"),
    "stack": re.compile(r"\.private_segment_fixed_size:\s+(\d+)"),
    "smem_static": re.compile(r"\.group_segment_fixed_size:\s+(\d+)"),
    "llvm_occupancy": re.compile(r"; Occupancy: (\d+)"),
}


def _max_int(pattern: re.Pattern, text: str) -> int:
    values = [int(v) for v in pattern.findall(text)]
    return max(values) if values else 0


def parse_ptxas(log: str) -> dict[str, int]:
    """registers, stack, spill_stores, spill_loads, smem_static (bytes) from a ``ptxas -v`` log."""
    return {key: _max_int(pattern, log) for key, pattern in _PTXAS_PATTERNS.items()}


def parse_amdgcn(asm: str) -> dict[str, int]:
    """The same keys from an AMDGCN listing (spills in bytes: 4 per spilled VGPR or SGPR lane), plus
    vgprs, sgprs and LLVM's occupancy (waves per SIMD)."""
    meta = {key: _max_int(pattern, asm) for key, pattern in _AMD_META.items()}
    if not meta["registers"]:
        meta["registers"] = meta["vgprs"]
    spilled = 4 * (meta["vgpr_spills"] + meta["sgpr_spills"])
    meta["spill_stores"] = meta["spill_loads"] = spilled
    return meta


def count_vector(code: str, backend: str, kind: str, min_bits: int = 128) -> int:
    """Global ``kind`` ("load" or "store") instructions of at least ``min_bits`` per thread."""
    if backend == "cuda":
        return sum(1 for lanes, bits in _PTX_VECTOR[kind].findall(code) if int(lanes) * int(bits) >= min_bits)
    return len(_AMD_VECTOR[kind].findall(code))


def count_vector_loads(ptx: str, min_bits: int = 128) -> int:
    return count_vector(ptx, "cuda", "load", min_bits)


def count_calls(sass: str) -> int:
    """Subroutine calls in a SASS listing (a correctly rounded division's slow path, for instance)."""
    return len(re.findall(r"\bCALL\.", sass))


def record_atomics(ptx: str) -> dict:
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


def count_barriers(code: str, backend: str) -> int:
    """Block-wide barriers in the listing (PTX ``bar.sync``/``barrier.sync``, AMDGCN ``s_barrier``)."""
    pattern = r"^\s*(?:@!?%p\d+\s+)?(?:bar|barrier)\.sync\b" if backend == "cuda" else r"^\s*s_barrier\b"
    return len(re.findall(pattern, code, re.M))


def approximations(code: str, backend: str) -> dict[str, int]:
    """Approximate math instructions by class (only the classes present): PTX on CUDA, LLVM IR on AMD."""
    table = APPROX_PTX if backend == "cuda" else APPROX_LLIR
    code = _without_declarations(code)
    if backend != "cuda":
        code = _AMD_PRECISE_SQRT.sub("@precise.sqrt(", code)
    found = {name: len(pattern.findall(code)) for name, pattern in table.items()}
    return {name: n for name, n in found.items() if n}


def count_fma(code: str, backend: str) -> int:
    """Fused multiply-adds the compiler chose: PTX ``fma``/``mad`` on CUDA; ``llvm.fma``/``fmuladd`` and
    ``contract``/``fast`` flags in the LLVM IR on AMD."""
    return len((_PTX_FMA if backend == "cuda" else _LLIR_FMA).findall(_without_declarations(code)))


def _without_declarations(code: str) -> str:
    """The listing without LLVM ``declare`` lines and attribute groups (which name intrinsics and flags
    without using them)."""
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("declare ", "attributes #")))


_LAYOUT_DEF = re.compile(r"^(#[A-Za-z0-9_]+)\s*=\s*(#ttg\.[a-z_]+<.*>)\s*$", re.M)
_REDUCE = re.compile(r'"tt\.reduce"\([^)]*\)\s*<\{axis = (\d+) : i32\}>')
_REDUCE_TYPE = re.compile(r"\}\)\s*:\s*\(tensor<([0-9x]+)x([a-z0-9]+),\s*(#[A-Za-z0-9_]+|#ttg\.[a-z_]+<\{[^}]*\}>)>")
_SLICE = re.compile(r"#ttg\.slice<\{dim = (\d+), parent = (#[A-Za-z0-9_]+)\}>")
_FIELD = re.compile(r"(\w+)\s*=\s*\[([0-9, ]*)\]")


def _per_axis(encoding: str, axis: int) -> str:
    """The parts of a blocked encoding that place the elements of ``axis``: size per thread, threads per
    warp, warps per CTA along it, and the position of the axis in the order."""
    fields = {name: [int(v) for v in values.split(",") if v.strip()] for name, values in _FIELD.findall(encoding)}
    if not {"sizePerThread", "threadsPerWarp", "warpsPerCTA", "order"} <= set(fields):
        return encoding
    return (f"spt={fields['sizePerThread'][axis]} tpw={fields['threadsPerWarp'][axis]} "
            f"wpc={fields['warpsPerCTA'][axis]} order={fields['order'].index(axis)}")


def reduce_layouts(ttgir: str) -> list[str]:
    """One line per floating-point ``tt.reduce`` in program order: the axis, its length and how the operand's
    layout places that axis (what decides the order of the sum). Equal lists mean equal summation trees.
    Integer reductions (counts, the error record's minima) are exact in any order and are left out."""
    defs = dict(_LAYOUT_DEF.findall(ttgir))
    out = []
    for match in _REDUCE.finditer(ttgir):
        axis = int(match.group(1))
        typed = _REDUCE_TYPE.search(ttgir, match.end())
        if typed is None:
            out.append(f"axis={axis} ?")
            continue
        shape = [int(v) for v in typed.group(1).split("x")]
        if not typed.group(2).startswith(("f", "bf")):
            continue
        encoding = typed.group(3).strip()
        encoding = defs.get(encoding, encoding)
        placed_axis = axis
        slice_of = _SLICE.match(encoding)
        if slice_of:  # a slice keeps its parent's placement of the dims it keeps
            dim, parent = int(slice_of.group(1)), slice_of.group(2)
            encoding = defs.get(parent, parent)
            placed_axis = axis if axis < dim else axis + 1
        out.append(f"axis={axis} len={shape[axis]} {_per_axis(encoding, placed_axis)}")
    return out
