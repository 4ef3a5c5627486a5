"""triton_embed.StableEmbedding (fused lookup + LayerNorm) against reference.StableEmbedding, bitsandbytes'
module written out in PyTorch, and a float64 truth: properties over hypothesis' inputs, and the module's contract.

Without a GPU the kernels run under Triton's interpreter (see conftest); shapes stay small.
"""
from __future__ import annotations

import math

import pytest
import torch
from _support.oracle import check_against_truth
from _support.strategies import default_dtype, make_ids
from hypothesis import assume, given
from hypothesis import strategies as st
from stable_cases import (
    DIMS,
    DISTRIBUTIONS,
    HEALTH,
    INDEX_SHAPES,
    WEIGHT_DTYPES,
    compare_modules,
    effective_dtype,
    forward_backward,
    make_modules,
    truth,
)

import triton_embed
from triton_embed import reference
from triton_embed.functional import stable_embedding

# ----------------------------------------------------------------------------------------------------------
# Properties against the reference


@HEALTH
@given(
    num_embeddings=st.integers(1, 40),
    dim=DIMS,
    dtype=st.sampled_from(WEIGHT_DTYPES),
    default64=st.booleans(),
    shape=INDEX_SHAPES,
    distribution=DISTRIBUTIONS,
    padding=st.sampled_from([None, "positive", "negative"]),
    scale_grad_by_freq=st.booleans(),
    deterministic=st.booleans(),
    index_dtype=st.sampled_from([torch.int64, torch.int32]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(device, num_embeddings, dim, dtype, default64, shape, distribution, padding,
                           scale_grad_by_freq, deterministic, index_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    padding_idx = None
    if padding is not None:
        padding_idx = int(torch.randint(0, num_embeddings, (), generator=gen))
        if padding == "negative":
            padding_idx -= num_embeddings
    with default_dtype(torch.float64 if default64 else torch.float32):
        ours, ref = make_modules(
            num_embeddings, dim, dtype, device, seed, padding_idx=padding_idx,
            scale_grad_by_freq=scale_grad_by_freq, deterministic=deterministic,
        )
        assert ours.norm.weight.dtype == torch.get_default_dtype()
        ids = make_ids(gen, shape, num_embeddings, distribution, padding_idx, index_dtype).to(device)
        grad = torch.randn(*shape, dim, generator=gen).to(dtype).to(device)
        out = compare_modules(ours, ref, ids, grad, ref.padding_idx, scale_grad_by_freq)[0]
    assert out.shape == (*shape, dim) and out.dtype == dtype


@HEALTH
@given(
    num_embeddings=st.integers(1, 30),
    dim=DIMS,
    dtype=st.sampled_from(WEIGHT_DTYPES),
    max_norm=st.sampled_from([0.5, 1.0, 3.0, 100.0]),
    norm_type=st.sampled_from([1.0, 2.0, 3.0, math.inf]),
    shape=INDEX_SHAPES,
    distribution=DISTRIBUTIONS,
    seed=st.integers(0, 2**16),
)
def test_max_norm_matches_reference(device, num_embeddings, dim, dtype, max_norm, norm_type, shape,
                                    distribution, seed):
    gen = torch.Generator().manual_seed(seed)
    ours, ref = make_modules(num_embeddings, dim, dtype, device, seed, max_norm=max_norm, norm_type=norm_type)
    ids = make_ids(gen, shape, num_embeddings, distribution).to(device)
    grad = torch.randn(*shape, dim, generator=gen).to(dtype).to(device)
    untouched = torch.ones(num_embeddings, dtype=torch.bool)
    untouched[ids.reshape(-1).cpu()] = False
    before = ours.weight.detach().clone()
    # The truth uses the reference's renormed table, so compare_modules runs the reference first.
    got = forward_backward(ours, ids, grad)
    expected = forward_backward(ref, ids, grad)
    # The in-place renorm: the same rows rescaled (to within rounding of the factor), the others bitwise kept.
    # (The renorm kernel is Embedding's; in half precision its rounding may differ from PyTorch's by an ulp.)
    torch.testing.assert_close(ours.weight.detach(), ref.weight.detach(), rtol=2 ** -6 if dtype != torch.float32 else 1e-6, atol=0)
    assert torch.equal(ours.weight.detach()[untouched.to(device)], before[untouched.to(device)])
    if ids.numel():
        norms = torch.linalg.vector_norm(ours.weight.detach()[ids.reshape(-1)].double(), ord=norm_type, dim=-1)
        assert (norms <= max_norm * (1 + 2 ** -6)).all()
    exact = truth(ours.weight, ours.norm.weight, ours.norm.bias, ids, grad, None, False)
    for name, o, r, t in zip(("output", "weight grad", "norm weight grad", "norm bias grad"), got, expected, exact):
        check_against_truth(o, r, t, effective_dtype(dtype, torch.float32), name)


@HEALTH
@given(
    num_embeddings=st.integers(1, 30),
    dim=DIMS,
    dtype=st.sampled_from(WEIGHT_DTYPES),
    shape=INDEX_SHAPES,
    distribution=DISTRIBUTIONS,
    with_padding=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sparse_matches_reference(device, num_embeddings, dim, dtype, shape, distribution, with_padding, seed):
    assume(shape or not with_padding)  # PyTorch's own sparse backward fails on 0-d ids with a padding_idx
    gen = torch.Generator().manual_seed(seed)
    padding_idx = int(torch.randint(0, num_embeddings, (), generator=gen)) if with_padding else None
    ours, ref = make_modules(num_embeddings, dim, dtype, device, seed, padding_idx=padding_idx, sparse=True)
    ids = make_ids(gen, shape, num_embeddings, distribution, padding_idx).to(device)
    grad = torch.randn(*shape, dim, generator=gen).to(dtype).to(device)
    ours(ids).backward(grad)
    assert ours.weight.grad.is_sparse
    # One uncoalesced entry per non-padding token, as PyTorch gives.
    num_kept = int((ids != padding_idx).sum()) if padding_idx is not None else ids.numel()
    assert ours.weight.grad._nnz() == num_kept
    compare_modules(ours, ref, ids, grad, padding_idx)


def test_sparse_with_scale_grad_by_freq_raises(device):
    emb = triton_embed.StableEmbedding(5, 4, sparse=True, scale_grad_by_freq=True, device=device)
    out = emb(torch.tensor([1, 1, 2], device=device))
    with pytest.raises(RuntimeError, match="scale_grad_by_freq"):
        out.sum().backward()


def test_functional_matches_reference(device):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(12, 20, generator=gen).to(device)
    nw = torch.randn(20, generator=gen).to(device)
    nb = torch.randn(20, generator=gen).to(device)
    ids = torch.randint(0, 12, (3, 4), generator=gen).to(device)
    for affine in ((nw, nb), (nw, None), (None, nb), (None, None)):
        got = stable_embedding(ids, weight, *affine, padding_idx=-1, eps=1e-3)
        expected = reference.stable_embedding(ids, weight, *affine, padding_idx=-1, eps=1e-3)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)




# ----------------------------------------------------------------------------------------------------------
# Module contract


def test_constructor_honours_device_and_dtype(device):
    emb = triton_embed.StableEmbedding(10, 6, padding_idx=-1, device=device, dtype=torch.bfloat16)
    assert emb.weight.dtype == torch.bfloat16 and emb.weight.device.type == device.type
    assert emb.weight.requires_grad  # bitsandbytes 0.50 would have frozen it
    assert emb.norm.weight.dtype == torch.float32 and emb.norm.weight.device.type == device.type
    assert isinstance(emb, triton_embed.Embedding) and isinstance(emb, torch.nn.Embedding)
    assert emb.padding_idx == 9
    assert torch.count_nonzero(emb.weight[9]) == 0
    bound = math.sqrt(6.0 / (10 + 6))
    assert emb.weight.float().abs().max() <= bound * (1 + 2 ** -7)
    assert torch.equal(emb.norm.weight, torch.ones(6, device=device))
    given_weight = torch.randn(4, 6, device=device)
    frozen = triton_embed.StableEmbedding(4, 6, _weight=given_weight, _freeze=True)
    assert torch.equal(frozen.weight, given_weight) and not frozen.weight.requires_grad


def test_state_dict_round_trips(device):
    ours, ref = make_modules(11, 7, torch.float32, device, 5)
    assert list(ours.state_dict()) == ["weight", "norm.weight", "norm.bias"]
    ids = torch.tensor([[3, 0, 10]], device=device)
    # ours -> reference -> fresh ours
    fresh = triton_embed.StableEmbedding(11, 7, device=device)
    fresh.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fresh(ids), ours(ids))
    # ours -> an nn.Embedding + nn.LayerNorm pair, and back
    emb, norm = torch.nn.Embedding(11, 7, device=device), torch.nn.LayerNorm(7, device=device)
    state = ours.state_dict()
    emb.load_state_dict({"weight": state["weight"]})
    norm.load_state_dict({"weight": state["norm.weight"], "bias": state["norm.bias"]})
    torch.testing.assert_close(norm(emb(ids).float()), ours(ids), rtol=1e-5, atol=1e-5)
    back = triton_embed.StableEmbedding(11, 7, device=device)
    back.load_state_dict({"weight": emb.weight, **{f"norm.{k}": v for k, v in norm.state_dict().items()}})
    torch.testing.assert_close(back(ids), ours(ids))


def test_bad_inputs(device):
    emb = triton_embed.StableEmbedding(5, 4, max_norm=1.0, device=device)
    before = emb.weight.detach().clone()
    with pytest.raises(IndexError):
        emb(torch.tensor([1, 5], device=device))
    assert torch.equal(emb.weight.detach(), before)
    with pytest.raises(RuntimeError):
        emb(torch.tensor([1.0], device=device))
    with pytest.raises(RuntimeError):
        stable_embedding(torch.tensor([1], device=device), emb.weight, torch.ones(3, device=device), None)
    with pytest.raises(ValueError):
        triton_embed.StableEmbedding(5, 4, padding_idx=5)


def test_empty_and_scalar_indices(device):
    ours, ref = make_modules(6, 10, torch.float32, device, 2, padding_idx=0)
    for ids in (torch.tensor(3, device=device), torch.zeros(0, dtype=torch.long, device=device),
                torch.zeros(2, 0, 3, dtype=torch.long, device=device)):
        grad = torch.randn(*ids.shape, 10).to(device)
        compare_modules(ours, ref, ids, grad, 0)
