"""How to compile each Triton kernel of ``triton_embed.kernels`` ahead of time (see ``aot_compile.py``): the spec
machinery. The specs themselves, one family per file, are gathered in ``aot_specs.py``.

One :class:`KernelSpec` per ``@triton.jit`` kernel. A spec names the kernel, its autotune family in
``triton_embed.tuning.CONFIGS`` (every config of the family is compiled, with its block sizes as they are),
and how the launchers in ``triton_embed/ops`` call it:

- ``rows``: the dtype combinations (weight dtype, and for the cheap kernels index dtype too). Every row is
  compiled for every target.
- ``settings``: values of the constexpr flags (``SCALE_BY_FREQ``, ``NORM_KIND``, ``MODE``, ``HAS_WEIGHT``,
  ``SINGLE_BLOCK``, the default-dtype cast, ...) and, for the big fused kernels, the index dtype. They are
  rotated over the rows, shifted by one per config: each config x target compiles every row and every
  setting at least once, and across configs the settings meet different rows. ``AOT_EXHAUSTIVE=1``
  compiles the full rows x settings product; ``aot_compile.py`` samples configs by default (see there).
- ``make``: builds the :class:`Variant` (argument types, constexprs, alignment) of one row + setting;
- ``launch_config``: (config, case, backend) -> the constexprs and launch options the launcher derives
  (``triton_embed/ops/tiles.py``), per Triton backend: the check compiles with exactly those options and
  fails on any the backend's compiler does not know, as Triton's runtime would;
- the rules the compiled code must meet: ``approx`` (classes of approximate math the op may use, see
  ``aot_read.APPROX_PTX``; none by default), ``vector_loads``/``vector_stores`` (the rows x cols tile read
  and written with 128-bit accesses), ``max_barriers`` and ``min_warps`` (resident warps per SM).

Argument types use Triton's signature spelling: ``"*fp32"`` (pointer to float32), ``"i32"``, ``"i64"``
(also the float64 bits the launchers pass for exact float scalars). Constexprs are given by value. Block
sizes and launch options come from the config; a config key the kernel does not take (``BLOCK_D`` for ``claim_rows_kernel``) is ignored.

Specialisation, as Triton's runtime does it for contiguous tensors whose dim is a multiple of 16:
- an int argument equal to 1 (unit strides) becomes the constexpr 1;
- pointers (torch allocations are 256-byte aligned) and ints that are multiples of 16 (the dim, the row
  strides, and the 0 strides passed for absent LayerNorm parameters) carry ``tt.divisibility = 16``.
Every scalar size and stride is ``i32``: Triton passes an int as i64 only when it does not fit in 32 bits,
and no single count or stride does (V·D may exceed 2³¹, which is why the kernels widen offsets to int64
themselves). 64-bit data lives behind pointers: int64 ids and ``torch.sort`` orders. (A token count of 2³¹
or more arrives as ``i64``: the cases with ``"N": "i64"`` compile that specialisation too.)

When you add a kernel, add its spec to its family's file (``aot_specs_<family>.py``): ``tests/aot/test_aot_compile.py`` fails for any kernel without one.
``vector_loads`` names the constexprs of the ``rows x cols`` tile a program loads (``vector_stores`` the one
it writes), so that the check can demand enough 128-bit accesses to move the whole tile.

This module imports only ``triton.language``, ``aot_targets`` and ``triton_embed``'s tuning and tile modules
(for the config lists and launch options), never the kernels, so importing it under ``TRITON_INTERPRET=1``
is harmless.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import triton.language as tl
from aot_targets import ALL_TARGETS

#: Weight dtypes the launchers support (float64 tables accumulate in float64).
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp64")
#: Index dtypes accepted by the public API.
INDEX_DTYPES = ("i32", "i64")
#: Targets compiled for (``aot_targets.py``): A100, H100/H200, B200, RTX 50 Blackwell, MI300X, MI350X.
TARGETS = ALL_TARGETS
#: Compile the full rows x settings product instead of the rotation.
EXHAUSTIVE = os.environ.get("AOT_EXHAUSTIVE", "0") not in ("0", "", "false", "False")

#: Bytes per element of each Triton dtype name, for the vector-load expectation.
ELEMENT_BYTES = {"fp64": 8, "i64": 8, "fp32": 4, "i32": 4, "bf16": 2, "fp16": 2, "i16": 2, "i8": 1}

LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion", "waves_per_eu")

_TL = {"fp32": tl.float32, "fp64": tl.float64, "bf16": tl.bfloat16, "fp16": tl.float16}


@dataclass(frozen=True)
class Variant:
    """One way a launcher calls a kernel: argument types, fixed constexprs and alignment facts."""

    types: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    #: Arguments known to be multiples of 16 (ints) or 16-byte aligned (pointers).
    aligned: tuple[str, ...] = ()
    #: dtype of the tiles checked for 128-bit loads and stores (the rows' dtype).
    element: str | None = None
    label: str = ""


def variant(types: dict[str, str], constexprs: dict[str, Any] | None = None, ints: tuple[str, ...] = (),
            element: str | None = None) -> Variant:
    """A Variant whose pointers are all 16-byte aligned and whose ``ints`` are multiples of 16."""
    pointers = tuple(name for name, ty in types.items() if ty.startswith("*"))
    return Variant(types, dict(constexprs or {}), pointers + tuple(ints), element)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value)  # tl.float32 prints as fp32


#: The approximate-math class the LayerNorm family may use: the float32 rstd is the hardware reciprocal
#: square root, as PyTorch's CUDA LayerNorm computes it (``kernels/layer_norm_rows.py``'s ``_rstd``).
LAYER_NORM_APPROX = frozenset({"rsqrt"})


@dataclass(frozen=True)
class KernelSpec:
    module: str
    name: str
    family: str
    rows: tuple[dict[str, Any], ...]
    make: Callable[[dict[str, Any]], Variant]
    settings: tuple[dict[str, Any], ...] = ({},)
    #: (rows constexpr, cols constexpr): the program's main load is one rows x cols tile of 128-bit loads.
    vector_loads: tuple[str, str] | None = None
    #: (rows constexpr, cols constexpr): the program's main store, of 128-bit stores.
    vector_stores: tuple[str, str] | None = None
    #: Config list override (kernels launched with a fixed config, self-tests), or a function returning
    #: it; None means ``triton_embed.tuning.CONFIGS[family]``.
    configs: tuple[dict[str, int], ...] | Callable[[], list[dict[str, int]]] | None = None
    #: (config, case, backend) -> the config as the launcher launches it (derived tile, launch options).
    launch_config: Callable[[dict[str, int], dict[str, Any], str], dict[str, int]] | None = None
    #: Approximate-math classes the op may use (``aot_read.APPROX_PTX``): none unless documented.
    approx: frozenset[str] = frozenset()
    #: Most block-wide barriers in the compiled code (None: not checked).
    max_barriers: int | None = None
    #: Fewest warps resident per SM (from registers and shared memory) on every target.
    min_warps: int = 8
    #: Whether the launcher pins FMA contraction (every launcher in ops/ does).
    pins_fp_fusion: bool = True
    #: Whether its sums are ``tl.sum`` under tuned configs: the check then compiles every config of each
    #: case on one target per backend and requires the same reduction layouts.
    same_sums: bool = False

    @property
    def key(self) -> str:
        return f"{self.module}.{self.name}"

    @property
    def needs_vector_loads(self) -> bool:
        return self.vector_loads is not None

    def config_list(self) -> list[dict[str, int]]:
        if callable(self.configs):
            return [dict(c) for c in self.configs()]
        if self.configs is not None:
            return [dict(c) for c in self.configs]
        from triton_embed.tuning import CONFIGS

        return [dict(c) for c in CONFIGS[self.family]]

    def cases(self, config_index: int) -> list[dict[str, Any]]:
        """The row + setting combinations compiled with config ``config_index`` (every row and every
        setting appear in each list)."""
        if EXHAUSTIVE:
            return [{**r, **s} for r, s in itertools.product(self.rows, self.settings)]
        n_rows, n_settings = len(self.rows), len(self.settings)
        return [{**self.rows[i % n_rows], **self.settings[(i + config_index) % n_settings]}
                for i in range(max(n_rows, n_settings))]

    def variant(self, case: dict[str, Any]) -> Variant:
        made = self.make(case)
        if case.get("N") == "i64":  # 2**31 tokens or more: Triton passes the count as i64
            made = replace(made, types={**made.types, "N": "i64"})
        return replace(made, label=" ".join(f"{k}={_fmt(v)}" for k, v in case.items()))

    def variants(self, config_index: int) -> list[Variant]:
        return [self.variant(case) for case in self.cases(config_index)]

    def launched(self, config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
        """The constexprs and launch options a launcher passes for ``config`` and ``case`` on ``backend``."""
        if self.launch_config is not None:
            return self.launch_config(config, case, backend)
        from triton_embed.ops.tiles import backend_options

        meta = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
        options = {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}
        return {**meta, **(backend_options(options, backend) if self.pins_fp_fusion else options)}


def acc_dtype(dtype: str) -> str:
    """The accumulator dtype the launchers pick: float64 for float64 data, float32 otherwise."""
    return "fp64" if dtype == "fp64" else "fp32"


def acc_tl(dtype: str):
    return _TL[acc_dtype(dtype)]


W_ROWS = tuple({"w": w} for w in WEIGHT_DTYPES)
W_IDX_ROWS = tuple({"w": w, "idx": idx} for w, idx in itertools.product(WEIGHT_DTYPES, INDEX_DTYPES))
#: Row widths compiled for the kernels whose tiles follow D (ops/tiles.py): LM widths, the widest row held
#: in registers (8192), and a streamed one.
DIMS = (768, 4096, 8192, 16384)


def with_dims(settings: tuple[dict[str, Any], ...], dims: tuple[int, ...] = DIMS) -> tuple[dict[str, Any], ...]:
    """``settings`` with a row width each, the widths taken in turn (every width and every setting appear)."""
    count = max(len(settings), len(dims))
    return tuple({**settings[i % len(settings)], "dim": dims[i % len(dims)]} for i in range(count))


def _wide(case: dict[str, Any]) -> bool:
    """float64 statistics: a float64 default dtype (StableEmbedding) or float64 data (LayerNorm, renorm)."""
    return "fp64" in (case.get("cast"), case.get("x"), case.get("acc"), case.get("w"))


def _single(c) -> bool:
    from triton_embed.ops.tiles import row_width

    return row_width(c["dim"], _wide(c))[1]


def _forward_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.ops.tiles import forward_tile

    meta, options, _ = forward_tile(config, case["dim"], _wide(case), backend)
    return {**meta, **options}


def _backward_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.ops.tiles import backward_tile

    meta, options, _ = backward_tile(config, case["dim"], _wide(case), backend)
    return {**meta, **options}


def _column_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.ops.tiles import column_tile

    # The embedding backward accumulates in float64 exactly when its rows (the weight's dtype) are float64.
    meta, options = column_tile(config, case["dim"], wide=case.get("w") == "fp64", backend=backend)
    return {**meta, **options}


def _param_grad_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.kernels.reductions import PARTIAL_GROUP

    from triton_embed.ops.tiles import column_tile

    meta, options = column_tile(config, case["dim"], rows=2 * PARTIAL_GROUP.value, wide=_wide(case), backend=backend)
    return {**meta, **options}


def _gather_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    # ops/gather.py and quantized/ops.py: the config's tile (BLOCK_D capped at D's power of two).
    from triton_embed.ops.tiles import backend_options

    meta = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    meta["BLOCK_D"] = min(meta["BLOCK_D"], case.get("dim", meta["BLOCK_D"]))
    return {**meta, **backend_options({k: v for k, v in config.items() if k in LAUNCH_OPTIONS}, backend)}


def _n64(settings: tuple[dict[str, Any], ...] = ({},)) -> tuple[dict[str, Any], ...]:
    """``settings`` plus the first one with a token count of 2**31 or more (an ``i64`` N)."""
    return (*settings, {**settings[0], "N": "i64"})


def _fixed(configs: list[dict[str, int]]) -> Callable[[], list[dict[str, int]]]:
    return lambda: configs
