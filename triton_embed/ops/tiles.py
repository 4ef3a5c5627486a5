"""How a tuned config becomes a launch: tile sizes and warps derived from the row width, launch options
per Triton backend.

Two kinds of parameter:

- fixed by the row width D (and the backend's warp size) alone, because they shape a sum's rounding: the
  LayerNorm-family column block ``BLOCK_D`` (the next power of two of D, at most :data:`MAX_BLOCK_D`;
  wider rows are streamed in such pieces), the backward's rows per tile, and the LayerNorm family's
  ``num_warps``. Their row sums are ``tl.sum``, whose order follows the register layout: elements per
  thread, lanes and warps along the row, all fixed here by D (the ahead-of-time check compares the
  compiled reduction layouts of every config);
- tuned, because they change only speed: rows per program (the forward's ``ELEMS`` budget), the
  embedding-backward kernels' column blocks, rows per program and warps.

Launch options are per backend: CUDA takes ``maxnreg``, ROCm's compiler does not (Triton raises a KeyError
for an option its backend does not know), and FMA contraction is pinned off in every kernel
(``enable_fp_fusion=False``: whether a product fuses into the add that follows would otherwise depend on
the register layout and on Triton's default, which Triton 3.10 changes).

Used by the launchers and by the ahead-of-time compile test, which must compile what the launchers launch.

>>> row_width(4096), row_width(768), row_width(20000), row_width(8192, wide=True)
((4096, True), (1024, True), (8192, False), (4096, False))
>>> row_warps(4096), row_warps(768), row_warps(4096, backend="hip"), row_warps(4096, wide=True)
(16, 4, 8, 16)
>>> backward_tile({}, 4096)[1]["num_warps"], backward_tile({}, 768)[0]["BLOCK_T"]
(8, 4)
"""
from __future__ import annotations

import functools

import torch
import triton

from .. import tuning

#: The widest column block of the LayerNorm-family kernels: a row up to this wide is held in registers
#: (half as wide for float64 statistics).
MAX_BLOCK_D = 8192
#: Rows per program of the forward kernels, at most.
MAX_BLOCK_T = 128
#: Tile elements per backward step (rows x columns): the backward's rows per tile follow from D by it.
BACKWARD_ELEMS = 4096
#: Values of a row each thread holds in the LayerNorm family's forward (float32 statistics; half for
#: float64): sets the warps per row from D.
ROW_VALUES_PER_THREAD = 8
#: Values of a tile each thread holds in the backward (float32 statistics; half for float64), per backend:
#: on CUDA fewer warps than the forward's, as the reductions' shuffles and barriers are paid per warp while
#: the row math is paid per value (ptxas keeps the live values, x, dy, x̂, γ·dy, within 128 registers); on
#: ROCm 8, as Triton 3.6's AMD backend spills the 4-bit table's backward at 16.
BACKWARD_VALUES_PER_THREAD = {"cuda": 16, "hip": 8}
#: Values of a whole tile a thread may hold: the forward's rows per program stop there (more rows per
#: program spread its fixed costs, the ids, the statistics' reductions, over more bytes).
TILE_VALUES_PER_THREAD = 32
#: ptxas register cap of the row kernels on CUDA: without one, ptxas sometimes stops at 64 registers and
#: spills rather than lower the occupancy. ROCm's compiler has no such option.
MAX_REGISTERS = 128
#: Threads per warp (wavefront) of each Triton backend: 64 on the CDNA GPUs (MI300X, MI350X).
WARP_SIZE = {"cuda": 32, "hip": 64}
#: Launch options each backend's compiler takes (its options dataclass: ``CUDAOptions``, ``HIPOptions``).
BACKEND_OPTIONS = {
    "cuda": frozenset({"num_warps", "num_stages", "maxnreg", "enable_fp_fusion"}),
    "hip": frozenset({"num_warps", "num_stages", "enable_fp_fusion", "waves_per_eu"}),
}
#: FMA contraction, the same for every kernel (off): results must not depend on whether the compiler fuses
#: a product into the add that follows, nor on Triton's default.
FP_FUSION = False


@functools.lru_cache(maxsize=1)
def gpu_backend() -> str:
    """The Triton backend that compiles for this PyTorch's GPUs: ``"hip"`` on ROCm builds (whose tensors
    report ``is_cuda``), ``"cuda"`` otherwise."""
    return "hip" if getattr(torch.version, "hip", None) else "cuda"


def backend_options(options: dict, backend: str | None = None) -> dict:
    """``options`` as ``backend`` (default: this machine's) takes them: FMA contraction pinned, and the
    options its compiler does not know (``maxnreg`` on ROCm) dropped.

    >>> backend_options({"num_warps": 4, "maxnreg": 128}, "hip")
    {'num_warps': 4, 'enable_fp_fusion': False}
    """
    known = BACKEND_OPTIONS[backend or gpu_backend()]
    out = {k: v for k, v in options.items() if k in known}
    out["enable_fp_fusion"] = FP_FUSION
    return out


