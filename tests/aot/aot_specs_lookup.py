"""The AOT specs of the lookup kernels: the gather, the error probe, the max_norm renorm and the embedding backward."""
from __future__ import annotations

from typing import Any

from aot_spec import (
    _TL,
    INDEX_DTYPES,
    W_IDX_ROWS,
    W_ROWS,
    KernelSpec,
    _column_tile,
    _fixed,
    _gather_tile,
    _n64,
    _wide,
    acc_dtype,
    acc_tl,
    variant,
    with_dims,
)
from aot_specs_norm import _param_grad_args

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


_K = "triton_embed.kernels"
SPECS = (
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
)
