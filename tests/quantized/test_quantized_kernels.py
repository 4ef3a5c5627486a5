"""The quantized lookups and fused StableEmbeddings (``quantized/ops.py``) against the oracle: the whole
table dequantized (``triton_embed.quantized.formats``), then looked up (exact), or fed to the reference
StableEmbedding (the tolerance rule against a float64 truth). Bad ids, empty and scalar ids, opcheck.

Without a GPU the kernels run under Triton's interpreter (see conftest); shapes stay small.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _support.oracle import check_against_truth
from _support.quantized import FORMATS, quantized_class
from _support.strategies import make_ids
from hypothesis import given
from hypothesis import strategies as st

import triton_embed
from triton_embed import reference
from triton_embed.runtime.dispatch import use_triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DIMS = st.one_of(st.sampled_from([1, 5, 63, 64, 65, 130]), st.integers(1, 96))
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=3).filter(lambda s: torch.Size(s).numel() <= 48)


def make_module(fmt: str, rows: int, dim: int, dtype: torch.dtype, seed: int, stable: bool = False,
                blocksize: int = 64, padding_idx: int | None = None):
    """A quantized module of random rows of very different scales (norm parameters random too)."""
    gen = torch.Generator().manual_seed(seed)
    table = (torch.randn(rows, dim, generator=gen) * torch.rand(rows, 1, generator=gen).mul(3).exp()).to(dtype)
    if padding_idx is not None:
        table[padding_idx] = 0
    source = torch.nn.Embedding(rows, dim, padding_idx=padding_idx, _weight=table)
    cls, format_options = quantized_class(fmt, stable)
    module = cls.from_float(source, **format_options, **({} if fmt == "int8" else {"blocksize": blocksize}))
    if stable:
        with torch.no_grad():
            module.norm.weight.copy_(torch.randn(dim, generator=gen))
            module.norm.bias.copy_(torch.randn(dim, generator=gen))
    return module


@given(fmt=st.sampled_from(FORMATS), rows=st.integers(1, 40), dim=DIMS, dtype=st.sampled_from(DTYPES),
       blocksize=st.sampled_from([64, 32, 128]), shape=SHAPES,
       distribution=st.sampled_from(["uniform", "skewed", "hot"]),
       index_dtype=st.sampled_from([torch.int64, torch.int32]), padding=st.booleans(), seed=st.integers(0, 2**16))
def test_lookup_equals_dequantize_then_gather(device, fmt, rows, dim, dtype, blocksize, shape, distribution,
                                               index_dtype, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    padding_idx = int(torch.randint(0, rows, (), generator=gen)) if padding else None
    module = make_module(fmt, rows, dim, dtype, seed, blocksize=blocksize, padding_idx=padding_idx).to(device)
    ids = make_ids(gen, shape, rows, distribution, padding_idx, index_dtype).to(device)
    out = module(ids)
    expected = F.embedding(ids.long(), module.dequantize())
    assert out.dtype == dtype and out.shape == (*shape, dim)
    assert torch.equal(out, expected), (out.double() - expected.double()).abs().max()
    if padding_idx is not None:
        assert not module.dequantize()[padding_idx].any()


def _truth(table, norm, ids, grad):
    """The reference StableEmbedding's function in float64 throughout, on the dequantized table."""
    leaves = [norm.weight.detach().double().requires_grad_(), norm.bias.detach().double().requires_grad_()]
    out = F.layer_norm(F.embedding(ids, table.double()), (table.shape[1],), *leaves, norm.eps)
    return (out, *torch.autograd.grad(out, leaves, grad.double()))


@given(fmt=st.sampled_from(FORMATS), rows=st.integers(1, 30), dim=DIMS, dtype=st.sampled_from(DTYPES),
       shape=SHAPES, distribution=st.sampled_from(["uniform", "skewed", "hot"]), padding=st.booleans(),
       seed=st.integers(0, 2**16))
