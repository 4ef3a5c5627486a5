"""The AOT specs of the LayerNorm family: LayerNorm forward and backward, the fused StableEmbedding, its per-id backward."""
from __future__ import annotations

from typing import Any

from aot_spec import (
    _TL,
    DIMS,
    LAYER_NORM_APPROX,
    W_ROWS,
    WEIGHT_DTYPES,
    KernelSpec,
    _backward_tile,
    _forward_tile,
    _n64,
    _param_grad_tile,
    _single,
    _wide,
    acc_dtype,
    acc_tl,
    variant,
    with_dims,
)

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


_K = "triton_embed.kernels"
SPECS = (
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
)