def row_width(dim: int, wide: bool = False) -> tuple[int, bool]:
    """(BLOCK_D, single block) of the LayerNorm-family kernels for rows of ``dim`` elements (``wide``:
    float64 statistics)."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), MAX_BLOCK_D // (2 if wide else 1))
    return block_d, dim <= block_d


def row_warps(block_d: int, wide: bool = False, backend: str | None = None, values: int = ROW_VALUES_PER_THREAD
              ) -> int:
    """Warps of a LayerNorm-family program whose rows are ``block_d`` wide: ``values`` per thread per row
    (half for float64), at most 16 warps. A function of the width and the backend only: it shapes the
    row sums."""
    per_thread = max(1, values // (2 if wide else 1))
    warps = triton.cdiv(block_d, WARP_SIZE[backend or gpu_backend()] * per_thread)
    return min(max(triton.next_power_of_2(warps), 1), 16)


def fit_warps(num_warps: int, elements: int, most: int = 32) -> int:
    """``num_warps`` moved into the range where each thread holds at least 4 and at most ``most`` of a
    tile's ``elements`` (at most 16 warps).

    >>> fit_warps(16, 1024), fit_warps(4, 16384), fit_warps(4, 64), fit_warps(8, 8192, most=16)
    (8, 16, 1, 16)
    """
    low = -(-elements // (32 * most))
    high = max(1, elements // (32 * 4))
    return min(max(min(num_warps, high), low, 1), 16)


def _options(config: tuning.Config, num_warps: int, backend: str | None, cap_registers: bool) -> dict:
    options = {"num_warps": num_warps, "num_stages": config.get("num_stages", 1)}
    if cap_registers:
        options["maxnreg"] = config.get("maxnreg", MAX_REGISTERS)
    return backend_options(options, backend)


def forward_tile(config: tuning.Config, dim: int, wide: bool = False, backend: str | None = None,
                 values: int = ROW_VALUES_PER_THREAD, most: int = TILE_VALUES_PER_THREAD) -> tuple[dict, dict, bool]:
    """(constexprs, launch options, single block) of a forward LayerNorm-family launch. The warps follow
    BLOCK_D (``values`` of a row per thread); ``config["ELEMS"]`` bounds the tile (halved for float64
    statistics), and the rows per program follow from it and D, at most ``most`` values per thread (half
    for float64)."""
    block_d, single = row_width(dim, wide)
    warps = row_warps(block_d, wide, backend, values)
    threads = warps * WARP_SIZE[backend or gpu_backend()]
    most = most // (2 if wide else 1)
    elems = config["ELEMS"] // (2 if wide else 1)
    block_t = max(1, min(elems // block_d, MAX_BLOCK_T, most * threads // block_d))
    return {"BLOCK_T": block_t, "BLOCK_D": block_d}, _options(config, warps, backend, True), single


def backward_tile(config: tuning.Config, dim: int, wide: bool = False, backend: str | None = None
                  ) -> tuple[dict, dict, bool]:
    """(constexprs, launch options, single block) of a backward LayerNorm-family launch: the rows per tile
    and the warps are fixed by D (they shape dγ/dβ's and the rows' sums); the config sets nothing else."""
    block_d, single = row_width(dim, wide)
    block_t = max(1, min((BACKWARD_ELEMS // (2 if wide else 1)) // block_d, 64))
    warps = row_warps(block_t * block_d, wide, backend, BACKWARD_VALUES_PER_THREAD[backend or gpu_backend()])
    return {"BLOCK_T": block_t, "BLOCK_D": block_d}, _options(config, warps, backend, True), single


def column_tile(config: tuning.Config, dim: int, rows: int = 1, wide: bool = False, backend: str | None = None
                ) -> tuple[dict, dict]:
    """(constexprs, launch options) of a kernel that walks rows in column blocks whose width does not
    change any sum (embedding backward, dγ/dβ reduction): the config's BLOCK_D, capped at D's power of two
    and so that the program's ``rows`` x BLOCK_D main tile stays within 16384 elements (4096 ``wide``, for
    float64 data: 8192 float64 values in 16 warps spill), and its other constexprs (BLOCK_V) as they are."""
    meta = {k: v for k, v in config.items() if k not in tuning.LAUNCH_OPTIONS}
    budget = max(1, (4096 if wide else 16384) // rows)
    meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(max(dim, 1)), triton.next_power_of_2(budget))
    warps = fit_warps(config.get("num_warps", 4), rows * meta["BLOCK_D"], 32)
    return meta, _options(config, warps, backend, True)


def runs_tile(config: tuning.Config, dim: int, wide: bool = False, backend: str | None = None) -> tuple[dict, dict]:
    """(constexprs, launch options) of ``stable_embedding_runs_kernel``: a whole row as BLOCK_D and the
    warps (fixed by D; the caller checks that D fits), the zeroing programs' BLOCK_V rows and ZERO_BLOCK_D
    columns per store from the config."""
    block_d, _ = row_width(dim, wide)
    meta = {"BLOCK_V": config["BLOCK_V"], "ZERO_BLOCK_D": min(config["BLOCK_D"], block_d), "BLOCK_D": block_d}
    return meta, _options(config, row_warps(block_d, wide, backend), backend, True)


__all__ = ["MAX_BLOCK_D", "WARP_SIZE", "BACKEND_OPTIONS", "gpu_backend", "backend_options", "row_width",
           "row_warps", "fit_warps", "forward_tile", "backward_tile", "column_tile", "runs_tile"]
