"""How to compile each Triton kernel of ``triton_embed.kernels`` ahead of time (see ``aot_compile.py``).

One :class:`KernelSpec` per ``@triton.jit`` kernel. A spec names the kernel, its autotune family in
``triton_embed.tuning.CONFIGS`` (every config of the family is compiled, with its block sizes as they are),
and how the launchers in ``triton_embed/ops`` call it:

- ``rows``: the dtype combinations (weight dtype, and for the cheap kernels index dtype too). Every row is
  compiled with every config for every target.
- ``settings``: values of the constexpr flags (``SCALE_BY_FREQ``, ``NORM_KIND``, ``MODE``, ``HAS_WEIGHT``,
  ``SINGLE_BLOCK``, the default-dtype cast, ...) and, for the big fused kernels, the index dtype. They are
  rotated over the rows, shifted by one per config: each config x target compiles every row and every
  setting at least once, and across configs the settings meet different rows. This keeps the whole test
  under three minutes on two cores; ``AOT_EXHAUSTIVE=1`` compiles the full rows x settings product.
- ``make``: builds the :class:`Variant` (argument types, constexprs, alignment) of one row + setting.

Argument types use Triton's signature spelling: ``"*fp32"`` (pointer to float32), ``"i32"``, ``"i64"``
(also the float64 bits the launchers pass for exact float scalars). Constexprs are given by value. Block
sizes and launch options come from the config; a config key the kernel does not take (``BLOCK_D`` for ``claim_rows_kernel``) is ignored.

Specialisation, as Triton's runtime does it for contiguous tensors whose dim is a multiple of 16:
- an int argument equal to 1 (unit strides) becomes the constexpr 1;
- pointers (torch allocations are 256-byte aligned) and ints that are multiples of 16 (the dim, the row
  strides, and the 0 strides passed for absent LayerNorm parameters) carry ``tt.divisibility = 16``.
Every scalar size and stride is ``i32``: Triton passes an int as i64 only when it does not fit in 32 bits,
and no single count or stride does (V·D may exceed 2³¹, which is why the kernels widen offsets to int64
themselves). 64-bit data lives behind pointers: int64 ids and ``torch.sort`` orders.

When you add a kernel, add its spec here: ``tests/test_aot_compile.py`` fails for any kernel without one.
Set ``needs_vector_loads=True`` for kernels whose main loads must be 128-bit (the forward gather, the fused
StableEmbedding forward); ``vector_tile`` names the constexprs of the ``rows x cols`` tile a program loads,
so that the check can demand enough 128-bit loads to read the whole tile.

This module imports only ``triton.language`` and ``triton_embed.tuning`` (for the config lists), never the
kernels, so importing it under ``TRITON_INTERPRET=1`` is harmless.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import triton.language as tl

#: Weight dtypes the launchers support (float64 tables accumulate in float64).
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp64")
#: Index dtypes accepted by the public API.
INDEX_DTYPES = ("i32", "i64")
#: Compute capabilities compiled for: A100 (sm_80) and H100/H200 (sm_90).
TARGETS = (80, 90)
#: Compile the full rows x settings product instead of the rotation.
EXHAUSTIVE = os.environ.get("AOT_EXHAUSTIVE", "0") not in ("0", "", "false", "False")

#: Bytes per element of each Triton dtype name, for the vector-load expectation.
ELEMENT_BYTES = {"fp64": 8, "i64": 8, "fp32": 4, "i32": 4, "bf16": 2, "fp16": 2, "i16": 2, "i8": 1}

_TL = {"fp32": tl.float32, "fp64": tl.float64, "bf16": tl.bfloat16, "fp16": tl.float16}


@dataclass(frozen=True)
class Variant:
    """One way a launcher calls a kernel: argument types, fixed constexprs and alignment facts."""

    types: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    #: Arguments known to be multiples of 16 (ints) or 16-byte aligned (pointers).
    aligned: tuple[str, ...] = ()
    #: dtype of the tile checked for 128-bit loads (the table's dtype), for ``needs_vector_loads`` specs.
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


@dataclass(frozen=True)
class KernelSpec:
    module: str
    name: str
    family: str
    rows: tuple[dict[str, Any], ...]
    make: Callable[[dict[str, Any]], Variant]
    settings: tuple[dict[str, Any], ...] = ({},)
    needs_vector_loads: bool = False
    #: (rows constexpr, cols constexpr): the program's main load is one rows x cols tile.
    vector_tile: tuple[str, str] | None = None
    #: Config list override (kernels launched with a fixed config, self-tests), or a function returning
    #: it; None means ``triton_embed.tuning.CONFIGS[family]``.
    configs: tuple[dict[str, int], ...] | Callable[[], list[dict[str, int]]] | None = None
    #: (config, case) -> the config as the launcher launches it for that case (derived tile, ptxas options).
    launch_config: Callable[[dict[str, int], dict[str, Any]], dict[str, int]] | None = None

    @property
    def key(self) -> str:
        return f"{self.module}.{self.name}"

    def config_list(self) -> list[dict[str, int]]:
        if callable(self.configs):
            return [dict(c) for c in self.configs()]
        if self.configs is not None:
            return [dict(c) for c in self.configs]
        from triton_embed.tuning import CONFIGS

        return [dict(c) for c in CONFIGS[self.family]]

    def cases(self, config_index: int) -> list[dict[str, Any]]:
        """The row + setting combinations compiled with config ``config_index``."""
        if EXHAUSTIVE:
            return [{**r, **s} for r, s in itertools.product(self.rows, self.settings)]
        n_rows, n_settings = len(self.rows), len(self.settings)
        return [{**self.rows[i % n_rows], **self.settings[(i + config_index) % n_settings]}
                for i in range(max(n_rows, n_settings))]

    def variants(self, config_index: int) -> list[Variant]:
        return [replace(self.make(case), label=" ".join(f"{k}={_fmt(v)}" for k, v in case.items()))
                for case in self.cases(config_index)]


def acc_dtype(dtype: str) -> str:
    """The accumulator dtype the launchers pick: float64 for float64 data, float32 otherwise."""
    return "fp64" if dtype == "fp64" else "fp32"


def acc_tl(dtype: str):
    return _TL[acc_dtype(dtype)]


W_ROWS = tuple({"w": w} for w in WEIGHT_DTYPES)
W_IDX_ROWS = tuple({"w": w, "idx": idx} for w, idx in itertools.product(WEIGHT_DTYPES, INDEX_DTYPES))


def _counts(case: dict[str, Any], counted: str) -> str:
    """The counts pointer: ``counted`` (int32 from count_ids_kernel, int64 from torch.bincount) where the
    launcher counts the ids (scale_grad_by_freq), else ``flat.new_empty(1)``, of the ids' dtype."""
    kind = case.get("counts", "counted" if case.get("SCALE_BY_FREQ") else "idx")
    return f"*{counted}" if kind == "counted" else f"*{case['idx']}"


