"""The quantized ops' traffic: Triton launches, host syncs and bytes of tensors made, against
``traffic.QUANTIZED_BUDGETS`` (printed in the README), at a shape where V·D ≫ N·D: nothing of the table's
size is made, neither a dequantized table nor a weight gradient."""
from __future__ import annotations

import pytest
import torch
from _support.quantized import quantized_class
from _support.recorder import recording

from triton_embed.ops import traffic
from triton_embed.ops.layer_norm import backward_programs
from triton_embed.ops.tiles import backward_tile
from triton_embed.runtime.dispatch import use_triton

V, D, N = 2048, 48, 40
SLACK = 256


@pytest.fixture(autouse=True)
def _kernels_only(device):
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("the budgets are the kernels'; the reference path is PyTorch's own")


def _module(fmt: str, dtype: torch.dtype, stable: bool, device):
    source = torch.nn.Embedding(V, D, dtype=dtype, device=device)
    cls, format_options = quantized_class(fmt, stable)
    return cls.from_float(source, **format_options)


def _check(record, op: str, sizes: traffic.Sizes) -> None:
    b = traffic.budget(op)
    assert sum(record.launches.values()) == b.launches, (op, dict(record.launches))
    assert len(record.syncs) == b.syncs, (op, record.syncs)
    assert record.bytes_made <= b.bytes(sizes) + SLACK, (op, record.bytes_made, b.bytes(sizes), record.made)
    assert not record.tensors_of_at_least(V * D // 8), (op, record.tensors_of_at_least(V * D // 8))


def _ids(device):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (N,), generator=gen)
    ids[::4] = 17
    return ids.to(device)


@pytest.mark.parametrize("fmt", ["int8", "nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lookup(device, fmt, dtype):
    emb = _module(fmt, dtype, False, device)
    ids = _ids(device)
    emb(ids)
    with recording() as record:
        emb(ids)
    element = torch.empty((), dtype=dtype).element_size()
    _check(record, "quantized embedding forward", traffic.Sizes(tokens=N, dim=D, rows=V, element=element))


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stable_embedding(device, fmt, dtype):
    emb = _module(fmt, dtype, True, device)
    ids = _ids(device)
    grad = torch.randn(N, D, device=device).to(dtype)
    emb(ids).backward(grad)
    for p in emb.parameters():
        p.grad = None
    element = torch.empty((), dtype=dtype).element_size()
    partials = backward_programs(N, backward_tile({}, D)[0]["BLOCK_T"])[0]
    sizes = traffic.Sizes(tokens=N, dim=D, rows=V, element=element, partials=partials)
    with recording() as forward:
        out = emb(ids)
    _check(forward, "quantized stable_embedding forward", sizes)
    with recording() as backward:
        out.backward(grad)
    _check(backward, "quantized stable_embedding backward", sizes)
    assert emb.norm.weight.grad is not None and emb.weight.grad is None


