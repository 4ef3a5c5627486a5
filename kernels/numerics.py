"""Numerics shared by the kernels: exact float scalars, and rounding casts that behave the same compiled
and interpreted.

Exact scalars: Triton passes a Python float to a kernel as float32, so a float64 computation would see
``eps`` or ``max_norm`` rounded to 24 bits. The launchers pass the int64 bits of the float64 value instead
(``triton_embed.ops.scalars.float_bits``) and the kernel rebuilds the value with :func:`_exact_float`,
exactly, in the dtype it computes in. Such arguments are listed in ``do_not_specialize``: an int argument
equal to 1 would otherwise become a constexpr.

Division: Triton lowers a float32 ``/`` to the approximate ``div.full.f32`` (up to 2 ulp off), so a
quotient that must match PyTorch's IEEE division goes through :func:`_div`.
"""
import triton
import triton.language as tl


@triton.jit
def _exact_float(bits, DTYPE: tl.constexpr):
    """The float64 whose bit pattern is the int ``bits`` (i32 or i64), converted to DTYPE."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(DTYPE)


@triton.jit
def _div(x, y, DTYPE: tl.constexpr):
    """``x / y`` correctly rounded in DTYPE (float32 or float64; both operands already in DTYPE)."""
    if DTYPE == tl.float64:
        quotient = x / y
    else:
        quotient = tl.math.div_rn(x, y)
    return quotient


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)``, rounding to nearest even. (Triton's interpreter truncates float32 -> bfloat16, so
    the rounding to bfloat16 is done on the bits first; the final cast is then exact everywhere.) NaN stays
    NaN (the bit trick alone would carry a NaN's mantissa into the sign bit), and ±inf stays ±inf."""
    if DTYPE == tl.bfloat16:
        if x.dtype != tl.bfloat16:
            bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
            bits = tl.where(is_nan, (bits & 0x80000000) | 0x7FC00000, rounded)
            x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)