def test_stable_embedding_matches_dequantize_then_reference(device, fmt, rows, dim, dtype, shape, distribution,
                                                            padding, seed):
    gen = torch.Generator().manual_seed(seed)
    padding_idx = int(torch.randint(0, rows, (), generator=gen)) if padding else None
    ours = make_module(fmt, rows, dim, dtype, seed, stable=True, padding_idx=padding_idx).to(device)
    table = ours.dequantize()
    ref = reference.StableEmbedding(rows, dim, padding_idx=padding_idx, _weight=table.clone(), device=device)
    ref.weight.requires_grad_(False)
    ref.norm.load_state_dict(ours.norm.state_dict())
    ids = make_ids(gen, shape, rows, distribution, padding_idx=padding_idx).to(device)
    grad = torch.randn(*shape, dim, generator=gen).to(dtype).to(device)
    results = []
    for module in (ours, ref):
        out = module(ids)
        out.backward(grad)
        results.append((out, module.norm.weight.grad, module.norm.bias.grad))
    assert ours.weight.grad is None and not ours.weight.requires_grad
    names = ("output", "norm weight grad", "norm bias grad")
    for name, o, r, t in zip(names, *results, _truth(table, ours.norm, ids, grad)):
        check_against_truth(o, r, t, dtype, name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wide_rows_are_streamed(device, fmt):
    """D above the widest register-held row: the fused kernels stream the rows in pieces."""
    ours = make_module(fmt, 5, 8200, torch.bfloat16, 1, stable=True).to(device)
    ref = reference.StableEmbedding(5, 8200, _weight=ours.dequantize(), device=device)
    ref.norm.load_state_dict(ours.norm.state_dict())
    ids = torch.tensor([4, 0, 4], device=device)
    grad = torch.randn(3, 8200).to(torch.bfloat16).to(device)
    got, expected = ours(ids), ref(ids)
    got.backward(grad)
    expected.backward(grad)
    exact = _truth(ref.weight, ours.norm, ids, grad)
    for name, o, r, t in zip(("output", "dγ", "dβ"), (got, ours.norm.weight.grad, ours.norm.bias.grad),
                             (expected, ref.norm.weight.grad, ref.norm.bias.grad), exact):
        check_against_truth(o, r, t, torch.bfloat16, name)


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_out_of_range_ids_raise_without_a_sync(device, fmt, stable):
    module = make_module(fmt, 6, 9, torch.float32, 0, stable=stable).to(device)
    ids = torch.tensor([[1, 6], [-1, 2]], device=device)
    if not use_triton(ids):
        with pytest.raises(IndexError):
            module(ids)
        return
    good = module(torch.tensor([[1, 0], [0, 2]], device=device))
    out = module(ids)  # deferred: the bad ids read zero rows (their LayerNorm, for the StableEmbedding)
    assert torch.equal(out[0, 0], good[0, 0]) and torch.equal(out[1, 1], good[1, 1])
    if not stable:
        assert not out[0, 1].any() and not out[1, 0].any()
    with pytest.raises(IndexError, match="outside"):
        triton_embed.check_errors()
    triton_embed.set_index_check("sync")
    with pytest.raises(IndexError, match="this call"):
        module(ids)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_inputs_and_unquantized_tables(device, fmt):
    module = make_module(fmt, 6, 9, torch.float32, 0).to(device)
    with pytest.raises(RuntimeError, match="Long, Int"):
        module(torch.tensor([1.0], device=device))
    with pytest.raises(TypeError):
        module([1, 2])
    # A table not quantized yet is quantized by its first forward (bitsandbytes quantizes on any move).
    fresh = triton_embed.Embedding8bit(6, 9) if fmt == "int8" else triton_embed.Embedding4bit(6, 9, quant_type=fmt)
    table = fresh.weight.detach().clone()
    out = fresh(torch.tensor([1, 4]))
    assert fresh.is_quantized and torch.equal(out, fresh.dequantize()[[1, 4]])
    assert (out - table[[1, 4]]).abs().max() <= table.abs().max() / (127 if fmt == "int8" else 2)
    with pytest.raises(RuntimeError, match="not quantized"):  # not inside a compiled graph
        torch.compile(type(fresh)(6, 9), backend="eager", fullgraph=True)(torch.tensor([1]))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        triton_embed.Embedding8bit(3, 4, dtype=torch.float64)


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_and_scalar_ids(device, fmt, stable):
    module = make_module(fmt, 6, 7, torch.bfloat16, 0, stable=stable).to(device)
    empty = module(torch.empty(0, 3, dtype=torch.long, device=device))
    scalar = module(torch.tensor(4, device=device))
    assert empty.shape == (0, 3, 7) and scalar.shape == (7,) and scalar.dtype == torch.bfloat16
    if stable:
        scalar.sum().backward()
        assert module.norm.weight.grad.shape == (7,)


def test_reference_backend_reads_the_same_rows(device):
    """The reference path (rows gathered, then dequantized, in PyTorch) gives the kernels' bits."""
    for fmt in FORMATS:
        module = make_module(fmt, 11, 37, torch.float16, 3).to(device)
        ids = torch.tensor([[10, 3, 3], [0, 7, 1]], device=device)
        with triton_embed.use_backend("reference"):
            expected = module(ids)
        assert torch.equal(module(ids), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_opcheck(device, fmt):
    module = make_module(fmt, 9, 12, torch.bfloat16, 0, stable=True).to(device)
    codes, scales, quant_map, blocksize = module._state()
    ids = torch.randint(0, 9, (2, 5), device=device)
    torch.library.opcheck(torch.ops.triton_embed.quantized_embedding.default,
                          (codes, scales, quant_map, ids, 9, 12, blocksize, torch.bfloat16))
    nw = module.norm.weight.detach().clone().requires_grad_()
    nb = module.norm.bias.detach().clone().requires_grad_()
    args = (codes, scales, quant_map, ids, nw, nb, 9, 12, blocksize, 1e-5, torch.float32, torch.bfloat16)
    torch.library.opcheck(torch.ops.triton_embed.quantized_stable_embedding.default, args)
    out, mean, rstd = torch.ops.triton_embed.quantized_stable_embedding(*args)
    torch.library.opcheck(torch.ops.triton_embed.quantized_stable_embedding_backward.default,
                          (torch.randn_like(out), codes, scales, quant_map, ids, nw.detach(), nb.detach(), mean, rstd,
                           9, 12, blocksize, 1e-5, torch.float32))


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_compiles_without_graph_breaks(device, fmt):
    module = make_module(fmt, 20, 16, torch.float32, 0, stable=True).to(device)
    ids = torch.randint(0, 20, (2, 3), device=device)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out = compiled(ids)
    assert torch.equal(out, module(ids))
    out.sum().backward()
    assert module.norm.weight.grad is not None
