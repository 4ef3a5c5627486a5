"""Numerics the kernels must get exactly right: rounding casts that keep NaN and inf, float64 scalars that
reach a kernel without being rounded to float32, and LayerNorm statistics that centre constant rows to 0."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import triton_embed
from triton_embed import functional
from triton_embed.kernels.embedding_backward import _midpoint
from triton_embed.kernels.numerics import _exact_float, _exp2_f64, _log2_f64, _pow_f64, _round
from triton_embed.ops.scalars import float_bits


@triton.jit
def _round_to_bf16_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < N
    tl.store(out_ptr + offsets, _round(tl.load(x_ptr + offsets, mask=mask), tl.bfloat16), mask=mask)


@triton.jit(do_not_specialize=["bits"])
def _exact_float_kernel(out_ptr, bits, DTYPE: tl.constexpr):
    tl.store(out_ptr, _exact_float(bits, DTYPE))


def _float32_from_bits(patterns: list[int]) -> torch.Tensor:
    return torch.tensor([p - (1 << 32) if p >= 1 << 31 else p for p in patterns], dtype=torch.int32).view(
        torch.float32
    )


def test_bf16_rounding_keeps_nan_and_inf(device):
    patterns = [
        0x7FFFFFFF,  # a GPU's canonical NaN: the bare bit trick turned it into -0.0
        0xFFFFFFFF, 0x7F800001, 0x7FC00000, 0xFFC00001, 0x7FBFFFFF,  # NaNs of both signs, quiet and signalling
        0x7F800000, 0xFF800000,  # ±inf
        0x7F7FFFFF, 0xFF7FFFFF,  # ±float32 max: rounds to ±inf in bf16, as PyTorch rounds it
        0x3F808000, 0x3F818000, 0x3F80C000, 0x00000001, 0x80000000, 0x3F800000,  # ties, denormal, ±0, 1
    ]
    x = _float32_from_bits(patterns).to(device)
    out = torch.full(x.shape, 7.0, dtype=torch.bfloat16, device=device)
    _round_to_bf16_kernel[(1,)](x, out, x.numel(), BLOCK=32)
    expected = x.to(torch.bfloat16)
    assert torch.equal(torch.isnan(out), torch.isnan(x)), out
    finite = ~torch.isnan(x)
    assert torch.equal(out[finite].view(torch.int16), expected[finite].view(torch.int16)), (out, expected)


def test_nan_and_inf_survive_bf16_outputs_and_gradients(device):
    """A NaN row and an inf row stay non-finite through the fused forward, and a NaN output gradient
    reaches the table's bf16 gradient as NaN, never as zero."""
    weight = torch.randn(6, 8, device=device).to(torch.bfloat16)
    weight[1, 2] = float("nan")
    weight[2, 3] = float("inf")
    weight.requires_grad_()
    gamma, beta = torch.ones(8, device=device), torch.zeros(8, device=device)
    ids = torch.tensor([1, 2, 3], device=device)
    out = functional.stable_embedding(ids, weight, gamma, beta)
    assert torch.isnan(out[0]).all() and torch.isnan(out[1]).all() and torch.isfinite(out[2]).all()
    for deterministic in (False, True):
        table = torch.randn(6, 8, device=device).to(torch.bfloat16).requires_grad_()
        grad = torch.randn(3, 8, device=device).to(torch.bfloat16)
        grad[0, 4] = float("nan")
        grad[2, 1] = float("inf")
        functional.embedding(ids, table, deterministic=deterministic).backward(grad)
        assert torch.isnan(table.grad[1, 4]) and torch.isinf(table.grad[3, 1]), table.grad


@pytest.mark.parametrize("value", [1.2345678901234567, 1e-5, 0.0, -2.5, math.inf, 5e-324, 1.0])
def test_float_arguments_reach_kernels_exactly(device, value):
    out = torch.empty(1, dtype=torch.float64, device=device)
    _exact_float_kernel[(1,)](out, float_bits(value), DTYPE=tl.float64)
    assert out.item() == value or (math.isnan(value) and math.isnan(out.item()))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, 0.5])
