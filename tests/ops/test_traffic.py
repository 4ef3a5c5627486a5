"""The traffic audit: each public op's Triton launches, host syncs and bytes of tensors made, against the
budget table in ``triton_embed/traffic.py`` (printed in the README), at a shape where V·D ≫ N·D. A dense
backward may make exactly one tensor of V·D elements: the gradient it returns."""
from __future__ import annotations


import pytest
import torch
from _support.recorder import recording

import triton_embed
from triton_embed import functional
from triton_embed.ops.layer_norm import backward_programs
from triton_embed.ops.tiles import backward_tile
from triton_embed.ops import traffic
from triton_embed.runtime.dispatch import use_triton

V, D, N = 2048, 48, 40
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: Bookkeeping allowed beyond the table (e.g. a scalar): small and independent of V, D and N.
SLACK = 256


@pytest.fixture(autouse=True)
def _kernels_only(device):
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("the budgets are the kernels'; the reference path is PyTorch's own")


def _ids(device) -> torch.Tensor:
    """Repeats, a hot id whose run crosses a chunk of 32 sorted positions, and ids spread over the table."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (N,), generator=gen)
    ids[:36] = 17
    return ids[torch.randperm(N, generator=gen)].to(device)


def _sizes(dtype: torch.dtype, partials: int = 0) -> traffic.Sizes:
    element = torch.empty((), dtype=dtype).element_size()
    return traffic.Sizes(tokens=N, dim=D, rows=V, element=element, index=8,
                         accumulator=8 if dtype == torch.float64 else 4, partials=partials)


def _partials(dtype: torch.dtype) -> int:
    block_t = backward_tile({}, D, dtype == torch.float64)[0]["BLOCK_T"]
    return backward_programs(N, block_t)[0]


def _check(record, op: str, sizes: traffic.Sizes, gradient: torch.Tensor | None = None) -> None:
    b = traffic.budget(op)
    assert sum(record.launches.values()) == b.launches, (op, dict(record.launches))
    assert len(record.syncs) == b.syncs, (op, record.syncs)
    allowed = b.bytes(sizes) + SLACK
    assert record.bytes_made <= allowed, (op, record.bytes_made, allowed, record.made)
    big = record.tensors_of_at_least(V * D)
    if gradient is None:
        assert not big, (op, big)
    else:
        assert len(big) == 1 and big[0][2] == gradient.untyped_storage().nbytes(), (op, big)


def _warm(fn) -> None:
    """One untimed run: error records, tuning choices and compiled kernels exist before recording."""
    fn()


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(device, dtype):
    weight = torch.randn(V, D, device=device).to(dtype).requires_grad_()
    ids = _ids(device)
    grad = torch.randn(N, D, device=device).to(dtype)
    _warm(lambda: functional.embedding(ids, weight).backward(grad))
    weight.grad = None
    with recording() as forward:
        out = functional.embedding(ids, weight)
    _check(forward, "embedding forward", _sizes(dtype))
    with recording() as backward:
        out.backward(grad)
    _check(backward, "embedding backward", _sizes(dtype), gradient=weight.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_with_max_norm(device, dtype):
    weight = torch.randn(V, D, device=device).to(dtype)
    ids = _ids(device)
    _warm(lambda: functional.embedding(ids, weight.clone(), max_norm=1.0))
    with recording() as forward:
        functional.embedding(ids, weight, max_norm=1.0)
    _check(forward, "embedding forward, max_norm", _sizes(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_embedding(device, dtype):
    emb = triton_embed.StableEmbedding(V, D, device=device, dtype=dtype)
    ids = _ids(device)
    grad = torch.randn(N, D, device=device).to(dtype)
    _warm(lambda: emb(ids).backward(grad))
    for p in emb.parameters():
        p.grad = None
    with recording() as forward:
        out = emb(ids)
    _check(forward, "stable_embedding forward", _sizes(dtype))
    with recording() as backward:
        out.backward(grad)
    # A float32 table (the default dtype) takes the per-id path, the others the per-token one.
    op = "stable_embedding backward" + (", table in the default dtype" if dtype == torch.float32 else "")
    _check(backward, op, _sizes(dtype, _partials(torch.float32)), gradient=emb.weight.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm(device, dtype):
    x = torch.randn(N, D, device=device).to(dtype).requires_grad_()
    gamma = torch.randn(D, device=device, requires_grad=True)
    beta = torch.randn(D, device=device, requires_grad=True)
    grad = torch.randn(N, D, device=device).to(dtype)
    _warm(lambda: functional.layer_norm(x, D, gamma, beta).backward(grad))
    with recording() as forward:
        y = functional.layer_norm(x, D, gamma, beta)
    _check(forward, "layer_norm forward", _sizes(dtype))
    with recording() as backward:
        y.backward(grad)
    _check(backward, "layer_norm backward", _sizes(dtype, _partials(dtype)))


def test_the_recorder_sees_what_it_must():
    """Self-test: a V x D temporary, a launch and a host sync are all caught."""
    with recording() as record:
        torch.zeros(V, D)
        torch.ones(3).sum().item()
    assert record.tensors_of_at_least(V * D) and record.syncs


