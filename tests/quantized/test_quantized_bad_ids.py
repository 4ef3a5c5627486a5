"""Out-of-range ids in the quantized tables, on every path (the Triton kernels, the reference path on the CPU
and, with a GPU, the reference path forced there), in every index check mode, for every format, plain and
StableEmbedding, int32 and int64 ids: never another row's data.

- kernels: the bad ids read zero rows (for the StableEmbedding, the LayerNorm of a zero row); ``"sync"``
  raises at the call, ``"deferred"`` at ``check_errors()``, ``"off"`` never;
- the reference path on the CPU raises ``IndexError`` at the call in every mode, as ``F.embedding`` (the
  float modules' reference path) does;
- the reference path on a GPU raises while the check is on, and gives zero rows with it off (no host sync).

A 4-bit row is found by arithmetic on the flattened table: -1 would land on the last row's bytes and
2**62 · D can wrap to row 0, so D = 4 makes both land exactly on another row.
"""
from __future__ import annotations

import pytest
import torch
from _support.quantized import FORMATS, quantized_class

import triton_embed
from triton_embed.runtime.dispatch import use_triton

V, D = 7, 4
MODES = ["deferred", "sync", "off"]
BAD = {torch.int64: [-1, V, 2**40, -(2**40), 2**62, -(2**63)], torch.int32: [-1, V, 2**31 - 1, -(2**31)]}


def _paths() -> list[tuple[str, str]]:
    paths = [("reference", "cpu"), ("auto", "cuda" if torch.cuda.is_available() else "cpu")]
    if torch.cuda.is_available():
        paths.append(("reference", "cuda"))
    return paths


def _module(fmt: str, stable: bool, device: str):
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(V, D, generator=gen) + 2.0  # no zero rows: a zero row must come from the masking
    source = torch.nn.Embedding(V, D, _weight=table)
    cls, format_options = quantized_class(fmt, stable)
    module = cls.from_float(source, **format_options)
    if stable:
        with torch.no_grad():
            module.norm.weight.copy_(torch.randn(D, generator=gen))
            module.norm.bias.copy_(torch.randn(D, generator=gen))
    return module.to(device)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend, device", _paths())
def test_bad_ids_never_read_another_row(backend, device, mode, fmt, stable, index_dtype):
    module = _module(fmt, stable, device)
    bad = BAD[index_dtype]
    good = torch.arange(V, dtype=index_dtype)
    ids = torch.stack([torch.tensor(bad + [1, 0], dtype=index_dtype), torch.tensor([2] * len(bad) + [V - 1, 3],
                                                                                    dtype=index_dtype)]).to(device)
    triton_embed.set_backend(backend)
    triton_embed.set_index_check(mode)
    rows = module(good.to(device))  # every row, as the same path gives it
    kernels = use_triton(ids)
    if not kernels and (device == "cpu" or mode != "off"):  # the reference path raises at the call
        with pytest.raises(IndexError, match="out of range"):
            module(ids)
        triton_embed.check_errors()  # and leaves nothing behind
        return
    if kernels and mode == "sync":
        with pytest.raises(IndexError, match="this call"):
            module(ids)
        return
    out = module(ids)
    if kernels and mode == "deferred":
        with pytest.raises(IndexError, match="outside"):
            triton_embed.check_errors()
    triton_embed.check_errors()
    zero_row = module.norm.bias.detach().to(module.dtype) if stable else torch.zeros(D, dtype=module.dtype)
    for position in range(len(bad)):
        assert torch.equal(out[0, position], zero_row.to(device)), (bad[position], out[0, position], rows)
    assert torch.equal(out[1, :len(bad)], rows[2].expand(len(bad), D))
    assert torch.equal(out[0, -2:], rows[[1, 0]]) and torch.equal(out[1, -2:], rows[[V - 1, 3]])
    if stable:  # the backward re-reads the rows: a bad id's row is a zero row there too
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        out.backward(grad)
        if kernels and mode == "deferred":
            triton_embed.check_errors()  # the forward's report was taken: the backward reports nothing new
        table = torch.cat([module.dequantize().detach(), torch.zeros(1, D, dtype=module.dtype)]).to(device)
        truth = triton_embed.reference.StableEmbedding(V + 1, D, _weight=table, device=device)
        truth.norm.load_state_dict(module.norm.state_dict())
        zero_ids = torch.where((ids >= 0) & (ids < V), ids, V).long()
        truth(zero_ids).backward(grad)
        for got, expected in ((module.norm.weight.grad, truth.norm.weight.grad),
                              (module.norm.bias.grad, truth.norm.bias.grad)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