def test_float64_renorm_matches_pytorch_to_float64_precision(device, norm_type):
    """max_norm, norm_type and the 1e-7 all in float64 (float32 scalars were off by 1.5e-8 relative)."""
    gen = torch.Generator().manual_seed(3)
    weight = (torch.randn(20, 37, generator=gen, dtype=torch.float64) * 3).to(device)
    ids = torch.tensor([0, 3, 3, 7, 19, 11, 7], device=device)
    ours, theirs = weight.clone(), weight.clone()
    functional.embedding(ids, ours, max_norm=1.2345678901234, norm_type=norm_type)
    F.embedding(ids.cpu(), theirs.cpu(), max_norm=1.2345678901234, norm_type=norm_type)
    assert not torch.equal(ours, weight), "nothing was renormalised"
    torch.testing.assert_close(ours.cpu(), theirs.cpu(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("dim", [37, 100])  # one-block and streamed rows (the interpreter's BLOCK_D is 64)
def test_float64_layer_norm_eps_is_exact(device, dim):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(5, dim, generator=gen, dtype=torch.float64) * 1e-2).to(device)
    eps = 1.2345678901234e-3  # large against the variance: an eps rounded to float32 shows
    ours = functional.layer_norm(x, dim, eps=eps)
    torch.testing.assert_close(ours.cpu(), F.layer_norm(x.cpu(), (dim,), eps=eps), rtol=1e-13, atol=1e-13)


def test_float64_stable_embedding_eps_is_exact(device):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        gen = torch.Generator().manual_seed(5)
        weight = (torch.randn(9, 21, generator=gen, dtype=torch.float64) * 1e-2).to(device)
        gamma = torch.randn(21, generator=gen, dtype=torch.float64).to(device)
        beta = torch.randn(21, generator=gen, dtype=torch.float64).to(device)
        ids = torch.tensor([[1, 8], [0, 1]], device=device)
        ours = functional.stable_embedding(ids, weight, gamma, beta, eps=1.2345678901234e-3)
        theirs = F.layer_norm(F.embedding(ids.cpu(), weight.cpu()), (21,), gamma.cpu(), beta.cpu(), 1.2345678901234e-3)
        torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-13, atol=1e-13)
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("dim", [7, 64, 100])
@pytest.mark.parametrize("value", [1.5, 0.1, -3.3e4, 7.0e-3])
def test_layer_norm_of_a_constant_row_is_exactly_beta(device, dim, value):
    """A constant row has variance 0: x - mean must be exactly 0, not an ulp that rstd ≈ 316 magnifies."""
    beta = torch.linspace(-1, 1, dim, device=device)
    gamma = torch.randn(dim, device=device)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.full((3, dim), value, dtype=dtype, device=device)
        y = functional.layer_norm(x, dim, gamma.to(dtype), beta.to(dtype))
        assert torch.equal(y, beta.to(dtype).expand(3, dim)), (dtype, y)


def test_stable_embedding_of_a_constant_row_is_zero(device):
    """bitsandbytes gives exactly 0 for a row filled with 1.5 (D=7); the fused kernel must too."""
    emb = triton_embed.StableEmbedding(3, 7, device=device)
    with torch.no_grad():
        emb.weight.fill_(1.5)
    out = emb(torch.tensor([0, 2], device=device))
    assert torch.equal(out, torch.zeros_like(out)), out


@pytest.mark.parametrize("dim", [4, 100])  # one-block and streamed rows
def test_a_variance_that_overflows_gives_nan_not_beta(device, dim):
    """A float32 row with an element near 1e38: its variance overflows. PyTorch's CPU LayerNorm gives NaN;
    so must the kernels (rstd = 0 would return β alone: finite, plausible and wrong), and the backward."""
    x = torch.linspace(-1, 1, dim, device=device).repeat(2, 1)
    x[0, 1] = 1e38
    beta = torch.full((dim,), 0.5, device=device)
    y = functional.layer_norm(x, dim, torch.ones(dim, device=device), beta)
    assert y[0].isnan().all()
    torch.testing.assert_close(y[1], F.layer_norm(x[1:], (dim,), bias=beta)[0])
    table = x.clone().requires_grad_()
    out = functional.stable_embedding(torch.tensor([0, 1], device=device), table, None, None)
    out.sum().backward()
    assert out[0].isnan().all() and table.grad[0].isnan().all()
    assert not out[1].isnan().any() and not table.grad[1].isnan().any()


@pytest.mark.parametrize("norm_type", [math.inf, -math.inf, 2.0, 1.0, 0.0, 3.0])
def test_renorm_of_a_row_with_nan_does_what_pytorch_does(device, norm_type):
    """A NaN makes PyTorch's norm NaN (no rescale) except for p = 0, which counts it as non-zero."""
    weight = torch.tensor([[1.0, float("nan"), 5.0], [3.0, 4.0, 0.0]], device=device)
    ours, theirs = weight.clone(), weight.clone().cpu()
    functional.embedding(torch.tensor([0, 1], device=device), ours, max_norm=1.0, norm_type=norm_type)
    F.embedding(torch.tensor([0, 1]), theirs, max_norm=1.0, norm_type=norm_type)
    torch.testing.assert_close(ours.cpu(), theirs, equal_nan=True)


# --- compiled numerics: the helpers the kernels use instead of the hardware approximations -------------
# The ahead-of-time check (tests/aot/test_aot_compile.py) reads the compiled code of every kernel for
# sqrt.approx / div.full / ex2.approx / lg2.approx and FMA; these tests hold the replacements to their
# accuracy, on the GPU natively and in the interpreter (which computes the same IEEE operations).

