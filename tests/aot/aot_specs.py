"""How to compile each Triton kernel of ``triton_embed.kernels`` ahead of time (see ``aot_compile.py``).

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

When you add a kernel, add its spec here: ``tests/aot/test_aot_compile.py`` fails for any kernel without one.
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


# --- kernels/gather.py, errors.py ------------------------------------------------------------------

def _gather(c):
    # ops/gather.py: (weight, flat, out, record, N, D, V, row_start, total_rows, weight strides, flat.stride(0),
    #   out.stride(0), out.stride(1), BLOCK_T, BLOCK_D); out (N, D) contiguous; the record int64.
    w, idx = c["w"], c["idx"]
    return variant({"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "out_ptr": f"*{w}", "err_ptr": "*i64",
                    "N": "i32", "D": "i32", "V": "i32", "row_start": "i32", "total_rows": "i32", "stride_wv": "i32",
                    "stride_on": "i32"},
                   {"stride_wd": 1, "stride_i": 1, "stride_od": 1},
                   ints=("D", "stride_wv", "stride_on"), element=w)


def _error_probe(c):
    # errors.py: error_probe_kernel[(1,)](record): Triton's default launch options.
    return variant({"err_ptr": "*i64"})


# --- kernels/renorm.py ---------------------------------------------------------------------------

def _owner(c) -> str:
    """ops/renorm.owner_dtype: token positions as int32, int64 from 2**31 tokens on."""
    return "*i64" if c.get("N") == "i64" else "*i32"


def _claim_rows(c):
    # ops/renorm.py: (ids, owner, record, N, V, row_start, total_rows, BLOCK_T=CLAIM_BLOCK, num_warps=4).
    return variant({"indices_ptr": f"*{c['idx']}", "owner_ptr": _owner(c), "err_ptr": "*i64", "N": "i32", "V": "i32",
                    "row_start": "i32", "total_rows": "i32"})


def _claim_rows_configs() -> list[dict[str, int]]:
    from triton_embed.ops.renorm import CLAIM_BLOCK, CLAIM_OPTIONS

    return [{"BLOCK_T": CLAIM_BLOCK, **CLAIM_OPTIONS}]


def _renorm_rows(c):
    # (table, ids, owner, N, D, V, row_start, float_bits(max_norm), float_bits(norm_type), table strides, NORM_KIND,
    #   ACC_DTYPE, BLOCK_T, BLOCK_D); the float arguments travel as the int64 bits of a float64.
    w, idx = c["w"], c["idx"]
    return variant({"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "owner_ptr": _owner(c), "N": "i32", "D": "i32",
                    "V": "i32", "row_start": "i32", "max_norm": "i64", "norm_type": "i64", "stride_wv": "i32"},
                   {"stride_wd": 1, "NORM_KIND": c["NORM_KIND"], "ACC_DTYPE": acc_tl(w)}, ints=("D", "stride_wv"))


def _renorm_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.ops.renorm import renorm_tile

    meta, options = renorm_tile(config, case["dim"], _wide({**case, "acc": acc_dtype(case["w"])}), case["NORM_KIND"],
                                backend)
    return {**meta, **options}


#: NORM_KIND values of kernels/renorm.py (NORM_GENERAL, L1, L2, INF, L0, NEG_INF), each with a width.
NORM_KINDS = with_dims(tuple({"NORM_KIND": k} for k in range(6)))


# --- kernels/embedding_backward.py ---------------------------------------------------------------

def _embedding_pieces(c):
    # ops/embedding_backward.py: (rows, sorted_ids, order, head, tail, N, D, V, padding_idx, rows.stride(0),
    #   rows.stride(1), ACC_DTYPE, BLOCK_D); torch.sort keeps the ids' dtype, the order is int64.
    w, idx = c["w"], c["idx"]
    acc = acc_dtype(w)
    return variant({"grad_ptr": f"*{w}", "sorted_ids_ptr": f"*{idx}", "order_ptr": "*i64", "head_ptr": f"*{acc}",
                    "tail_ptr": f"*{acc}", "N": "i32", "D": "i32", "V": "i32", "padding_idx": "i32",
                    "stride_gn": "i32"},
                   {"stride_gd": 1, "ACC_DTYPE": _TL[acc], "EVERY_RUN": c["EVERY_RUN"]}, ints=("D", "stride_gn"))


def _embedding_rows(c):
    # (rows, sorted_ids, order, head, tail, out, partial_w|head, partial_b|head, dw|partial_w, db|partial_b,
    #   N, D, V, P, padding_idx, row_programs, rows strides, out strides, dw_arg.stride(0), db_arg.stride(0),
    #   SCALE_BY_FREQ, ACC_DTYPE, PARAM_GRADS, HAS_WEIGHT, HAS_BIAS, BLOCK_V, BLOCK_D). With PARAM_GRADS
    #   (StableEmbedding) the partials are the LayerNorm's (float32, float64 under a float64 default
    #   dtype), dγ/dβ in the parameters' dtype (the default dtype) with stride 1, or the partials (stride D)
    #   where absent. Without, the pieces buffer stands in for them.
    w, idx = c["w"], c["idx"]
    acc = acc_dtype(w)
    if c["PARAM_GRADS"]:
        partial = acc_dtype(c["cast"])
        types, const, ints = _param_grad_args(c, partial, c["cast"])
    else:
        partial = acc
        types, const, ints = {"dw_ptr": f"*{acc}", "db_ptr": f"*{acc}", "stride_dw": "i32", "stride_db": "i32"}, {}, [
            "stride_dw", "stride_db"]
        const.update({"HAS_WEIGHT": False, "HAS_BIAS": False})
    types.update({"grad_ptr": f"*{w}", "sorted_ids_ptr": f"*{idx}", "order_ptr": "*i64", "head_ptr": f"*{acc}",
                  "tail_ptr": f"*{acc}", "out_ptr": f"*{w}", "partial_w_ptr": f"*{partial}",
                  "partial_b_ptr": f"*{partial}", "N": "i32", "D": "i32", "V": "i32", "P": "i32",
                  "padding_idx": "i32", "row_programs": "i32", "stride_gn": "i32", "stride_ov": "i32"})
    const.update({"stride_gd": 1, "stride_od": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"], "ACC_DTYPE": _TL[acc],
                  "PARAM_GRADS": c["PARAM_GRADS"]})
    if c["PARAM_GRADS"]:
        const.update({"HAS_WEIGHT": c["HAS_WEIGHT"], "HAS_BIAS": c["HAS_BIAS"]})
    return variant(types, const, ("D", "stride_gn", "stride_ov", *ints))


EMBEDDING_PIECES_SETTINGS = with_dims(({"idx": "i64", "EVERY_RUN": False}, {"idx": "i32", "EVERY_RUN": False},
                                       {"idx": "i64", "EVERY_RUN": True}))
EMBEDDING_ROWS_SETTINGS = with_dims((
    {"SCALE_BY_FREQ": False, "PARAM_GRADS": False},
    {"SCALE_BY_FREQ": True, "PARAM_GRADS": False},
    {"SCALE_BY_FREQ": False, "PARAM_GRADS": True, "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"SCALE_BY_FREQ": True, "PARAM_GRADS": True, "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": False},
    {"SCALE_BY_FREQ": False, "PARAM_GRADS": True, "cast": "fp64", "HAS_WEIGHT": False, "HAS_BIAS": False},
))


# --- kernels/layer_norm_forward.py, layer_norm_backward.py -------------------------------------------------------------------
# Absent LayerNorm parameters are replaced by another tensor of the call with stride 0 (or the partial
# buffers with their row stride, for dγ/dβ): their pointer type is then that tensor's dtype.

def _param(c, present_key: str, own: str, fallback: str) -> tuple[str, int | None]:
    """(pointer dtype, constexpr stride or None for a runtime multiple of 16) of an optional parameter."""
    if c[present_key]:
        return (own, 1)
    return (fallback, None)


def _optional_stride(name: str, stride: int | None, types: dict, const: dict, ints: list) -> None:
    """An optional parameter's stride: the constexpr ``stride`` (1) when present, else a runtime int that is
    a multiple of 16 (the 0 passed for an absent parameter)."""
    if stride is None:
        types[name] = "i32"
        ints.append(name)
    else:
        const[name] = stride


def _params_dtype(c, data: str) -> str:
    return data if c["params"] in ("x", "none") else c["params"]


def _layer_norm_fwd(c):
    # ops/layer_norm.py forward: (x_2d, w|x_2d, b|x_2d, y, mean, rstd, N, D, float_bits(eps), x strides,
    #   w.stride(0)|0, b.stride(0)|0, y strides, HAS_WEIGHT, HAS_BIAS, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D)
    x = c["x"]
    p = _params_dtype(c, x)
    w_ty, w_stride = _param(c, "HAS_WEIGHT", p, x)
    b_ty, b_stride = _param(c, "HAS_BIAS", p, x)
    types = {"x_ptr": f"*{x}", "w_ptr": f"*{w_ty}", "b_ptr": f"*{b_ty}", "y_ptr": f"*{x}",
             "mean_ptr": f"*{acc_dtype(x)}", "rstd_ptr": f"*{acc_dtype(x)}", "N": "i32", "D": "i32", "eps": "i64",
             "stride_xn": "i32", "stride_yn": "i32"}
    const = {"stride_xd": 1, "stride_yd": 1, "HAS_WEIGHT": c["HAS_WEIGHT"], "HAS_BIAS": c["HAS_BIAS"],
             "ACC_DTYPE": acc_tl(x), "SINGLE_BLOCK": _single(c)}
    ints = ["D", "stride_xn", "stride_yn"]
    for name, stride in (("stride_w", w_stride), ("stride_b", b_stride)):
        _optional_stride(name, stride, types, const, ints)
    return variant(types, const, tuple(ints))


def _layer_norm_bwd(c):
    # ops/layer_norm.py backward: (x_2d, grad_2d, w|x_2d, mean, rstd, dx, partial_w, partial_b, N, D,
    #   rows_per_program, x strides, grad strides, w.stride(0)|0, dx strides, HAS_WEIGHT, ACC_DTYPE,
    #   SINGLE_BLOCK, BLOCK_T, BLOCK_D)
    x = c["x"]
    acc = acc_dtype(x)
    w_ty, w_stride = _param(c, "HAS_WEIGHT", _params_dtype(c, x), x)
    types = {"x_ptr": f"*{x}", "dy_ptr": f"*{x}", "w_ptr": f"*{w_ty}", "mean_ptr": f"*{acc}",
             "rstd_ptr": f"*{acc}", "dx_ptr": f"*{x}", "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}",
             "N": "i32", "D": "i32", "rows_per_program": "i32", "stride_xn": "i32", "stride_dyn": "i32",
             "stride_dxn": "i32"}
    const = {"stride_xd": 1, "stride_dyd": 1, "stride_dxd": 1, "HAS_WEIGHT": c["HAS_WEIGHT"],
             "ACC_DTYPE": acc_tl(x), "SINGLE_BLOCK": _single(c)}
    ints = ["D", "stride_xn", "stride_dyn", "stride_dxn"]
    _optional_stride("stride_w", w_stride, types, const, ints)
    return variant(types, const, tuple(ints))


def _param_grad_args(c, acc: str, params: str) -> tuple[dict, dict, list]:
    """dw/db pointer types and strides: the parameter's (stride 1) or, when absent, the partial buffer's
    (its row stride D, a runtime multiple of 16)."""
    types, const, ints = {}, {}, []
    for ptr, stride, flag in (("dw_ptr", "stride_dw", "HAS_WEIGHT"), ("db_ptr", "stride_db", "HAS_BIAS")):
        if c[flag]:
            types[ptr] = f"*{params}"
            const[stride] = 1
        else:
            types[ptr] = f"*{acc}"
            types[stride] = "i32"
            ints.append(stride)
    return types, const, ints


def _layer_norm_param_grad(c):
    # reduce_param_grads: (partial_w, partial_b, dw|partial_w, db|partial_b, P, D, dw.stride(0),
    #   db.stride(0), HAS_WEIGHT, HAS_BIAS, BLOCK_D)
    x = c["x"]
    acc = acc_dtype(x)
    types, const, ints = _param_grad_args(c, acc, _params_dtype(c, x))
    types.update({"partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "P": "i32", "D": "i32"})
    const.update({"HAS_WEIGHT": c["HAS_WEIGHT"], "HAS_BIAS": c["HAS_BIAS"]})
    return variant(types, const, ("D", *ints))


LAYER_NORM_FWD_SETTINGS = with_dims((
    {"params": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"params": "x", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"params": "none", "HAS_WEIGHT": False, "HAS_BIAS": False},
    {"params": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": False},
), DIMS[::-1])
LAYER_NORM_BWD_SETTINGS = with_dims((
    {"params": "fp32", "HAS_WEIGHT": True},
    {"params": "x", "HAS_WEIGHT": True},
    {"params": "none", "HAS_WEIGHT": False},
    {"params": "fp32", "HAS_WEIGHT": True},
))
PARAM_GRAD_SETTINGS = with_dims((
    {"params": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"params": "x", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"params": "x", "HAS_WEIGHT": True, "HAS_BIAS": False},
    {"params": "fp32", "HAS_WEIGHT": False, "HAS_BIAS": True},
))
X_ROWS = tuple({"x": x} for x in WEIGHT_DTYPES)


# --- kernels/stable_embedding.py -----------------------------------------------------------------
# "cast" is torch.get_default_dtype() at the call (CAST_DTYPE; ACC_DTYPE is float64 when it is float64);
# the module's LayerNorm parameters are created in that dtype.

def _stable_fwd(c):
    # ops/stable_embedding.py forward: (weight, flat, gamma|weight, beta|weight, out, record, mean, rstd, N,
    #   D, V, float_bits(eps), weight strides, flat.stride(0), stride_g|0, stride_b|0, out strides,
    #   HAS_WEIGHT, HAS_BIAS, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D)
    w, idx, cast = c["w"], c["idx"], c["cast"]
    acc = acc_dtype(cast)
    g_ty, g_stride = _param(c, "HAS_WEIGHT", cast, w)
    b_ty, b_stride = _param(c, "HAS_BIAS", cast, w)
    types = {"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "gamma_ptr": f"*{g_ty}", "beta_ptr": f"*{b_ty}",
             "out_ptr": f"*{w}", "err_ptr": "*i64", "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "N": "i32",
             "D": "i32", "V": "i32", "eps": "i64", "stride_wv": "i32", "stride_on": "i32"}
    const = {"stride_wd": 1, "stride_i": 1, "stride_od": 1, "HAS_WEIGHT": c["HAS_WEIGHT"],
             "HAS_BIAS": c["HAS_BIAS"], "CAST_DTYPE": _TL[cast], "ACC_DTYPE": _TL[acc],
             "SINGLE_BLOCK": _single(c)}
    ints = ["D", "stride_wv", "stride_on"]
    for name, stride in (("stride_g", g_stride), ("stride_b", b_stride)):
        _optional_stride(name, stride, types, const, ints)
    return variant(types, const, tuple(ints), element=w)


def _stable_bwd(c):
    # ops/stable_embedding.py backward: (weight, flat, grad_2d, gamma|weight, mean, rstd, dst, partial_w,
    #   partial_b, N, D, V, padding_idx, rows_per_program, weight strides, flat.stride(0), grad strides,
    #   stride_g|0, dst strides, MODE, ALL_ROWS, HAS_WEIGHT, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T,
    #   BLOCK_D). dst: MODE 0 (N, D) in the weight dtype; MODE 1 the partial_w buffer.
    w, idx, cast, mode = c["w"], c["idx"], c["cast"], c["MODE"]
    acc = acc_dtype(cast)
    g_ty, g_stride = _param(c, "HAS_WEIGHT", cast, w)
    dst = w if mode == 0 else acc
    types = {"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "grad_ptr": f"*{w}", "gamma_ptr": f"*{g_ty}",
             "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "dst_ptr": f"*{dst}",
             "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "N": "i32", "D": "i32", "V": "i32",
             "padding_idx": "i32", "rows_per_program": "i32", "stride_wv": "i32", "stride_gn": "i32",
             "stride_dn": "i32"}
    const = {"stride_wd": 1, "stride_i": 1, "stride_gd": 1, "stride_dd": 1, "MODE": mode,
             "ALL_ROWS": c["ALL_ROWS"], "HAS_WEIGHT": c["HAS_WEIGHT"], "CAST_DTYPE": _TL[cast],
             "ACC_DTYPE": _TL[acc], "SINGLE_BLOCK": _single(c)}
    ints = ["D", "stride_wv", "stride_gn", "stride_dn"]
    _optional_stride("stride_g", g_stride, types, const, ints)
    return variant(types, const, tuple(ints))


STABLE_FWD_SETTINGS = with_dims((
    {"idx": "i64", "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"idx": "i32", "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"idx": "i64", "cast": "fp64", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"idx": "i32", "cast": "fp32", "HAS_WEIGHT": False, "HAS_BIAS": False},
), DIMS[::-1])
# MODE 0 writes d(emb) rows (ALL_ROWS: every token's, for sparse gradients), MODE 1 only dγ/dβ partials.
STABLE_BWD_SETTINGS = with_dims((
    {"idx": "i64", "MODE": 0, "ALL_ROWS": False, "HAS_WEIGHT": True, "cast": "fp32"},
    {"idx": "i32", "MODE": 0, "ALL_ROWS": True, "HAS_WEIGHT": True, "cast": "fp32"},
    {"idx": "i64", "MODE": 1, "ALL_ROWS": False, "HAS_WEIGHT": True, "cast": "fp32"},
    {"idx": "i32", "MODE": 0, "ALL_ROWS": False, "HAS_WEIGHT": False, "cast": "fp64"},
))


# --- kernels/stable_embedding_runs.py ------------------------------------------------------------
# Launched only for a table in the default dtype ("w" is also the cast: float32, or float64 with float64
# statistics) with rows of at most 4096 columns (2048 for float64): rows pair each dtype with such widths.

def _runs_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.ops.tiles import runs_tile

    meta, options = runs_tile(config, case["dim"], _wide(case), backend)
    return {**meta, **options}


def _stable_runs(c):
    # ops/stable_embedding_runs.py: (weight, grad_2d, sorted_ids, order, head, tail, gamma|weight, mean, rstd,
    #   out, partial_w, partial_b, N, D, V, padding_idx, run_programs, weight strides, grad strides,
    #   stride_g|0, out strides, SCALE_BY_FREQ, HAS_WEIGHT, ACC_DTYPE, BLOCK_V, ZERO_BLOCK_D, BLOCK_D)
    w, idx = c["w"], c["idx"]
    acc = acc_dtype(w)
    g_ty, g_stride = _param(c, "HAS_WEIGHT", w, w)
    types = {"weight_ptr": f"*{w}", "grad_ptr": f"*{w}", "sorted_ids_ptr": f"*{idx}", "order_ptr": "*i64",
             "head_ptr": f"*{acc}", "tail_ptr": f"*{acc}", "gamma_ptr": f"*{g_ty}", "mean_ptr": f"*{acc}",
             "rstd_ptr": f"*{acc}", "out_ptr": f"*{w}", "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}",
             "N": "i32", "D": "i32", "V": "i32", "padding_idx": "i32", "run_programs": "i32",
             "stride_wv": "i32", "stride_gn": "i32", "stride_ov": "i32"}
    const = {"stride_wd": 1, "stride_gd": 1, "stride_od": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"],
             "HAS_WEIGHT": c["HAS_WEIGHT"], "ACC_DTYPE": _TL[acc]}
    ints = ["D", "stride_wv", "stride_gn", "stride_ov"]
    _optional_stride("stride_g", g_stride, types, const, ints)
    return variant(types, const, tuple(ints))


RUNS_ROWS = tuple({"w": w, "dim": d} for w, d in (("fp32", 768), ("fp32", 4096), ("fp64", 768), ("fp64", 2048)))
RUNS_SETTINGS = (
    {"idx": "i64", "SCALE_BY_FREQ": False, "HAS_WEIGHT": True},
    {"idx": "i32", "SCALE_BY_FREQ": True, "HAS_WEIGHT": True},
    {"idx": "i64", "SCALE_BY_FREQ": False, "HAS_WEIGHT": False},
)


# --- kernels/quantized.py ------------------------------------------------------------------------
# quantized/ops.py: the table is int8 codes (V, D) with float32 row scales (FORMAT 0; the scales stand in for
# the codebook pointer), or packed uint8 codes with float32 block scales and the float32 codebook (FORMAT 1;
# its column strides are (D, 1), unused). block_shift is log2 of the block size (5..12, never specialised).
# "w" is the table's (the output's) dtype.

def _quantized_table(c) -> tuple[dict, dict]:
    codes = "i8" if c["FORMAT"] == 0 else "u8"
    types = {"codes_ptr": f"*{codes}", "scales_ptr": "*fp32", "codebook_ptr": "*fp32", "indices_ptr": f"*{c['idx']}",
             "N": "i32", "D": "i32", "V": "i32", "block_shift": "i32", "stride_cv": "i32"}
    return types, {"stride_cd": 1, "stride_i": 1, "FORMAT": c["FORMAT"]}


def _quantized_gather(c):
    # (codes, scales, codebook|scales, flat, out, record, N, D, V, block_shift, stride_cv, stride_cd, flat.stride(0),
    #   out strides, FORMAT, BLOCK_T, BLOCK_D); out (N, D) contiguous.
    types, const = _quantized_table(c)
    types.update({"out_ptr": f"*{c['w']}", "err_ptr": "*i64", "stride_on": "i32"})
    const["stride_od"] = 1
    return variant(types, const, ints=("D", "stride_cv", "stride_on"))


def _quantized_stable_fwd(c):
    # (codes, scales, codebook|scales, flat, gamma|scales, beta|scales, out, record, mean, rstd, N, D, V,
    #   block_shift, float_bits(eps), stride_cv, stride_cd, flat.stride(0), stride_g|0, stride_b|0, out strides,
    #   FORMAT, HAS_WEIGHT, HAS_BIAS, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D); the module's LayerNorm
    #   parameters are float32.
    types, const = _quantized_table(c)
    acc = acc_dtype(c["cast"])
    types.update({"gamma_ptr": "*fp32", "beta_ptr": "*fp32", "out_ptr": f"*{c['w']}", "err_ptr": "*i64",
                  "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "eps": "i64", "stride_on": "i32"})
    const.update({"stride_od": 1, "HAS_WEIGHT": c["HAS_WEIGHT"], "HAS_BIAS": c["HAS_BIAS"],
                  "CAST_DTYPE": _TL[c["cast"]], "ACC_DTYPE": _TL[acc], "SINGLE_BLOCK": _single(c)})
    ints = ["D", "stride_cv", "stride_on"]
    for name, flag in (("stride_g", "HAS_WEIGHT"), ("stride_b", "HAS_BIAS")):
        if c[flag]:
            const[name] = 1
        else:
            types[name] = "i32"
            ints.append(name)
    return variant(types, const, tuple(ints))


def _quantized_stable_bwd(c):
    # (codes, scales, codebook|scales, flat, grad_2d, gamma|scales, mean, rstd, partial_w, partial_b, N, D, V,
    #   block_shift, rows_per_program, stride_cv, stride_cd, flat.stride(0), grad strides, stride_g|0, FORMAT,
    #   HAS_WEIGHT, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D)
    types, const = _quantized_table(c)
    acc = acc_dtype(c["cast"])
    types.update({"grad_ptr": f"*{c['w']}", "gamma_ptr": "*fp32", "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}",
                  "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "rows_per_program": "i32",
                  "stride_gn": "i32"})
    const.update({"stride_gd": 1, "HAS_WEIGHT": c["HAS_WEIGHT"], "CAST_DTYPE": _TL[c["cast"]], "ACC_DTYPE": _TL[acc],
                  "SINGLE_BLOCK": _single(c)})
    ints = ["D", "stride_cv", "stride_gn"]
    if c["HAS_WEIGHT"]:
        const["stride_g"] = 1
    else:
        types["stride_g"] = "i32"
        ints.append("stride_g")
    return variant(types, const, tuple(ints))


def _quantized_forward_tile(config: dict[str, int], case: dict[str, Any], backend: str) -> dict[str, int]:
    from triton_embed.quantized.ops import stable_forward_tile

    meta, options, _ = stable_forward_tile(config, case["dim"], _wide(case), case["FORMAT"], backend)
    return {**meta, **options}


Q_ROWS = tuple({"w": w} for w in ("fp32", "bf16", "fp16"))
QUANTIZED_GATHER_SETTINGS = tuple({"FORMAT": f, "idx": i} for f, i in ((0, "i64"), (1, "i64"), (0, "i32"), (1, "i32")))
QUANTIZED_FWD_SETTINGS = with_dims((
    {"FORMAT": 1, "idx": "i64", "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"FORMAT": 0, "idx": "i64", "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"FORMAT": 1, "idx": "i32", "cast": "fp64", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"FORMAT": 0, "idx": "i32", "cast": "fp32", "HAS_WEIGHT": False, "HAS_BIAS": False},
), DIMS[::-1])
QUANTIZED_BWD_SETTINGS = with_dims((
    {"FORMAT": 1, "idx": "i64", "cast": "fp32", "HAS_WEIGHT": True},
    {"FORMAT": 0, "idx": "i32", "cast": "fp32", "HAS_WEIGHT": True},
    {"FORMAT": 1, "idx": "i32", "cast": "fp64", "HAS_WEIGHT": True},
    {"FORMAT": 0, "idx": "i64", "cast": "fp32", "HAS_WEIGHT": False},
))


_K = "triton_embed.kernels"

#: ``max_barriers`` are regression guards: the most any config and case compiles to with ``--all-configs``
#: (tl.sum layouts, the error record's reductions, the fold tree of the dγ/dβ second stage), plus a margin;
#: the folding tree the LayerNorm family used before cost 32-131 barriers per kernel.
SPECS: dict[str, KernelSpec] = {
    spec.key: spec
    for spec in (
        KernelSpec(f"{_K}.gather", "gather_rows_kernel", "gather", W_IDX_ROWS, _gather, _n64(), launch_config=_gather_tile,
                   vector_loads=("BLOCK_T", "BLOCK_D"), vector_stores=("BLOCK_T", "BLOCK_D"), max_barriers=4),
        # triton_embed/runtime/errors.py launches the probe with Triton's defaults: it stores integers only.
        KernelSpec(f"{_K}.errors", "error_probe_kernel", "error_probe", ({},), _error_probe,
                   configs=_fixed([{"num_warps": 4, "num_stages": 3}]), pins_fp_fusion=False),
        KernelSpec(f"{_K}.renorm", "claim_rows_kernel", "renorm", tuple({"idx": i} for i in INDEX_DTYPES),
                   _claim_rows, _n64(), configs=_claim_rows_configs, max_barriers=18),
        KernelSpec(f"{_K}.renorm", "renorm_rows_kernel", "renorm", W_IDX_ROWS, _renorm_rows, _n64(NORM_KINDS),
                   launch_config=_renorm_tile, same_sums=True, max_barriers=8),
        KernelSpec(f"{_K}.embedding_backward", "embedding_bwd_pieces_kernel", "embedding_pieces", W_ROWS,
                   _embedding_pieces, _n64(EMBEDDING_PIECES_SETTINGS), launch_config=_column_tile, max_barriers=6),
        # "stable_rows" lists the same configs as "embedding_rows": PARAM_GRADS covers its variant.
        KernelSpec(f"{_K}.embedding_backward", "embedding_bwd_rows_kernel", "embedding_rows", W_IDX_ROWS,
                   _embedding_rows, _n64(EMBEDDING_ROWS_SETTINGS), launch_config=_column_tile, max_barriers=40),
        KernelSpec(f"{_K}.layer_norm_forward", "layer_norm_fwd_kernel", "layer_norm", X_ROWS, _layer_norm_fwd,
                   _n64(LAYER_NORM_FWD_SETTINGS), launch_config=_forward_tile, approx=LAYER_NORM_APPROX,
                   same_sums=True, max_barriers=16),
        KernelSpec(f"{_K}.layer_norm_backward", "layer_norm_bwd_kernel", "layer_norm_backward", X_ROWS, _layer_norm_bwd,
                   _n64(LAYER_NORM_BWD_SETTINGS), launch_config=_backward_tile, same_sums=True, max_barriers=28),
        KernelSpec(f"{_K}.layer_norm_backward", "layer_norm_param_grad_kernel", "layer_norm_param_grad", X_ROWS,
                   _layer_norm_param_grad, PARAM_GRAD_SETTINGS, launch_config=_param_grad_tile, max_barriers=40),
        KernelSpec(f"{_K}.stable_embedding", "stable_embedding_fwd_kernel", "stable_forward", W_ROWS, _stable_fwd,
                   _n64(STABLE_FWD_SETTINGS), vector_loads=("BLOCK_T", "BLOCK_D"), launch_config=_forward_tile,
                   approx=LAYER_NORM_APPROX, same_sums=True, max_barriers=18),
        KernelSpec(f"{_K}.stable_embedding", "stable_embedding_bwd_kernel", "stable_backward", W_ROWS, _stable_bwd,
                   _n64(STABLE_BWD_SETTINGS), launch_config=_backward_tile, same_sums=True, max_barriers=20),
        KernelSpec(f"{_K}.stable_embedding_runs", "stable_embedding_runs_kernel", "stable_runs", RUNS_ROWS,
                   _stable_runs, _n64(RUNS_SETTINGS), launch_config=_runs_tile, same_sums=True, max_barriers=6),
        KernelSpec(f"{_K}.quantized", "quantized_gather_kernel", "quantized_gather", Q_ROWS, _quantized_gather,
                   _n64(QUANTIZED_GATHER_SETTINGS), launch_config=_gather_tile, max_barriers=22),
        KernelSpec(f"{_K}.quantized", "quantized_stable_fwd_kernel", "quantized_stable_forward", Q_ROWS,
                   _quantized_stable_fwd, _n64(QUANTIZED_FWD_SETTINGS), launch_config=_quantized_forward_tile,
                   approx=LAYER_NORM_APPROX, same_sums=True, max_barriers=34),
        KernelSpec(f"{_K}.quantized", "quantized_stable_bwd_kernel", "quantized_stable_backward", Q_ROWS,
                   _quantized_stable_bwd, _n64(QUANTIZED_BWD_SETTINGS), launch_config=_backward_tile, same_sums=True,
                   max_barriers=26),
    )
}

#: Kernels whose main loads must compile to 128-bit global loads (D a multiple of 16, unit column stride).
NEEDS_VECTOR_LOADS = frozenset(spec.name for spec in SPECS.values() if spec.needs_vector_loads)
