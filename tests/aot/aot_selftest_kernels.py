"""Kernels built to break each rule of the ahead-of-time check, and their specs: ``test_aot_selftest.py`` shows
the check failing on each (a compile error, a spill, scalar loads, approximate math, an FMA, a config-dependent
sum, an option HIP does not know, a kernel without a spec)."""
from __future__ import annotations

import triton
import triton.language as tl
from aot_specs import KernelSpec, variant


@triton.jit
def selftest_broken_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """Adds a BLOCK vector to a 2*BLOCK one: nothing fails until the kernel is compiled (or run)."""
    x = tl.load(x_ptr + tl.arange(0, BLOCK))
    y = tl.load(x_ptr + tl.arange(0, 2 * BLOCK))
    tl.store(out_ptr + tl.arange(0, BLOCK), x + y)


@triton.jit
def selftest_spilling_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """One warp holds BLOCK floats live across a reduction: with BLOCK = 8192 that is 256 per thread,
    more than the 255 registers a thread can have (and one warp of 255 registers is low occupancy)."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, x / tl.sum(x * x, axis=0))


@triton.jit
def selftest_scalar_load_kernel(x_ptr, out_ptr, stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A ROWS x COLS tile at a runtime column stride: Triton cannot prove contiguity, so no 128-bit loads."""
    r = tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, COLS)[None, :]
    tl.store(out_ptr + r * COLS + c, tl.load(x_ptr + r * COLS + c * stride))


@triton.jit
def selftest_approx_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """``tl.sqrt`` is the hardware approximation (sqrt.approx / llvm.amdgcn.sqrt); the op allows none."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.sqrt(tl.load(x_ptr + offs)))


@triton.jit
def selftest_fma_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """x * x + 1: fused when the launch leaves contraction on."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(out_ptr + offs, x * x + 1.0)


@triton.jit
def selftest_row_sum_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """A tl.sum over a row: its layout, hence its order, changes with num_warps."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr, tl.sum(tl.load(x_ptr + offs), axis=0))


@triton.jit
def selftest_unspecced_kernel(x_ptr):
    """Discovered (its name ends in _kernel) but given no spec: must be reported."""
    tl.store(x_ptr, 1.0)


@triton.jit
def selftest_public_helper(x):
    """Neither _private nor *_kernel: must be reported as unclassified."""
    return x


def _as_is(config: dict, case: dict, backend: str) -> dict:
    """A launcher that passes its config's options to every backend (``maxnreg`` included)."""
    return dict(config)


_FP32_IN_OUT = variant({"x_ptr": "*fp32", "out_ptr": "*fp32"})
_SELF = "aot_selftest_kernels"
SELFTEST_SPECS = {
    spec.key: spec
    for spec in (
        KernelSpec(_SELF, "selftest_broken_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 64, "num_warps": 1, "num_stages": 1},)),
        KernelSpec(_SELF, "selftest_spilling_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 8192, "num_warps": 1, "num_stages": 1},), min_warps=16),
        KernelSpec(_SELF, "selftest_scalar_load_kernel", "selftest", ({},),
                   lambda case: variant({"x_ptr": "*fp32", "out_ptr": "*fp32", "stride": "i32"}, element="fp32"),
                   vector_loads=("ROWS", "COLS"), configs=({"ROWS": 8, "COLS": 128, "num_warps": 1, "num_stages": 1},)),
        KernelSpec(_SELF, "selftest_approx_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT,
                   configs=({"BLOCK": 256, "num_warps": 2, "num_stages": 1},)),
        KernelSpec(_SELF, "selftest_fma_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT, launch_config=_as_is,
                   configs=({"BLOCK": 256, "num_warps": 2, "num_stages": 1, "enable_fp_fusion": True},)),
        KernelSpec(_SELF, "selftest_row_sum_kernel", "selftest", ({},), lambda case: _FP32_IN_OUT, same_sums=True,
                   max_barriers=0, launch_config=_as_is,
                   configs=({"BLOCK": 4096, "num_warps": 4, "num_stages": 1, "maxnreg": 128},
                            {"BLOCK": 4096, "num_warps": 16, "num_stages": 1, "maxnreg": 128})),
    )
}

