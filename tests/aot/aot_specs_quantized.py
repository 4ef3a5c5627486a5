"""The AOT specs of the quantized tables' kernels: the gather + dequantize and the fused StableEmbedding."""
from __future__ import annotations

from typing import Any

from aot_spec import (
    _TL,
    DIMS,
    LAYER_NORM_APPROX,
    KernelSpec,
    _backward_tile,
    _gather_tile,
    _n64,
    _single,
    _wide,
    acc_dtype,
    variant,
    with_dims,
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
SPECS = (
        KernelSpec(f"{_K}.quantized", "quantized_gather_kernel", "quantized_gather", Q_ROWS, _quantized_gather,
                   _n64(QUANTIZED_GATHER_SETTINGS), launch_config=_gather_tile, max_barriers=22),
        KernelSpec(f"{_K}.quantized", "quantized_stable_fwd_kernel", "quantized_stable_forward", Q_ROWS,
                   _quantized_stable_fwd, _n64(QUANTIZED_FWD_SETTINGS), launch_config=_quantized_forward_tile,
                   approx=LAYER_NORM_APPROX, same_sums=True, max_barriers=34),
        KernelSpec(f"{_K}.quantized", "quantized_stable_bwd_kernel", "quantized_stable_backward", Q_ROWS,
                   _quantized_stable_bwd, _n64(QUANTIZED_BWD_SETTINGS), launch_config=_backward_tile, same_sums=True,
                   max_barriers=26),
)