@triton.jit
def _float64_math_kernel(x_ptr, p, log_ptr, exp_ptr, pow_ptr, N, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < N
    x = tl.load(x_ptr + offsets, mask=mask, other=1.0)
    exponent = _exact_float(p, tl.float64)
    tl.store(log_ptr + offsets, _log2_f64(x), mask=mask)
    tl.store(exp_ptr + offsets, _exp2_f64(x), mask=mask)
    tl.store(pow_ptr + offsets, _pow_f64(x, exponent), mask=mask)


def _ulps(ours: torch.Tensor, exact: torch.Tensor) -> float:
    same = (ours == exact) | (ours.isnan() & exact.isnan())
    spacing = torch.from_numpy(np.spacing(exact.abs().numpy())).clamp_min(5e-324)
    return float(torch.where(same, 0.0, (ours - exact).abs() / spacing).max())


def test_float64_log2_exp2_pow_are_within_an_ulp_or_two(device):
    """The general-p renorm raises |x| to p as 2^(p·log2|x|) in float64 from IEEE adds and multiplies: within
    1 ulp for log2 and exp2; for the power, log2's last-bit error times p·ln 2 (|p·log2 x| reaches 30 here:
    ~33 ulps, 4e-15 relative, against the 1e-7 a float32 row needs), exact special values."""
    gen = torch.Generator().manual_seed(6)
    x = torch.cat([torch.rand(300, generator=gen, dtype=torch.float64) * 20,
                   torch.rand(100, generator=gen, dtype=torch.float64) * 1e-3,
                   torch.tensor([0.0, -0.0, 1.0, 2.0, 0.5, 1e-310, 5e-324, 1e300, 1024.0, -1074.0, -1080.0, 1023.5,
                                 float("inf"), float("-inf"), float("nan")], dtype=torch.float64)])
    log2, exp2, power = (torch.full_like(x, 7.0).to(device) for _ in range(3))
    _float64_math_kernel[(1,)](x.to(device), float_bits(3.0), log2, exp2, power, x.numel(), BLOCK=512)
    finite = torch.isfinite(x) & (x >= 0)
    with np.errstate(all="ignore"):
        exact_log2 = torch.from_numpy(np.log2(x.numpy()))
        exact_exp2 = torch.from_numpy(np.exp2(x.numpy()))
        exact_pow = torch.from_numpy(np.power(np.abs(x.numpy()), 3.0))
    assert _ulps(log2.cpu()[finite], exact_log2[finite]) <= 1
    assert _ulps(exp2.cpu(), exact_exp2) <= 1
    assert _ulps(power.cpu()[finite], exact_pow[finite]) <= 64
    specials = {0.0: (-math.inf, 1.0, 0.0), math.inf: (math.inf, math.inf, math.inf), -math.inf: (math.nan, 0.0, math.nan)}
    for value, expected in specials.items():
        at = (x == value).nonzero()[0].item()
        got = (log2[at].item(), exp2[at].item(), power[at].item())
        assert all(g == e or (math.isnan(g) and math.isnan(e)) for g, e in zip(got, expected)), (value, got)
    assert torch.isnan(log2.cpu()[-1]) and torch.isnan(exp2.cpu()[-1]) and torch.isnan(power.cpu()[-1])


@pytest.mark.parametrize("norm_type", [2.0, 1.0])
def test_renorm_decides_at_the_threshold_by_the_correctly_rounded_norm(device, norm_type):
    """A row whose norm is exactly max_norm keeps its values; with max_norm one ulp below, it is rescaled:
    the decision follows the correctly rounded norm (sqrt.approx could put it on either side). float64 rows,
    so that a factor one ulp under 1 shows in the values."""
    row = torch.tensor([[3.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    norm = 5.0 if norm_type == 2.0 else 7.0
    for max_norm, rescaled in ((norm, False), (math.nextafter(norm, 0.0), True)):
        weight = row.clone().to(device)
        functional.embedding(torch.tensor([0], device=device), weight, max_norm=max_norm, norm_type=norm_type)
        assert (not torch.equal(weight.cpu(), row)) == rescaled, (norm_type, max_norm, weight)


@triton.jit
def _midpoint_kernel(lo_ptr, hi_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, _midpoint(tl.load(lo_ptr + offsets), tl.load(hi_ptr + offsets)))


def test_binary_search_midpoint_does_not_overflow_int32(device):
    """(lo + hi) // 2 of int32 bounds turns negative from 2**30 tokens on; the backward's search does not
    form lo + hi (and its bounds are int64: the AOT check compiles every kernel with an int64 N too)."""
    lo = torch.tensor([0, 2**30, 2**30 + 5, 2**31 - 3, 7, 0, 1, 2**30 - 1], dtype=torch.int32)
    hi = torch.tensor([2**31 - 1, 2**31 - 1, 2**31 - 2, 2**31 - 1, 7, 1, 2**31 - 1, 2**30 + 1], dtype=torch.int32)
    out = torch.full((8,), -1, dtype=torch.int32, device=device)
    _midpoint_kernel[(1,)](lo.to(device), hi.to(device), out, BLOCK=8)
    assert out.cpu().tolist() == [(a + b) // 2 for a, b in zip(lo.tolist(), hi.tolist())]
