"""How a tuned config becomes a launch: tile sizes derived from the row width, launch options.

Two kinds of parameter:

- fixed by the row width D alone, because they shape a sum's rounding: the LayerNorm-family column block
  ``BLOCK_D`` (the next power of two of D, at most :data:`MAX_BLOCK_D`; wider rows are streamed in such
  pieces) and the backward's rows per tile;
- tuned, because they change only speed: rows per program (the forward's ``ELEMS`` budget), ``num_warps``,
  the embedding-backward kernels' column blocks and rows per program.

Used by the launchers and by the ahead-of-time compile test, which must compile what the launchers launch.

>>> row_width(4096), row_width(768), row_width(20000), row_width(8192, wide=True)
((4096, True), (1024, True), (8192, False), (4096, False))
"""
from __future__ import annotations

import triton

from .. import tuning

#: The widest column block of the LayerNorm-family kernels: a row up to this wide is held in registers
#: (half as wide for float64 statistics).
MAX_BLOCK_D = 8192
#: Rows per program of the forward kernels, at most.
MAX_BLOCK_T = 128
#: Tile elements per backward step (rows x columns): the backward's rows per tile follow from D by it.
BACKWARD_ELEMS = 4096
#: ptxas register cap for the LayerNorm-family kernels (without one it sometimes trades a spill for occupancy).
MAX_REGISTERS = 128
#: Launch option of kernels whose results must not depend on the register layout: no FMA contraction.
NO_FMA = {"enable_fp_fusion": False}


def row_width(dim: int, wide: bool = False) -> tuple[int, bool]:
    """(BLOCK_D, single block) of the LayerNorm-family kernels for rows of ``dim`` elements (``wide``:
    float64 statistics)."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), MAX_BLOCK_D // (2 if wide else 1))
    return block_d, dim <= block_d


def fit_warps(num_warps: int, elements: int, most: int = 32) -> int:
    """``num_warps`` moved into the range where each thread holds at least 4 and at most ``most`` of a
    tile's ``elements`` (at most 16 warps).

    >>> fit_warps(16, 1024), fit_warps(4, 16384), fit_warps(4, 64), fit_warps(8, 8192, most=16)
    (8, 16, 1, 16)
    """
    low = -(-elements // (32 * most))
    high = max(1, elements // (32 * 4))
    return min(max(min(num_warps, high), low, 1), 16)


def _options(config: tuning.Config, elements: int, most: int, fma: bool) -> dict:
    options = {"num_warps": fit_warps(config.get("num_warps", 4), elements, most),
               "num_stages": config.get("num_stages", 1), "maxnreg": config.get("maxnreg", MAX_REGISTERS)}
    if not fma:
        options.update(NO_FMA)
    return options


def forward_tile(config: tuning.Config, dim: int, wide: bool = False) -> tuple[dict, dict, bool]:
    """(constexprs, launch options, single block) of a forward LayerNorm-family launch. ``config["ELEMS"]``
    bounds the tile (halved for float64 statistics); the rows per program follow from it and D."""
    block_d, single = row_width(dim, wide)
    elems = config["ELEMS"] // (2 if wide else 1)
    block_t = max(1, min(elems // block_d, MAX_BLOCK_T))
    # At most 16 values of the tile per thread (8 for float64): beyond that Triton 3.6's register
    # allocation spills on the LayerNorm math.
    options = _options(config, block_t * block_d, 8 if wide else 16, fma=False)
    return {"BLOCK_T": block_t, "BLOCK_D": block_d}, options, single


def backward_tile(config: tuning.Config, dim: int, wide: bool = False) -> tuple[dict, dict, bool]:
    """(constexprs, launch options, single block) of a backward LayerNorm-family launch: the rows per tile
    are fixed by D (they shape dγ/dβ's sums); the config sets only launch options."""
    block_d, single = row_width(dim, wide)
    block_t = max(1, min((BACKWARD_ELEMS // (2 if wide else 1)) // block_d, 64))
    # The backward keeps several row-sized values live (x, dy, x̂, γ·dy): fewer elements per thread.
    options = _options(config, block_t * block_d, 4 if wide else 8, fma=False)
    return {"BLOCK_T": block_t, "BLOCK_D": block_d}, options, single


def column_tile(config: tuning.Config, dim: int, rows: int = 1, wide: bool = False) -> tuple[dict, dict]:
    """(constexprs, launch options) of a kernel that walks rows in column blocks whose width does not
    change any sum (embedding backward, dγ/dβ reduction): the config's BLOCK_D, capped at D's power of two
    and so that the program's ``rows`` x BLOCK_D main tile stays within 16384 elements (4096 ``wide``, for
    float64 data: 8192 float64 values in 16 warps spill), and its other constexprs (BLOCK_V) as they are."""
    meta = {k: v for k, v in config.items() if k not in tuning.LAUNCH_OPTIONS}
    budget = max(1, (4096 if wide else 16384) // rows)
    meta["BLOCK_D"] = min(meta["BLOCK_D"], triton.next_power_of_2(max(dim, 1)), triton.next_power_of_2(budget))
    return meta, _options(config, rows * meta["BLOCK_D"], 32, fma=True)


def runs_tile(config: tuning.Config, dim: int, wide: bool = False) -> tuple[dict, dict]:
    """(constexprs, launch options) of ``stable_embedding_runs_kernel``: a whole row as BLOCK_D (fixed by D;
    the caller checks that D fits), the zeroing programs' BLOCK_V rows and ZERO_BLOCK_D columns per store
    from the config, warps for the row (several row-sized values are live), no FMA contraction."""
    block_d, _ = row_width(dim, wide)
    meta = {"BLOCK_V": config["BLOCK_V"], "ZERO_BLOCK_D": min(config["BLOCK_D"], block_d), "BLOCK_D": block_d}
    return meta, _options(config, block_d, 4 if wide else 8, fma=False)


__all__ = ["MAX_BLOCK_D", "row_width", "fit_warps", "forward_tile", "backward_tile", "column_tile", "runs_tile"]
