"""Inputs at the edges, each as PyTorch handles it: empty tables, every table dtype, integral padding_idx
types, LayerNorm parameters in another dtype, and the deterministic flag set around backward() alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import triton_embed
from triton_embed import functional


@pytest.fixture(params=["auto", "reference"])
def backend(request):
    """Both paths must accept the same inputs: the kernels (interpreted on the CPU) and the reference."""
    with triton_embed.use_backend(request.param):
        yield request.param


# --- empty tables ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [triton_embed.Embedding, triton_embed.StableEmbedding])
@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (5, 0)])
def test_empty_tables_build_like_torch(device, cls, shape):
    """torch.nn.Embedding accepts these; xavier init used to divide by zero (bitsandbytes still does)."""
    emb = cls(*shape, device=device)
    assert emb.weight.shape == torch.Size(shape)
    assert emb(torch.empty(0, dtype=torch.long, device=device)).shape == (0, shape[1])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_zero_width_table_trains(device, backend, sparse, padding_idx):
    emb = triton_embed.Embedding(10, 0, padding_idx=padding_idx, sparse=sparse, device=device)
    ids = torch.tensor([[1, 2], [2, 9]], device=device)
    out = emb(ids)
    assert out.shape == (2, 2, 0)
    out.sum().backward()
    grad = emb.weight.grad.to_dense() if sparse else emb.weight.grad
    assert grad.shape == (10, 0)


@pytest.mark.parametrize("sparse", [False, True])
def test_zero_width_stable_embedding_matches_torch(device, backend, sparse):
    emb = triton_embed.StableEmbedding(10, 0, sparse=sparse, device=device)
    out = emb(torch.tensor([1, 2, 2], device=device))
    expected = F.layer_norm(torch.empty(3, 0), (0,))
    assert out.shape == expected.shape == (3, 0)
    out.sum().backward()
    assert emb.norm.weight.grad.shape == (0,) and emb.weight.grad.shape == (10, 0)


# --- table dtypes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool])
def test_integer_table_with_max_norm_raises_and_is_unchanged(device, backend, dtype):
    """PyTorch raises (its norm() refuses integer tables); rescaling ints silently zeroed rows."""
    weight = (torch.arange(12, device=device).view(4, 3) % 5).to(dtype)
    before = weight.clone()
    with pytest.raises(RuntimeError, match="floating or complex"):
        functional.embedding(torch.tensor([1, 2], device=device), weight, max_norm=1.0)
    assert torch.equal(weight, before)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                                   torch.complex64, torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2,
                                   torch.uint16, torch.uint32, torch.float64])
def test_every_dtype_gathers_like_torch(device, backend, dtype):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen) * 4
    if dtype.is_complex:
        weight = torch.complex(base, torch.randn(6, 5, generator=gen)).to(dtype)
    elif dtype == torch.bool:
        weight = base > 0
    else:
        weight = base.abs().to(dtype) if dtype in (torch.uint8, torch.uint16, torch.uint32) else base.to(dtype)
    weight = weight.to(device)
    ids = torch.tensor([[5, 0], [3, 3]], device=device)
    out = functional.embedding(ids, weight)
    expected = F.embedding(ids.cpu(), weight.cpu())
    assert out.dtype == dtype and torch.equal(out.cpu().view(torch.uint8), expected.view(torch.uint8))


def test_complex_table_renorms_like_torch(device, backend):
    gen = torch.Generator().manual_seed(1)
    weight = torch.complex(torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)).to(device)
    ours, theirs = weight.clone(), weight.clone().cpu()
    ids = torch.tensor([0, 2, 2], device=device)
    out = functional.embedding(ids, ours, max_norm=0.5)
    expected = F.embedding(ids.cpu(), theirs, max_norm=0.5)
    torch.testing.assert_close(out.cpu(), expected)
    torch.testing.assert_close(ours.cpu(), theirs)


def test_complex_table_with_grad_raises_like_torch(device):
    weight = torch.randn(4, 3, dtype=torch.complex64, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="complex"):
        functional.embedding(torch.tensor([1], device=device), weight)
    with torch.no_grad():
        assert functional.embedding(torch.tensor([1], device=device), weight).shape == (1, 3)


def test_stable_embedding_refuses_a_non_float_table(device):
    with pytest.raises(RuntimeError, match="floating weight"):
        functional.stable_embedding(torch.tensor([0], device=device), torch.ones(2, 3, dtype=torch.int64, device=device),
                                    None, None)


# --- padding_idx types --------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [np.int64(1), np.int32(-2), torch.tensor(1), True])
def test_any_integral_padding_idx_is_accepted(device, padding_idx):
    expected_row = int(padding_idx) % 3
    for cls in (triton_embed.Embedding, triton_embed.StableEmbedding):
        emb = cls(3, 4, padding_idx=padding_idx, device=device)
        emb(torch.tensor([0, 1, 2], device=device)).sum().backward()
        assert not emb.weight.grad[expected_row].any()
    weight = torch.randn(3, 4, device=device, requires_grad=True)
    functional.embedding(torch.tensor([0, 1, 2], device=device), weight, padding_idx=padding_idx).sum().backward()
    assert not weight.grad[expected_row].any() and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("padding_idx", [1.0, "1", [1]])
def test_non_integral_padding_idx_raises_type_error(device, padding_idx):
    with pytest.raises(TypeError, match="padding_idx must be an integer"):
        functional.embedding(torch.tensor([0], device=device), torch.randn(3, 4, device=device), padding_idx=padding_idx)


# --- LayerNorm parameters in another dtype ----------------------------------------------------------------------

@pytest.mark.parametrize("param_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_both_paths_accept_layer_norm_params_of_any_float_dtype(device, param_dtype):
    """The kernels always took them; the reference path refused fp16 params beside a float32 input."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(7, 12, generator=gen).to(device).requires_grad_()
    gamma = torch.randn(12, generator=gen).to(device, param_dtype).requires_grad_()
    beta = torch.randn(12, generator=gen).to(device, param_dtype).requires_grad_()
    ids = torch.tensor([[1, 6, 6]], device=device)
    grad = torch.randn(1, 3, 12, generator=gen).to(device)
    results = {}
    for name in ("auto", "reference"):
        with triton_embed.use_backend(name):
            leaves = [t.detach().clone().requires_grad_() for t in (weight, gamma, beta)]
            out = functional.stable_embedding(ids, *leaves)
            out.backward(grad)
            x = torch.randn(4, 12, generator=torch.Generator().manual_seed(3)).to(device)
            results[name] = [out, *(t.grad for t in leaves), functional.layer_norm(x, 12, leaves[1], leaves[2])]
    for ours, ref in zip(results["auto"], results["reference"]):
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, rtol=1e-2, atol=1e-2)


# --- the deterministic flag ------------------------------------------------------------------------------------

def test_deterministic_algorithms_around_backward_alone_are_honoured(device):
    """torch.use_deterministic_algorithms(True) around backward() alone: the backward runs (nothing in it
    refuses the flag) and gives the bits of an unflagged run (the one backward is deterministic anyway)."""
    weight = torch.randn(10, 4, device=device, requires_grad=True)
    ids = torch.tensor([1, 1, 3, 1, 9], device=device)
    for fn in (lambda w: functional.embedding(ids, w), lambda w: functional.stable_embedding(ids, w, None, None)):
        grads = []
        for flag in (False, True):
            weight.grad = None
            out = fn(weight)
            previous = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(flag)
            try:
                out.sum().backward()
            finally:
                torch.use_deterministic_algorithms(previous)
            grads.append(weight.grad.clone())
        assert torch.equal(*grads)