#: Id counts of the plain embedding backward: ops/embedding_backward.py count_ids (int32).
EMBEDDING_COUNTS = "i32"
#: Id counts of the StableEmbedding backward: int32, counted by stable_embedding_bwd_kernel (COUNT_IDS).
STABLE_COUNTS = "i32"


# --- kernels/gather.py ---------------------------------------------------------------------------

def _gather(c):
    # ops/gather.py: (weight, flat, out, N, D, V, weight.stride(0), weight.stride(1), flat.stride(0),
    #   out.stride(0), out.stride(1), BLOCK_T, BLOCK_D); out (N, D) contiguous.
    w, idx = c["w"], c["idx"]
    return variant({"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "out_ptr": f"*{w}",
                    "N": "i32", "D": "i32", "V": "i32", "stride_wv": "i32", "stride_on": "i32"},
                   {"stride_wd": 1, "stride_i": 1, "stride_od": 1},
                   ints=("D", "stride_wv", "stride_on"), element=w)


# --- kernels/scatter.py --------------------------------------------------------------------------

def _scatter_add(c):
    # ops/embedding_backward.py: (grad_2d, flat, counts, acc, N, D, V, padding_idx, grad.stride(0),
    #   grad.stride(1), SCALE_BY_FREQ, BLOCK_T, BLOCK_D); acc (V, D) float32 (float64 for float64).
    w, idx = c["w"], c["idx"]
    return variant({"grad_ptr": f"*{w}", "indices_ptr": f"*{idx}", "counts_ptr": _counts(c, EMBEDDING_COUNTS),
                    "acc_ptr": f"*{acc_dtype(w)}", "N": "i32", "D": "i32", "V": "i32", "padding_idx": "i32",
                    "stride_gn": "i32"},
                   {"stride_gd": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"]}, ints=("D", "stride_gn"))


def _segment_sum(c):
    # (grad_2d, sorted_ids, order, counts, out, head, tail, N, D, padding_idx, grad strides, out strides,
    #   SCALE_BY_FREQ, ACC_DTYPE, CHUNK, BLOCK_D); sorted ids keep the ids' dtype, order is int64.
    w, idx = c["w"], c["idx"]
    return variant({"grad_ptr": f"*{w}", "sorted_ids_ptr": f"*{idx}", "order_ptr": "*i64",
                    "counts_ptr": _counts(c, EMBEDDING_COUNTS), "out_ptr": f"*{w}",
                    "head_ptr": f"*{acc_dtype(w)}", "tail_ptr": f"*{acc_dtype(w)}", "N": "i32", "D": "i32",
                    "padding_idx": "i32", "stride_gn": "i32", "stride_ov": "i32"},
                   {"stride_gd": 1, "stride_od": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"], "ACC_DTYPE": acc_tl(w)},
                   ints=("D", "stride_gn", "stride_ov"))


def _segment_sum_carry(c):
    # (sorted_ids, counts, out, head, tail, N, D, padding_idx, out.stride(0), out.stride(1), CHUNK, BLOCK_D,
    #   SCALE_BY_FREQ)
    w, idx = c["w"], c["idx"]
    return variant({"sorted_ids_ptr": f"*{idx}", "counts_ptr": _counts(c, EMBEDDING_COUNTS), "out_ptr": f"*{w}",
                    "head_ptr": f"*{acc_dtype(w)}", "tail_ptr": f"*{acc_dtype(w)}", "N": "i32", "D": "i32",
                    "padding_idx": "i32", "stride_ov": "i32"},
                   {"stride_od": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"]}, ints=("D", "stride_ov"))


def _count_ids(c):
    # ops/embedding_backward.py count_ids: (flat, counts, N, V, BLOCK_T=COUNT_BLOCK); counts int32.
    return variant({"indices_ptr": f"*{c['idx']}", "counts_ptr": "*i32", "N": "i32", "V": "i32"})


def _count_ids_configs() -> list[dict[str, int]]:
    """count_ids_kernel is not autotuned: one fixed block, Triton's default launch options."""
    from triton_embed.ops.embedding_backward import COUNT_BLOCK

    return [{"BLOCK_T": COUNT_BLOCK, "num_warps": 4, "num_stages": 3}]


SCALE_BY_FREQ = ({"SCALE_BY_FREQ": False}, {"SCALE_BY_FREQ": True})


# --- kernels/renorm.py ---------------------------------------------------------------------------

def _claim_rows(c):
    # ops/renorm.py: (ids, owner, N, BLOCK_T); owner is int32.
    return variant({"indices_ptr": f"*{c['idx']}", "owner_ptr": "*i32", "N": "i32"})


def _renorm_rows(c):
    # (table, ids, owner, N, D, float_bits(max_norm), float_bits(norm_type), table.stride(0), table.stride(1),
    #   NORM_KIND, ACC_DTYPE, BLOCK_T, BLOCK_D); the float arguments travel as the int64 bits of a float64.
    w, idx = c["w"], c["idx"]
    return variant({"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "owner_ptr": "*i32", "N": "i32", "D": "i32",
                    "max_norm": "i64", "norm_type": "i64", "stride_wv": "i32"},
                   {"stride_wd": 1, "NORM_KIND": c["NORM_KIND"], "ACC_DTYPE": acc_tl(w)}, ints=("D", "stride_wv"))


#: NORM_KIND values of kernels/renorm.py (NORM_GENERAL, L1, L2, INF, L0, NEG_INF).
NORM_KINDS = tuple({"NORM_KIND": k} for k in range(6))


# --- kernels/layer_norm.py -----------------------------------------------------------------------
# Absent LayerNorm parameters are replaced by another tensor of the call with stride 0 (or the partial
# buffers with their row stride, for dγ/dβ): their pointer type is then that tensor's dtype.

def _param(c, present_key: str, own: str, fallback: str) -> tuple[str, int | None]:
    """(pointer dtype, constexpr stride or None for a runtime multiple of 16) of an optional parameter."""
    if c[present_key]:
        return (own, 1)
    return (fallback, None)


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
             "ACC_DTYPE": acc_tl(x), "SINGLE_BLOCK": c["SINGLE_BLOCK"]}
    ints = ["D", "stride_xn", "stride_yn"]
    for name, stride in (("stride_w", w_stride), ("stride_b", b_stride)):
        if stride is None:
            types[name] = "i32"
            ints.append(name)
        else:
            const[name] = stride
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
             "ACC_DTYPE": acc_tl(x), "SINGLE_BLOCK": c["SINGLE_BLOCK"]}
    ints = ["D", "stride_xn", "stride_dyn", "stride_dxn"]
    if w_stride is None:
        types["stride_w"] = "i32"
        ints.append("stride_w")
    else:
        const["stride_w"] = w_stride
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
    #   db.stride(0), HAS_WEIGHT, HAS_BIAS, BLOCK_P, BLOCK_D)
    x = c["x"]
    acc = acc_dtype(x)
    types, const, ints = _param_grad_args(c, acc, _params_dtype(c, x))
    types.update({"partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "P": "i32", "D": "i32"})
    const.update({"HAS_WEIGHT": c["HAS_WEIGHT"], "HAS_BIAS": c["HAS_BIAS"]})
    return variant(types, const, ("D", *ints))


LAYER_NORM_FWD_SETTINGS = (
    {"params": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True, "SINGLE_BLOCK": True},
    {"params": "x", "HAS_WEIGHT": True, "HAS_BIAS": True, "SINGLE_BLOCK": False},
    {"params": "none", "HAS_WEIGHT": False, "HAS_BIAS": False, "SINGLE_BLOCK": True},
    {"params": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": False, "SINGLE_BLOCK": False},
)
LAYER_NORM_BWD_SETTINGS = (
    {"params": "fp32", "HAS_WEIGHT": True, "SINGLE_BLOCK": True},
    {"params": "x", "HAS_WEIGHT": True, "SINGLE_BLOCK": False},
    {"params": "none", "HAS_WEIGHT": False, "SINGLE_BLOCK": True},
    {"params": "fp32", "HAS_WEIGHT": True, "SINGLE_BLOCK": False},
)
PARAM_GRAD_SETTINGS = (
    {"params": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"params": "x", "HAS_WEIGHT": True, "HAS_BIAS": True},
    {"params": "x", "HAS_WEIGHT": True, "HAS_BIAS": False},
    {"params": "fp32", "HAS_WEIGHT": False, "HAS_BIAS": True},
)
X_ROWS = tuple({"x": x} for x in WEIGHT_DTYPES)


# --- kernels/stable_embedding.py -----------------------------------------------------------------
# "cast" is torch.get_default_dtype() at the call (CAST_DTYPE; ACC_DTYPE is float64 when it is float64);
# the module's LayerNorm parameters are created in that dtype.

def _stable_fwd(c):
    # ops/stable_embedding.py forward: (weight, flat, gamma|weight, beta|weight, out, mean, rstd, N, D, V,
    #   float_bits(eps), weight strides, flat.stride(0), stride_g|0, stride_b|0, out strides, HAS_WEIGHT,
    #   HAS_BIAS, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK, BLOCK_T, BLOCK_D)
    w, idx, cast = c["w"], c["idx"], c["cast"]
    acc = acc_dtype(cast)
    g_ty, g_stride = _param(c, "HAS_WEIGHT", cast, w)
    b_ty, b_stride = _param(c, "HAS_BIAS", cast, w)
    types = {"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "gamma_ptr": f"*{g_ty}", "beta_ptr": f"*{b_ty}",
             "out_ptr": f"*{w}", "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "N": "i32", "D": "i32",
             "V": "i32", "eps": "i64", "stride_wv": "i32", "stride_on": "i32"}
    const = {"stride_wd": 1, "stride_i": 1, "stride_od": 1, "HAS_WEIGHT": c["HAS_WEIGHT"],
             "HAS_BIAS": c["HAS_BIAS"], "CAST_DTYPE": _TL[cast], "ACC_DTYPE": _TL[acc],
             "SINGLE_BLOCK": c["SINGLE_BLOCK"]}
    ints = ["D", "stride_wv", "stride_on"]
    for name, stride in (("stride_g", g_stride), ("stride_b", b_stride)):
        if stride is None:
            types[name] = "i32"
            ints.append(name)
        else:
            const[name] = stride
    return variant(types, const, tuple(ints), element=w)


def _stable_bwd(c):
    # ops/stable_embedding.py backward: (weight, flat, grad_2d, gamma|weight, mean, rstd, counts, dst,
    #   partial_w, partial_b, N, D, V, padding_idx, rows_per_program, weight strides, flat.stride(0), grad
    #   strides, stride_g|0, dst strides, MODE, COUNT_IDS, HAS_WEIGHT, CAST_DTYPE, ACC_DTYPE, SINGLE_BLOCK,
    #   BLOCK_T, BLOCK_D). dst: MODE 0 (N, D) weight dtype; MODE 1 (V, D) accumulator of the weight dtype;
    #   MODE 2 the partial_w buffer. counts: int32 zeros with COUNT_IDS, else flat.new_empty(1).
    w, idx, cast, mode = c["w"], c["idx"], c["cast"], c["MODE"]
    acc = acc_dtype(cast)
    g_ty, g_stride = _param(c, "HAS_WEIGHT", cast, w)
    dst = {0: w, 1: acc_dtype(w), 2: acc}[mode]
    counts = _counts({"idx": idx, "counts": "counted" if c["COUNT_IDS"] else "idx"}, STABLE_COUNTS)
    types = {"weight_ptr": f"*{w}", "indices_ptr": f"*{idx}", "grad_ptr": f"*{w}", "gamma_ptr": f"*{g_ty}",
             "mean_ptr": f"*{acc}", "rstd_ptr": f"*{acc}", "counts_ptr": counts, "dst_ptr": f"*{dst}",
             "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "N": "i32", "D": "i32", "V": "i32",
             "padding_idx": "i32", "rows_per_program": "i32", "stride_wv": "i32", "stride_gn": "i32",
             "stride_dn": "i32"}
    const = {"stride_wd": 1, "stride_i": 1, "stride_gd": 1, "stride_dd": 1, "MODE": mode,
             "COUNT_IDS": c["COUNT_IDS"], "HAS_WEIGHT": c["HAS_WEIGHT"], "CAST_DTYPE": _TL[cast],
             "ACC_DTYPE": _TL[acc], "SINGLE_BLOCK": c["SINGLE_BLOCK"]}
    ints = ["D", "stride_wv", "stride_gn", "stride_dn"]
    if g_stride is None:
        types["stride_g"] = "i32"
        ints.append("stride_g")
    else:
        const["stride_g"] = g_stride
    return variant(types, const, tuple(ints))


def _stable_grad_finish(c):
    # ops/stable_embedding.py _finish_atomic: (acc, counts, out|acc, partial_w, partial_b, dw|partial_w,
    #   db|partial_b, V, D, P, row_programs, out strides, dw.stride(0), db.stride(0), SCALE_BY_FREQ,
    #   HAS_WEIGHT, HAS_BIAS, BLOCK_V, BLOCK_D, BLOCK_P); acc (V, D) of the weight's accumulator dtype.
    w, cast = c["w"], c["cast"]
    acc = acc_dtype(cast)
    types, const, ints = _param_grad_args(c, acc, cast)
    types.update({"acc_ptr": f"*{acc_dtype(w)}", "counts_ptr": _counts(c, STABLE_COUNTS), "out_ptr": f"*{w}",
                  "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "V": "i32", "D": "i32", "P": "i32",
                  "row_programs": "i32", "stride_ov": "i32"})
    const.update({"stride_od": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"], "HAS_WEIGHT": c["HAS_WEIGHT"],
                  "HAS_BIAS": c["HAS_BIAS"]})
    return variant(types, const, ("D", "stride_ov", *ints))


def _stable_segment_sum(c):
    # _segment_sum_with_param_grads: (rows, sorted_ids, order, counts, out, head, tail, partial_w, partial_b,
    #   dw|partial_w, db|partial_b, N, D, P, num_chunks, padding_idx, rows strides, out strides,
    #   dw.stride(0), db.stride(0), SCALE_BY_FREQ, ACC_DTYPE (of the weight dtype), HAS_WEIGHT, HAS_BIAS,
    #   CHUNK, BLOCK_D, BLOCK_P)
    w, idx, cast = c["w"], c["idx"], c["cast"]
    acc = acc_dtype(cast)
    types, const, ints = _param_grad_args(c, acc, cast)
    types.update({"grad_ptr": f"*{w}", "sorted_ids_ptr": f"*{idx}", "order_ptr": "*i64",
                  "counts_ptr": _counts(c, STABLE_COUNTS), "out_ptr": f"*{w}", "head_ptr": f"*{acc_dtype(w)}",
                  "tail_ptr": f"*{acc_dtype(w)}",
                  "partial_w_ptr": f"*{acc}", "partial_b_ptr": f"*{acc}", "N": "i32", "D": "i32", "P": "i32",
                  "num_chunks": "i32", "padding_idx": "i32", "stride_gn": "i32", "stride_ov": "i32"})
    const.update({"stride_gd": 1, "stride_od": 1, "SCALE_BY_FREQ": c["SCALE_BY_FREQ"], "ACC_DTYPE": acc_tl(w),
                  "HAS_WEIGHT": c["HAS_WEIGHT"], "HAS_BIAS": c["HAS_BIAS"]})
    return variant(types, const, ("D", "stride_gn", "stride_ov", *ints))


STABLE_FWD_SETTINGS = (
    {"idx": "i64", "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True, "SINGLE_BLOCK": True},
    {"idx": "i32", "cast": "fp32", "HAS_WEIGHT": True, "HAS_BIAS": True, "SINGLE_BLOCK": False},
    {"idx": "i64", "cast": "fp64", "HAS_WEIGHT": True, "HAS_BIAS": True, "SINGLE_BLOCK": False},
    {"idx": "i32", "cast": "fp32", "HAS_WEIGHT": False, "HAS_BIAS": False, "SINGLE_BLOCK": True},
)
# counts: int64 bincount for dense gradients with scale_grad_by_freq (also on the deterministic path, where
# MODE is 0 and SCALE_BY_FREQ False), else a 1-element tensor of the ids' dtype.
# MODE 1 is the atomic dense gradient, MODE 0 the deterministic one (or sparse rows), MODE 2 no table
# gradient; COUNT_IDS is scale_grad_by_freq on a dense gradient.
STABLE_BWD_SETTINGS = (
    {"idx": "i64", "MODE": 1, "COUNT_IDS": True, "HAS_WEIGHT": True, "cast": "fp32", "SINGLE_BLOCK": True},
    {"idx": "i32", "MODE": 1, "COUNT_IDS": False, "HAS_WEIGHT": True, "cast": "fp32", "SINGLE_BLOCK": False},
    {"idx": "i64", "MODE": 0, "COUNT_IDS": True, "HAS_WEIGHT": True, "cast": "fp32", "SINGLE_BLOCK": True},
    {"idx": "i32", "MODE": 2, "COUNT_IDS": False, "HAS_WEIGHT": True, "cast": "fp32", "SINGLE_BLOCK": False},
    {"idx": "i64", "MODE": 0, "COUNT_IDS": False, "HAS_WEIGHT": False, "cast": "fp64", "SINGLE_BLOCK": False},
    {"idx": "i32", "MODE": 1, "COUNT_IDS": True, "HAS_WEIGHT": True, "cast": "fp64", "SINGLE_BLOCK": True},
)
STABLE_FINISH_SETTINGS = (
    {"idx": "i64", "SCALE_BY_FREQ": True, "HAS_WEIGHT": True, "HAS_BIAS": True, "cast": "fp32"},
    {"idx": "i32", "SCALE_BY_FREQ": False, "HAS_WEIGHT": True, "HAS_BIAS": True, "cast": "fp32"},
    {"idx": "i64", "SCALE_BY_FREQ": True, "HAS_WEIGHT": True, "HAS_BIAS": False, "cast": "fp64"},
    {"idx": "i32", "SCALE_BY_FREQ": False, "HAS_WEIGHT": False, "HAS_BIAS": False, "cast": "fp32"},
)
STABLE_SEGMENT_SUM_SETTINGS = (
    {"idx": "i64", "SCALE_BY_FREQ": False, "HAS_WEIGHT": True, "HAS_BIAS": True, "cast": "fp32"},
    {"idx": "i32", "SCALE_BY_FREQ": True, "HAS_WEIGHT": True, "HAS_BIAS": True, "cast": "fp32"},
    {"idx": "i64", "SCALE_BY_FREQ": True, "HAS_WEIGHT": True, "HAS_BIAS": False, "cast": "fp64"},
    {"idx": "i32", "SCALE_BY_FREQ": False, "HAS_WEIGHT": False, "HAS_BIAS": False, "cast": "fp32"},
)


def _row_blocks(config: dict[str, int], case: dict[str, Any]) -> dict[str, int]:
    """The LayerNorm/StableEmbedding launchers' own derivation (``ops.layer_norm.row_blocks``) at a dim that
    keeps the config's tile: half-width tiles for float64 statistics, the ``maxnreg`` cap."""
    from triton_embed.ops.layer_norm import row_blocks

    wide = "fp64" in (case.get("cast"), case.get("x"))
    meta, options, _ = row_blocks(config, config["BLOCK_D"], wide_accumulator=wide)
    return {**meta, **options}


_K = "triton_embed.kernels"

SPECS: dict[str, KernelSpec] = {
    spec.key: spec
    for spec in (
        KernelSpec(f"{_K}.gather", "gather_rows_kernel", "gather", W_IDX_ROWS, _gather,
                   needs_vector_loads=True, vector_tile=("BLOCK_T", "BLOCK_D")),
        KernelSpec(f"{_K}.scatter", "scatter_add_rows_kernel", "scatter_add", W_IDX_ROWS, _scatter_add,
                   SCALE_BY_FREQ),
        KernelSpec(f"{_K}.scatter", "segment_sum_kernel", "segment_sum", W_IDX_ROWS, _segment_sum, SCALE_BY_FREQ),
        KernelSpec(f"{_K}.scatter", "segment_sum_carry_kernel", "segment_sum", W_IDX_ROWS, _segment_sum_carry,
                   SCALE_BY_FREQ),
        KernelSpec(f"{_K}.scatter", "count_ids_kernel", "count_ids", tuple({"idx": i} for i in INDEX_DTYPES),
                   _count_ids, configs=_count_ids_configs),
        KernelSpec(f"{_K}.renorm", "claim_rows_kernel", "renorm", tuple({"idx": i} for i in INDEX_DTYPES),
                   _claim_rows),
        KernelSpec(f"{_K}.renorm", "renorm_rows_kernel", "renorm", W_IDX_ROWS, _renorm_rows, NORM_KINDS),
        KernelSpec(f"{_K}.layer_norm", "layer_norm_fwd_kernel", "layer_norm", X_ROWS, _layer_norm_fwd,
                   LAYER_NORM_FWD_SETTINGS, launch_config=_row_blocks),
        KernelSpec(f"{_K}.layer_norm", "layer_norm_bwd_kernel", "layer_norm_backward", X_ROWS, _layer_norm_bwd,
                   LAYER_NORM_BWD_SETTINGS, launch_config=_row_blocks),
        KernelSpec(f"{_K}.layer_norm", "layer_norm_param_grad_kernel", "layer_norm_param_grad", X_ROWS,
                   _layer_norm_param_grad, PARAM_GRAD_SETTINGS),
        KernelSpec(f"{_K}.stable_embedding", "stable_embedding_fwd_kernel", "stable_forward", W_ROWS, _stable_fwd,
                   STABLE_FWD_SETTINGS, needs_vector_loads=True, vector_tile=("BLOCK_T", "BLOCK_D"),
                   launch_config=_row_blocks),
        KernelSpec(f"{_K}.stable_embedding", "stable_embedding_bwd_kernel", "stable_backward", W_ROWS, _stable_bwd,
                   STABLE_BWD_SETTINGS, launch_config=_row_blocks),
        KernelSpec(f"{_K}.stable_embedding", "stable_grad_finish_kernel", "stable_finish", W_ROWS,
                   _stable_grad_finish, STABLE_FINISH_SETTINGS),
        KernelSpec(f"{_K}.stable_embedding", "stable_segment_sum_kernel", "stable_segment_sum", W_ROWS,
                   _stable_segment_sum, STABLE_SEGMENT_SUM_SETTINGS),
    )
}

#: Kernels whose main loads must compile to 128-bit global loads (D a multiple of 16, unit column stride).
NEEDS_VECTOR_LOADS = frozenset(spec.name for spec in SPECS.values() if spec.needs_vector_loads)
