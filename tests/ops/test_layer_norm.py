"""triton_embed.functional.layer_norm against torch.nn.functional.layer_norm and a float64 reference.

Without a GPU the kernels run under Triton's interpreter (see conftest); shapes stay small.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triton_embed
from triton_embed.functional import layer_norm

from _support.oracle import check_against_truth

HEALTH = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# The absolute slack of the tolerance rule, relative to the largest true value.
# Dims that hit the one-block path, the streamed path (the interpreter's BLOCK_D is 64) and odd sizes.
DIMS = st.one_of(st.sampled_from([1, 2, 3, 63, 64, 65, 96]), st.integers(1, 96))


def _run(fn, x, w, b, grad):
    """Output and (dx, dw, db) of ``fn`` by autograd; gradients of absent parameters are None."""
    leaves = [t for t in (x, w, b) if t is not None]
    y = fn(x, w, b)
    grads = iter(torch.autograd.grad(y, leaves, grad))
    return [y] + [next(grads) if t is not None else None for t in (x, w, b)]


def _leaf(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().to(dtype or t.dtype).requires_grad_()


def _compare(x, w, b, grad, eps=1e-5):
    dim = x.shape[-1]
    ours = _run(lambda x_, w_, b_: layer_norm(x_, dim, w_, b_, eps), _leaf(x), _leaf(w), _leaf(b), grad)
    theirs = _run(lambda x_, w_, b_: F.layer_norm(x_, (dim,), w_, b_, eps), _leaf(x), _leaf(w), _leaf(b), grad)
    truth = _run(
        lambda x_, w_, b_: F.layer_norm(x_, (dim,), w_, b_, eps),
        _leaf(x, torch.float64), _leaf(w, torch.float64), _leaf(b, torch.float64), grad.double(),
    )
    for name, o, t, r in zip(("y", "dx", "dw", "db"), ours, theirs, truth):
        check_against_truth(o, t, r, x.dtype, name)
    return ours


@HEALTH
@given(
    lead=st.lists(st.integers(0, 6), min_size=0, max_size=3).filter(lambda s: torch.Size(s).numel() <= 64),
    dim=DIMS,
    dtype=st.sampled_from(DTYPES),
    affine=st.sampled_from(["both", "weight", "bias", "none"]),
    param_fp32=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-6, 1e-3]),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_layer_norm(device, lead, dim, dtype, affine, param_fp32, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, dim)
    x = (torch.randn(shape, generator=gen) * 3 + torch.randn((), generator=gen)).to(dtype).to(device)
    # bf16/fp16 inputs with float32 weight and bias is PyTorch's mixed mode; otherwise parameters match x.
    param_dtype = torch.float32 if param_fp32 and affine == "both" else dtype
    w = torch.randn(dim, generator=gen).to(param_dtype).to(device) if affine in ("both", "weight") else None
    b = torch.randn(dim, generator=gen).to(param_dtype).to(device) if affine in ("both", "bias") else None
    grad = torch.randn(shape, generator=gen).to(dtype).to(device)
    ours = _compare(x, w, b, grad, eps)
    assert ours[0].shape == x.shape and ours[0].dtype == x.dtype


@pytest.mark.parametrize("dim", [257, 1000, 3000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_rows(device, dim, dtype):
    gen = torch.Generator().manual_seed(dim)
    x = (torch.randn(5, dim, generator=gen) + 2).to(dtype).to(device)
    w = torch.randn(dim, generator=gen).to(device)
    b = torch.randn(dim, generator=gen).to(device)
    grad = torch.randn(5, dim, generator=gen).to(dtype).to(device)
    _compare(x, w, b, grad)


def test_dim_16384(device, monkeypatch):
    # Wider than the widest column block (8192): the streamed path.
    gen = torch.Generator().manual_seed(7)
    dim = 16384
    x = (torch.randn(3, dim, generator=gen) * 2 + 1).to(device)
    w = torch.randn(dim, generator=gen).to(device)
    b = torch.randn(dim, generator=gen).to(device)
    grad = torch.randn(3, dim, generator=gen).to(device)
    _compare(x, w, b, grad)
    xb = x.to(torch.bfloat16)
    _compare(xb, w, b, grad.to(torch.bfloat16))


def test_statistics_are_float32(device):
    x = torch.randn(4, 33, dtype=torch.bfloat16, device=device)
    y, mean, rstd = torch.ops.triton_embed.layer_norm(x, None, None, 1e-5)
    assert y.dtype == torch.bfloat16 and mean.dtype == torch.float32 and rstd.dtype == torch.float32
    assert mean.shape == (4,) and rstd.shape == (4,)
    wide = x.float()
    torch.testing.assert_close(mean, wide.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd, torch.rsqrt(wide.var(-1, unbiased=False) + 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [48, 96])
def test_param_grads_repeat_bitwise(device, dim):
    gen = torch.Generator().manual_seed(dim)
    x = torch.randn(61, dim, generator=gen).to(device)
    w = torch.randn(dim, generator=gen).to(device)
    b = torch.randn(dim, generator=gen).to(device)
    grad = torch.randn(61, dim, generator=gen).to(device)
    first = _run(lambda x_, w_, b_: layer_norm(x_, dim, w_, b_), _leaf(x), _leaf(w), _leaf(b), grad)
    for _ in range(2):
        again = _run(lambda x_, w_, b_: layer_norm(x_, dim, w_, b_), _leaf(x), _leaf(w), _leaf(b), grad)
        for a, c in zip(first, again):
            assert torch.equal(a, c)


@pytest.mark.parametrize("rows, dim, fast", [(3, 5, False), (4, 70, True)])
def test_gradcheck_float64(device, rows, dim, fast):
    # 70 > the interpreter's BLOCK_D: the streamed path; the full Jacobian only for the small case.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(rows, dim, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(dim, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(dim, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: layer_norm(t[0], dim, t[1], t[2]), (x, w, b), fast_mode=fast)


def test_launch_counts(device):
    x = torch.randn(9, 40, device=device, requires_grad=True)
    w = torch.randn(40, device=device, requires_grad=True)
    b = torch.randn(40, device=device, requires_grad=True)
    before = triton_embed.launch_counts.copy()
    y = layer_norm(x, 40, w, b)
    after_forward = triton_embed.launch_counts.copy()
    assert after_forward - before == {"layer_norm_fwd_kernel": 1}
    y.backward(torch.randn_like(y))
    assert triton_embed.launch_counts - after_forward == {"layer_norm_bwd_kernel": 1, "layer_norm_param_grad_kernel": 1}


def test_normalized_shape_forms_and_strides(device):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(6, 4, 10, generator=gen).to(device)
    w = torch.randn(4, 10, generator=gen).to(device)
    b = torch.randn(4, 10, generator=gen).to(device)
    # Several trailing dims; a non-contiguous input.
    torch.testing.assert_close(layer_norm(base, (4, 10), w, b), F.layer_norm(base, (4, 10), w, b))
    x = base.transpose(0, 2)
    torch.testing.assert_close(layer_norm(x, [6]), F.layer_norm(x, [6]))
    torch.testing.assert_close(layer_norm(x, torch.Size([6])), F.layer_norm(x, [6]))


def test_empty_inputs(device):
    x = torch.randn(0, 5, device=device, requires_grad=True)
    w = torch.randn(5, device=device, requires_grad=True)
    y = layer_norm(x, 5, w)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_bad_arguments(device):
    x = torch.randn(3, 5, device=device)
    with pytest.raises(RuntimeError):
        layer_norm(x, 4)
    with pytest.raises(RuntimeError):
        layer_norm(x, 5, torch.ones(4, device=device))
    with pytest.raises(NotImplementedError):  # PyTorch's type (a RuntimeError)
        layer_norm(torch.ones(3, 5, dtype=torch.int64, device=device), 5)
    with pytest.raises(RuntimeError, match="at least 1-dimensional"):  # PyTorch's type and words
        layer_norm(x, ())
    with pytest.raises(TypeError):  # a float size is not truncated
        layer_norm(x, (5.0,))


def test_reference_backend_matches(device):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(7, 30, generator=gen).to(torch.bfloat16).to(device)
    w = torch.randn(30, generator=gen).to(device)
    b = torch.randn(30, generator=gen).to(device)
    grad = torch.randn(7, 30, generator=gen).to(torch.bfloat16).to(device)
    fn = lambda x_, w_, b_: layer_norm(x_, 30, w_, b_)  # noqa: E731
    with triton_embed.use_backend("reference"):
        before = triton_embed.launch_counts.copy()
        expected = _run(fn, _leaf(x), _leaf(w), _leaf(b), grad)
        assert triton_embed.launch_counts == before
    torch_result = _run(lambda x_, w_, b_: F.layer_norm(x_, (30,), w_, b_), _leaf(x), _leaf(w), _leaf(b), grad)
    for a, c in zip(expected, torch_result):
        assert torch.equal(a, c)  # the reference path is PyTorch's own kernels
    for a, c in zip(_run(fn, _leaf(x), _leaf(w), _leaf(b), grad), expected):
        torch.testing.assert_close(a, c, rtol=2 ** -7, atol=2 ** -6)


@pytest.mark.parametrize("affine", [True, False])
def test_opcheck(device, affine):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 24, generator=gen).to(device).requires_grad_()
    w = torch.randn(24, generator=gen).to(device).requires_grad_() if affine else None
    b = torch.randn(24, generator=gen).to(device).requires_grad_() if affine else None
    torch.library.opcheck(torch.ops.triton_embed.layer_norm.default, (x, w, b, 1e-5))
    y, mean, rstd = torch.ops.triton_embed.layer_norm(x, w, b, 1e-5)
    grad = torch.randn_like(y)
    detached = [t.detach() if t is not None else None for t in (x, w, b, mean, rstd)]
    # The backward op has no formula of its own (no double backward): its inputs do not require grad.
    torch.library.opcheck(
        torch.ops.triton_embed.layer_norm_backward.default, (grad, *detached[:3], *detached[3:], 1e-5)
    )


def test_compiles_without_graph_break(device):
    model = torch.nn.Sequential(torch.nn.Linear(12, 20)).to(device)
    w = torch.ones(20, device=device, requires_grad=True)

    def step(x):
        return layer_norm(model(x), 20, w).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 12, device=device)
    loss = compiled(x)
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
