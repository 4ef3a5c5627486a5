"""Determinism by construction: forcing each config of a kernel's tuning list gives bitwise-equal results,
so two processes (or a tuned and an untuned one) never disagree. On the CPU the interpreter runs each
config's tiles (column blocks, rows per program); on a GPU the warps and layouts change too."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import triton_embed
from triton_embed import functional, tuning
from triton_embed.kernels.reductions import _tree_sum, _tree_sum_columns
from triton_embed.runtime.dispatch import use_triton

V, D, N = 40, 520, 80  # D > 512: configs walk different numbers of column blocks; N spans 3 chunks


@pytest.fixture(autouse=True)
def _kernels_only(device):
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("the configs are the kernels'")


def _inputs(device, dtype):
    gen = torch.Generator().manual_seed(1)
    # Magnitudes over many decades: any change of summation order shows in the bits.
    scale = torch.logspace(-4, 4, D).to(torch.float32)
    weight = (torch.randn(V, D, generator=gen) * scale).to(dtype).to(device)
    ids = torch.randint(0, V, (N,), generator=gen)
    ids[::3] = 7  # a hot id spread over many chunks of sorted positions
    ids[1::7] = 2  # the padding row
    grad = (torch.randn(N, D, generator=gen) * scale).to(dtype).to(device)
    gamma = torch.randn(D, generator=gen).to(device)
    beta = torch.randn(D, generator=gen).to(device)
    return weight, ids.to(device), grad, gamma, beta


def _embedding(device, dtype):
    weight, ids, grad, _, _ = _inputs(device, dtype)
    w = weight.clone().requires_grad_()
    functional.embedding(ids, w, padding_idx=2, scale_grad_by_freq=True).backward(grad)
    return [w.grad]


def _stable(device, dtype):
    weight, ids, grad, gamma, beta = _inputs(device, dtype)
    leaves = [t.clone().requires_grad_() for t in (weight, gamma, beta)]
    out = functional.stable_embedding(ids, *leaves, padding_idx=2)
    out.backward(grad)
    return [out] + [t.grad for t in leaves]


def _layer_norm(device, dtype):
    weight, _, grad, gamma, beta = _inputs(device, dtype)
    x = weight[:40].clone().requires_grad_()
    g, b = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    y = functional.layer_norm(x, D, g, b)
    y.backward(grad[:40])
    return [y, x.grad, g.grad, b.grad]


def _quantized_tables(device, dtype):
    """StableEmbedding8bit and StableEmbedding4bit holding the same rows quantized; 24 of the ids (the fused
    kernels' configs differ in rows per program: 24 tokens already take one to several programs)."""
    weight, ids, grad, gamma, beta = _inputs(device, dtype)
    tables = []
    for cls in (triton_embed.StableEmbedding8bit, triton_embed.StableEmbedding4bit):
        emb = cls.from_float(torch.nn.Embedding(V, D, _weight=weight.clone()))
        with torch.no_grad():
            emb.norm.weight.copy_(gamma)
            emb.norm.bias.copy_(beta)
        tables.append(emb)
    return tables, ids[:24], grad[:24]


def _quantized_lookup(device, dtype):
    tables, ids, _ = _quantized_tables(device, dtype)
    lookup = (triton_embed.Embedding8bit.forward, triton_embed.Embedding4bit.forward)  # the plain lookups
    return [plain(emb, ids) for plain, emb in zip(lookup, tables)]


def _quantized_stable(device, dtype):
    tables, ids, grad = _quantized_tables(device, dtype)
    results = []
    for emb in tables:
        out = emb(ids)
        out.backward(grad)
        results += [out, emb.norm.weight.grad, emb.norm.bias.grad]
    return results


def _renorm(device, dtype):
    weight, ids, _, _, _ = _inputs(device, dtype)
    table = weight.clone()
    out = functional.embedding(ids, table, max_norm=1.0, norm_type=3.0)
    return [out, table]


RUNS = {
    "embedding_pieces": _embedding,
    "embedding_rows": _embedding,
    "stable_rows": _stable,
    "stable_runs": _stable,
    "stable_forward": _stable,
    "stable_backward": _stable,
    "layer_norm": _layer_norm,
    "layer_norm_backward": _layer_norm,
    "layer_norm_param_grad": _layer_norm,
    "renorm": _renorm,
    "quantized_gather": _quantized_lookup,
    "quantized_stable_forward": _quantized_stable,
    "quantized_stable_backward": _quantized_stable,
}


def test_every_tuned_family_is_covered():
    assert set(tuning.CONFIGS) - {"gather"} == set(RUNS)  # the gather is a copy: any config is exact


@pytest.mark.parametrize("family", sorted(RUNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_config_gives_the_same_bits(device, family, dtype, monkeypatch):
    results = []
    for config in tuning.CONFIGS[family]:
        if triton_embed.interpreter_enabled():
            monkeypatch.setitem(tuning.INTERPRETER_CONFIGS, family, config)
        else:
            tuning.forget_choices()
            monkeypatch.setattr(tuning, "choose", _forcing(family, config, tuning.choose))
        results.append(RUNS[family](device, dtype))
    first = results[0]
    for config, other in zip(tuning.CONFIGS[family][1:], results[1:]):
        for a, b in zip(first, other):
            assert torch.equal(a, b), (family, config, (a.double() - b.double()).abs().max().item())


def _forcing(family, config, choose):
    def forced(kernel, *args, **kwargs):
        return dict(config) if kernel == family else choose(kernel, *args, **kwargs)

    return forced


@triton.jit
def _row_sums_kernel(x_ptr, rows_out_ptr, cols_out_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    mask = (r < R)[:, None] & (c < C)[None, :]
    x = tl.load(x_ptr + r[:, None] * C + c[None, :], mask=mask, other=0)
    tl.store(rows_out_ptr + r, _tree_sum(x), mask=r < R)
    tl.store(cols_out_ptr + c, _tree_sum_columns(x), mask=c < C)


@pytest.mark.parametrize("num_warps", [1, 4, 8])
def test_tree_sums_do_not_depend_on_padding_or_warps(device, num_warps):
    """The folding tree gives the same bits for a wider (zero-padded) tile and any number of warps."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 100, generator=gen) * torch.logspace(-5, 5, 100)).to(device)
    outs = []
    for block_r, block_c in ((8, 128), (16, 256), (8, 512)):
        rows, cols = torch.empty(6, device=device), torch.empty(100, device=device)
        _row_sums_kernel[(1,)](x, rows, cols, 6, 100, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps)
        outs.append((rows, cols))
    for rows, cols in outs[1:]:
        assert torch.equal(rows, outs[0][0]) and torch.equal(cols, outs[0][1])
    torch.testing.assert_close(outs[0][0].double(), x.double().sum(1), rtol=1e-5, atol=1e-3)
