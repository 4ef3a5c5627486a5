"""Numerics shared by the kernels: exact float scalars, and rounding casts that behave the same compiled
and interpreted.

Exact scalars: Triton passes a Python float to a kernel as float32, so a float64 computation would see
``eps`` or ``max_norm`` rounded to 24 bits. The launchers pass the int64 bits of the float64 value instead
(``triton_embed.ops.scalars.float_bits``) and the kernel rebuilds the value with :func:`_exact_float`,
exactly, in the dtype it computes in. Such arguments are listed in ``do_not_specialize``: an int argument
equal to 1 would otherwise become a constexpr.

Compiled numerics: Triton lowers a float32 ``/`` to the approximate ``div.full.f32`` (up to 2 ulp off),
``tl.sqrt`` to ``sqrt.approx.ftz.f32`` (``llvm.amdgcn.sqrt`` on AMD), ``tl.exp``/``tl.log`` to the hardware's
``ex2.approx``/``lg2.approx``. A quotient that must match PyTorch's IEEE division goes through :func:`_div`,
a square root that is compared against a threshold through :func:`_sqrt` (``sqrt.rn``), and powers of
general exponents through :func:`_pow_f64`: float64 logarithm and exponential built from IEEE adds,
multiplies and one division, with FMA contraction off (every launcher pins it), so the GPU and the
interpreter compute the same bits. The only approximation the kernels use is the LayerNorm family's float32
``rsqrt`` (documented at ``layer_norm._rstd``); the ahead-of-time check reads the compiled code for any other.
"""
import os

import triton
import triton.language as tl

#: Whether the kernels run under Triton's interpreter (read at import, as ``@triton.jit`` reads it). Its
#: float32 -> bfloat16 cast truncates, so :func:`_round` rounds on the bits there; compiled, the cast is the
#: hardware's round-to-nearest-even conversion (one instruction per two values, not ten integer operations).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False"))


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
def _sqrt(x, DTYPE: tl.constexpr):
    """The square root in DTYPE (float32 or float64; ``x`` already in DTYPE), correctly rounded:
    ``sqrt.rn`` / ``llvm.sqrt`` (``tl.sqrt`` is that already for float64, and takes float32 only)."""
    if DTYPE == tl.float64:
        root = tl.sqrt(x)
    else:
        root = tl.sqrt_rn(x)
    return root


@triton.jit
def _f64(value):
    """A float64 constant with all of its bits (a bare float literal would be rounded to float32 first)."""
    return tl.full([], value, tl.float64)


@triton.jit
def _log2_f64(x):
    """log2(x) of a float64 tensor to about 1 ulp: -inf at 0, +inf at +inf, NaN below 0 or at NaN.

    x = 2^e · m with m in [√½, √2) from the bits; ln m = 2·atanh(s), s = (m - 1)/(m + 1), |s| < 0.172,
    by its series to s^25 (terms below 2^-60 after that)."""
    bits = x.to(tl.int64, bitcast=True)
    subnormal = ((bits >> 52) & 0x7FF) == 0
    # Subnormals are scaled by 2^54 first (exactly), so every finite x > 0 has a normal exponent.
    scaled = tl.where(subnormal, x * _f64(18014398509481984.0), x).to(tl.int64, bitcast=True)
    e = ((scaled >> 52) & 0x7FF) - 1023 - tl.where(subnormal, 54, 0)
    m = ((scaled & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).to(tl.float64, bitcast=True)
    high = m > _f64(1.4142135623730951)
    m = tl.where(high, m * _f64(0.5), m)
    e = e + tl.where(high, 1, 0)
    f = m - _f64(1.0)
    s = f / (f + _f64(2.0))
    z = s * s
    series = _f64(2.0 / 25.0)
    for k in tl.static_range(11, -1, -1):
        series = series * z + _f64(2.0 / (2 * k + 1))
    result = e.to(tl.float64) + (s * series) * _f64(1.4426950408889634)
    result = tl.where(x == 0, _f64(float("-inf")), result)
    result = tl.where(x == float("inf"), x, result)
    return tl.where((x < 0) | (x != x), _f64(float("nan")), result)


@triton.jit
def _exp2_f64(y):
    """2^y of a float64 tensor to about 1 ulp: 0 below -1100, +inf above 1100, NaN at NaN.

    y = n + f with n an integer (rounded by adding and subtracting 1.5·2^52) and |f| <= 1/2; 2^f = e^(f ln 2)
    by its series to the 17th power (terms below 2^-58 after that); 2^n from the bits, in two halves so that
    each factor is a normal float64 and the result under- or overflows with a single rounding."""
    clamped = tl.minimum(tl.maximum(y, _f64(-1100.0)), _f64(1100.0))
    n = (clamped + _f64(6755399441055744.0)) - _f64(6755399441055744.0)
    r = (clamped - n) * _f64(0.6931471805599453)
    series = tl.zeros_like(r) + _f64(1.0)
    for k in tl.static_range(17, 0, -1):  # Horner: 1 + r/1 (1 + r/2 (1 + ... (1 + r/17)))
        series = series * (r * _f64(1.0 / k)) + _f64(1.0)
    n_int = n.to(tl.int64)
    half = n_int >> 1
    low = ((half + 1023) << 52).to(tl.float64, bitcast=True)
    high = ((n_int - half + 1023) << 52).to(tl.float64, bitcast=True)
    result = (series * low) * high
    return tl.where(y != y, y, result)


@triton.jit
def _pow_f64(x, p):
    """|x|^p in float64 for x >= 0 (or NaN) and any finite p: 2^(p · log2 x). 0^p is 0 for p > 0 and +inf
    for p < 0, as ``torch.norm`` takes it."""
    return _exp2_f64(p * _log2_f64(x))


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)``, rounding to nearest even. Compiled, that is the cast itself (``cvt.rn``). Triton's
    interpreter truncates float32 -> bfloat16, so there the rounding to bfloat16 is done on the bits first
    (the final cast is then exact); NaN stays NaN (the bit trick alone would carry a NaN's mantissa into the
    sign bit), and ±inf stays ±inf."""
    if _INTERPRETED:
        if DTYPE == tl.bfloat16:
            if x.dtype != tl.bfloat16:
                bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
                rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
                bits = tl.where(is_nan, (bits & 0x80000000) | 0x7FC00000, rounded)
                x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)
