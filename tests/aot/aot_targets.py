"""The GPUs the ahead-of-time check compiles for, and what each can hold per SM (or CU).

A target is named as Triton names its architecture: ``sm_80`` (A100), ``sm_90a`` (H100/H200), ``sm_100a``
(B200), ``sm_120a`` (RTX 50 / RTX PRO Blackwell), ``gfx942`` (MI300X/MI325X), ``gfx950`` (MI350X/MI355X).
``--targets`` also takes compute capabilities (``80,90``) and ``all``.

Residency limits (for occupancy) are the vendors' published per-SM figures: CUDA's occupancy table (64K
32-bit registers per SM, allocated per warp in units of 256; 2048 threads and 32 blocks per SM, 1536 and
24 on sm_120; shared memory per SM 164 KB on sm_80, 228 KB on sm_90/sm_100, 100 KB on sm_120), and
AMD's CDNA3/CDNA4 ISA guides (4 SIMDs per CU, at most 8 waves per SIMD, 512 VGPRs per lane per SIMD shared by
its waves in units of 8, LDS 64 KB per CU on gfx942 and 160 KB on gfx950).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    """Per-SM (per-CU) residency limits of one target."""

    backend: str  # Triton's backend name: "cuda" or "hip"
    warp_size: int
    max_warps: int  # resident warps (waves) per SM / CU
    max_ctas: int  # resident programs per SM / CU
    registers: int  # 32-bit registers per SM (NVIDIA) / VGPRs per lane per SIMD (AMD)
    register_unit: int  # allocation granularity: registers per warp (NVIDIA) / VGPRs per lane (AMD)
    shared_bytes: int  # shared memory (LDS) per SM / CU
    simds: int = 1  # SIMDs per CU (AMD): a program's waves are spread over them


MACHINES = {
    "sm_80": Machine("cuda", 32, 64, 32, 65536, 256, 164 * 1024),
    "sm_90a": Machine("cuda", 32, 64, 32, 65536, 256, 228 * 1024),
    "sm_100a": Machine("cuda", 32, 64, 32, 65536, 256, 228 * 1024),
    "sm_120a": Machine("cuda", 32, 48, 24, 65536, 256, 100 * 1024),
    "gfx942": Machine("hip", 64, 32, 32, 512, 8, 64 * 1024, simds=4),
    "gfx950": Machine("hip", 64, 32, 32, 512, 8, 160 * 1024, simds=4),
}
#: Every target, in the order the check reports them.
ALL_TARGETS = tuple(MACHINES)
_CAPABILITY = {"sm_80": 80, "sm_90a": 90, "sm_100a": 100, "sm_120a": 120}
_ALIASES = {"80": "sm_80", "90": "sm_90a", "100": "sm_100a", "120": "sm_120a", "sm_90": "sm_90a",
            "sm_100": "sm_100a", "sm_120": "sm_120a"}


def parse_targets(text: str) -> tuple[str, ...]:
    """Target names from ``--targets``: comma-separated names or capabilities, or ``all``.

    >>> parse_targets("80,90"), parse_targets("sm_120,gfx950"), len(parse_targets("all"))
    (('sm_80', 'sm_90a'), ('sm_120a', 'gfx950'), 6)
    """
    if text.strip() == "all":
        return ALL_TARGETS
    names = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name = _ALIASES.get(part, part)
        if name not in MACHINES:
            raise ValueError(f"unknown target {part!r}: expected one of {', '.join(ALL_TARGETS)} (or 80, 90, 100, 120)")
        names.append(name)
    return tuple(dict.fromkeys(names))


def backend_of(name: str) -> str:
    return MACHINES[name].backend


def capability(name: str) -> int:
    return _CAPABILITY[name]


def gpu_target(name: str):
    """Triton's ``GPUTarget`` for a target name."""
    from triton.backends.compiler import GPUTarget

    machine = MACHINES[name]
    if machine.backend == "cuda":
        return GPUTarget("cuda", _CAPABILITY[name], 32)
    return GPUTarget("hip", name, machine.warp_size)


def occupancy(name: str, num_warps: int, registers: int, shared_bytes: int) -> dict[str, int]:
    """Programs (CTAs / workgroups) and warps resident per SM (CU) for a program of ``num_warps`` warps
    using ``registers`` per thread and ``shared_bytes`` of shared memory, and what limits them.

    >>> occupancy("sm_90a", 16, 128, 1024)
    {'ctas': 1, 'warps': 16, 'limit': 'registers'}
    >>> occupancy("sm_90a", 8, 64, 0)["ctas"], occupancy("gfx942", 8, 64, 0)["ctas"]
    (4, 4)
    """
    m = MACHINES[name]
    limits = {"warps": m.max_warps // num_warps, "ctas": m.max_ctas}
    if m.backend == "cuda":
        per_warp = -(-max(registers, 1) * m.warp_size // m.register_unit) * m.register_unit
        limits["registers"] = m.registers // (per_warp * num_warps)
    else:
        per_lane = -(-max(registers, 1) // m.register_unit) * m.register_unit
        waves_per_simd = min(m.max_warps // m.simds, m.registers // per_lane)
        limits["registers"] = waves_per_simd * m.simds // num_warps
    if shared_bytes:
        limits["shared memory"] = m.shared_bytes // shared_bytes
    limit = min(limits, key=lambda k: (limits[k], k != "registers"))
    ctas = max(0, limits[limit])
    return {"ctas": ctas, "warps": ctas * num_warps, "limit": limit}
