"""Property tests: the Triton kernels (natively on a GPU, under the interpreter on CPU) against the
reference path and float64 oracles, across the option space of F.embedding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import triton_embed
from _support.oracle import assert_close_to_oracle, assert_exact
from _support.strategies import NORM_TYPES, index_cases, padding_choices, table_cases


def dense_grad_oracle(grad, indices, num_embeddings, padding_idx, scale_grad_by_freq):
    """The weight gradient in float64 on the CPU: depends only on the output gradient and the ids."""
    pad = -1 if padding_idx is None else padding_idx % num_embeddings
    return torch.ops.aten.embedding_dense_backward(
        grad.double().cpu().reshape(-1, grad.shape[-1]), indices.cpu().reshape(-1), num_embeddings, pad,
        scale_grad_by_freq,
    )


@given(
    table=table_cases(),
    index=index_cases(),
    data=st.data(),
    scale_grad_by_freq=st.booleans(),
    deterministic=st.booleans(),
)
def test_lookup_and_dense_gradient_match_reference(device, table, index, data, scale_grad_by_freq, deterministic):
    padding_idx = data.draw(padding_choices(table.num_embeddings))
    weight = table.make(device)
    ids = index.make(table.num_embeddings, device)
    ref_weight = weight.detach().clone().requires_grad_()

    out = triton_embed.functional.embedding(
        ids, weight, padding_idx, scale_grad_by_freq=scale_grad_by_freq, deterministic=deterministic
    )
    expected = F.embedding(ids, ref_weight, padding_idx, scale_grad_by_freq=scale_grad_by_freq)
    assert_exact(out, expected)

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(index.seed)).to(out.dtype).to(device)
    out.backward(grad)
    expected.backward(grad)
    oracle = dense_grad_oracle(grad, ids, table.num_embeddings, padding_idx, scale_grad_by_freq)
    assert weight.grad.dtype == weight.dtype and weight.grad.shape == weight.shape
    assert_close_to_oracle(weight.grad, oracle, ref_weight.grad, what="weight gradient")
    if padding_idx is not None:
        assert not weight.grad[padding_idx].any(), "padding row got a gradient"


@given(table=table_cases(), index=index_cases(), data=st.data())
def test_gradient_rows_sum_to_output_gradient(device, table, index, data):
    weight = table.make(device)
    ids = index.make(table.num_embeddings, device)
    deterministic = data.draw(st.booleans())
    out = triton_embed.functional.embedding(ids, weight, deterministic=deterministic)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(index.seed)).to(out.dtype).to(device)
    out.backward(grad)
    total = grad.double().reshape(-1, table.dim).sum(0).cpu()
    column_sums = weight.grad.double().sum(0).cpu()
    # Each row sum is rounded once to the weight dtype, then summed again.
    rtol = 1e-5 if weight.dtype == torch.float32 else 4 * torch.finfo(weight.dtype).eps
    bound = rtol * (grad.double().abs().reshape(-1, table.dim).sum(0).cpu() + 1e-3)
    assert ((column_sums - total).abs() <= bound).all()


@given(table=table_cases(), index=index_cases(), data=st.data())
def test_deterministic_backward_is_bitwise_repeatable(device, table, index, data):
    padding_idx = data.draw(padding_choices(table.num_embeddings))
    scale = data.draw(st.booleans())
    ids = index.make(table.num_embeddings, device)
    grads = []
    for _ in range(2):
        weight = table.make(device)
        out = triton_embed.functional.embedding(ids, weight, padding_idx, scale_grad_by_freq=scale, deterministic=True)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(index.seed)).to(out.dtype).to(device)
        out.backward(grad)
        grads.append(weight.grad)
    assert torch.equal(grads[0], grads[1])


def test_the_backward_is_deterministic_whatever_the_flags(device):
    """One backward path, deterministic by construction: the flag and torch.use_deterministic_algorithms
    (around the forward, or around backward() alone) are accepted and change no bit."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(9, 5, generator=gen).to(device).requires_grad_()
    ids = torch.randint(0, 9, (40,), generator=gen).to(device)
    grad = torch.randn(40, 5, generator=gen).to(device)
    grads = []
    for deterministic, around in ((False, None), (True, None), (None, "forward"), (None, "backward")):
        weight.grad = None
        previous = torch.are_deterministic_algorithms_enabled()
        try:
            torch.use_deterministic_algorithms(around == "forward")
            out = triton_embed.functional.embedding(ids, weight, deterministic=deterministic)
            torch.use_deterministic_algorithms(around == "backward")
            out.backward(grad)
        finally:
            torch.use_deterministic_algorithms(previous)
        grads.append(weight.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@given(table=table_cases(), index=index_cases(), data=st.data())
def test_sparse_gradient_matches_pytorch_after_coalesce(device, table, index, data):
    padding_idx = data.draw(padding_choices(table.num_embeddings))
    weight = table.make(device)
    ids = index.make(table.num_embeddings, device)
    ref_weight = weight.detach().clone().requires_grad_()
    out = triton_embed.functional.embedding(ids, weight, padding_idx, sparse=True)
    # PyTorch's own sparse backward fails on 0-d ids; the same ids flattened give it the same gradient.
    expected = F.embedding(ids.reshape(-1), ref_weight, padding_idx, sparse=True)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(index.seed)).to(out.dtype).to(device)
    out.backward(grad)
    expected.backward(grad.reshape(expected.shape))
    assert weight.grad.is_sparse
    ours, theirs = weight.grad.coalesce(), ref_weight.grad.coalesce()
    assert_exact(ours.indices(), theirs.indices())
    assert_exact(ours.values(), theirs.values())


def test_sparse_with_scale_grad_by_freq_raises_like_pytorch(device):
    weight = torch.randn(5, 3, device=device, requires_grad=True)
    out = triton_embed.functional.embedding(torch.tensor([1, 1], device=device), weight, scale_grad_by_freq=True, sparse=True)
    with pytest.raises(RuntimeError, match="scale_grad_by_freq not supported with sparse gradients"):
        out.sum().backward()


@given(table=table_cases(), index=index_cases(), norm_type=st.sampled_from(NORM_TYPES), data=st.data())
def test_max_norm_renorm_matches_reference(device, table, index, norm_type, data):
    weight = table.make(device, requires_grad=False)
    ids = index.make(table.num_embeddings, device)
    original = weight.clone()
    norms = weight.double().norm(p=norm_type, dim=1)
    # Around the median norm, so some rows are rescaled and some are not.
    max_norm = float(norms.median()) * data.draw(st.sampled_from([0.5, 1.0, 1.5]))
    torch_weight = original.clone()
    oracle = original.double().cpu()

    out = triton_embed.functional.embedding(ids, weight, max_norm=max_norm, norm_type=norm_type)
    F.embedding(ids, torch_weight, max_norm=max_norm, norm_type=norm_type)
    torch.embedding_renorm_(oracle, ids.cpu().long(), max_norm, norm_type)

    touched = torch.zeros(table.num_embeddings, dtype=torch.bool)
    touched[ids.cpu().reshape(-1).long()] = True
    assert torch.equal(weight[~touched.to(device)], original[~touched.to(device)]), "an untouched row changed"
    assert_close_to_oracle(weight, oracle, torch_weight, what="renormed table")
    new_norms = weight.double().norm(p=norm_type, dim=1).cpu()
    slack = 1e-5 if weight.dtype == torch.float32 else 2e-2
    assert (new_norms[touched] <= max_norm * (1 + slack) + 1e-6).all(), "a renormed row exceeds max_norm"
    assert_exact(out, weight[ids])


@given(index=index_cases(), data=st.data())
def test_renorm_with_duplicates_equals_renorm_of_unique_ids(device, index, data):
    table = data.draw(table_cases())
    ids = index.make(table.num_embeddings, device)
    with_duplicates = table.make(device, requires_grad=False)
    unique = with_duplicates.clone()
    triton_embed.functional.embedding(ids, with_duplicates, max_norm=0.3)
    triton_embed.functional.embedding(ids.reshape(-1).unique(), unique, max_norm=0.3)
    assert torch.equal(with_duplicates, unique)


@pytest.mark.sweep
@settings(max_examples=400)
@given(table=table_cases(max_rows=300, max_dim=260), index=index_cases(max_tokens=400), data=st.data())
def test_sweep_large(device, table, index, data):
    """The larger sweep behind ``-m sweep``: bigger tables, more tokens, every option together."""
    padding_idx = data.draw(padding_choices(table.num_embeddings))
    scale = data.draw(st.booleans())
    weight = table.make(device)
    ids = index.make(table.num_embeddings, device)
    ref_weight = weight.detach().clone().requires_grad_()
    out = triton_embed.functional.embedding(ids, weight, padding_idx, scale_grad_by_freq=scale,
                                            deterministic=data.draw(st.booleans()))
    expected = F.embedding(ids, ref_weight, padding_idx, scale_grad_by_freq=scale)
    assert_exact(out, expected)
    grad = torch.randn(out.shape).to(out.dtype).to(device)
    out.backward(grad)
    expected.backward(grad)
    oracle = dense_grad_oracle(grad, ids, table.num_embeddings, padding_idx, scale)
    assert_close_to_oracle(weight.grad, oracle, ref_weight.grad, what="weight gradient")


@pytest.mark.parametrize("dim", [16384, 16383])
def test_wide_rows(device, dim, monkeypatch):
    """Dims up to at least 16384: the column grid and the renorm's column loop cover every element."""
    from triton_embed import tuning

    # Wider interpreter blocks (still several per row) keep the number of interpreted programs small.
    for name, config in tuning.INTERPRETER_CONFIGS.items():
        if name in ("gather", "embedding_pieces", "embedding_rows"):
            monkeypatch.setitem(tuning.INTERPRETER_CONFIGS, name, {**config, "BLOCK_D": 2048})
    weight = torch.randn(5, dim, device=device, requires_grad=True)
    ids = torch.tensor([4, 0, 4, 2], device=device)
    ref_weight = weight.detach().clone().requires_grad_()
    out = triton_embed.functional.embedding(ids, weight, max_norm=50.0)
    expected = F.embedding(ids, ref_weight, max_norm=50.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn(4, dim, device=device)
    triton_embed.functional.embedding(ids, weight).backward(grad)
    oracle = dense_grad_oracle(grad, ids, 5, None, False)
    assert_close_to_oracle(weight.grad, oracle, what="weight gradient")


@pytest.mark.parametrize("make_ids", [
    lambda base: base[:, ::2],  # 2-D with a column stride
    lambda base: base.reshape(-1)[::3],  # 1-D strided view: the kernel reads it through its stride
    lambda base: base.t(),  # transposed
])
def test_non_contiguous_ids(device, make_ids):
    base = torch.randint(0, 11, (6, 8), device=device)
    ids = make_ids(base)
    assert not ids.is_contiguous()
    weight = torch.randn(11, 5, device=device, requires_grad=True)
    ref_weight = weight.detach().clone().requires_grad_()
    out = triton_embed.functional.embedding(ids, weight)
    expected = F.embedding(ids, ref_weight)
    assert_exact(out, expected)
    grad = torch.randn(out.shape, device=device)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(weight.grad, ref_weight.grad, rtol=1e-5, atol=1e-6)
