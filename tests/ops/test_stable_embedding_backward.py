"""StableEmbedding's backward: bitwise repeatable, the per-id and per-token forms agree, gradcheck in float64, only
the ids and the statistics kept for it, its launches.
"""
from __future__ import annotations

import pytest
import torch
from _support.oracle import check_against_truth
from _support.strategies import default_dtype, make_ids
from stable_cases import compare_modules, effective_dtype, forward_backward, make_modules, truth

import triton_embed
from triton_embed.functional import stable_embedding
from triton_embed.ops import stable_launch
from triton_embed.runtime.dispatch import use_triton

# ----------------------------------------------------------------------------------------------------------
# Determinism, gradcheck, memory, launches


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [40, 96])
def test_deterministic_backward_repeats_bitwise(device, dtype, dim):
    gen = torch.Generator().manual_seed(dim)
    ours, ref = make_modules(17, dim, dtype, device, 3, deterministic=True, padding_idx=2, scale_grad_by_freq=True)
    ids = make_ids(gen, (64,), 17, "skewed", padding_idx=2).to(device)
    ids[:20] = 5  # one hot id across chunk boundaries
    grad = torch.randn(64, dim, generator=gen).to(dtype).to(device)
    first = forward_backward(ours, ids, grad)
    for _ in range(2):
        again = forward_backward(ours, ids, grad)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    compare_modules(ours, ref, ids, grad, 2, True)


@pytest.mark.parametrize("dim", [24, 4100])
def test_per_id_and_per_token_backwards_agree(device, dim, monkeypatch):
    """A float32 table takes the per-id backward (rows up to 4096 wide; 4100 takes the per-token one): both
    against the float64 truth, and against each other, with a hot id across chunks, padding and
    scale_grad_by_freq."""
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("the two backwards are the kernels'")
    gen = torch.Generator().manual_seed(dim)
    ids = make_ids(gen, (48,), 11, "skewed", padding_idx=3).to(device)
    ids[:36] = 6  # a run over two chunks of 32 sorted positions
    grad = torch.randn(48, dim, generator=gen).to(device)
    results = []
    for per_id in (True, False):
        if not per_id:
            monkeypatch.setattr(stable_launch, "runs_apply", lambda *args: False)
        ours, ref = make_modules(11, dim, torch.float32, device, 5, padding_idx=3, scale_grad_by_freq=True)
        before = triton_embed.launch_counts.copy()
        results.append(compare_modules(ours, ref, ids, grad, 3, True))
        used_runs = (triton_embed.launch_counts - before)["stable_embedding_runs_kernel"] == 1
        assert used_runs == (per_id and dim <= 4096)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_deterministic_algorithms_flag_changes_no_bit(device):
    ours, _ = make_modules(9, 16, torch.float32, device, 0)
    ids = torch.tensor([1, 2, 1, 8], device=device)
    grads = []
    for flag in (False, True):
        for p in ours.parameters():
            p.grad = None
        torch.use_deterministic_algorithms(flag)
        try:
            ours(ids).sum().backward()
        finally:
            torch.use_deterministic_algorithms(False)
        grads.append([p.grad.clone() for p in ours.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("deterministic", [False, True])
def test_gradcheck_float64(device, deterministic):
    gen = torch.Generator().manual_seed(4)
    with default_dtype(torch.float64):
        weight = torch.randn(6, 5, generator=gen).to(device).requires_grad_()
        nw = torch.randn(5, generator=gen).to(device).requires_grad_()
        nb = torch.randn(5, generator=gen).to(device).requires_grad_()
        # (padding_idx and scale_grad_by_freq change only the gradient, so gradcheck cannot check them.)
        ids = torch.tensor([[0, 3, 3], [5, 1, 3]], device=device)

        def fn(w, g, b):
            return stable_embedding(ids, w, g, b, deterministic=deterministic)

        assert torch.autograd.gradcheck(fn, (weight, nw, nb))
        # A row wider than the interpreter's column block: the streamed path, checked in fast mode.
        weight = torch.randn(4, 70, generator=gen).to(device).requires_grad_()
        nw = torch.randn(70, generator=gen).to(device).requires_grad_()
        nb = torch.randn(70, generator=gen).to(device).requires_grad_()
        ids = torch.tensor([0, 3, 3, 2], device=device)
        assert torch.autograd.gradcheck(
            lambda w, g, b: stable_embedding(ids, w, g, b, deterministic=deterministic), (weight, nw, nb),
            fast_mode=True,
        )


def _saved_tensors(module, ids):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = module(ids)
    return out, saved


def test_saves_only_indices_and_statistics(device):
    num_tokens, dim = 48, 64
    ours, ref = make_modules(30, dim, torch.bfloat16, device, 0)
    ids = torch.randint(0, 30, (6, 8), device=device)
    params = {p.data_ptr() for p in ours.parameters()}
    out, saved = _saved_tensors(ours, ids)
    activations = [t for t in saved if t.data_ptr() not in params and t.dtype.is_floating_point]
    indices = [t for t in saved if not t.dtype.is_floating_point]
    assert sum(t.numel() for t in activations) <= 2 * num_tokens  # float32 mean and rstd per token
    assert all(t.dtype == torch.float32 for t in activations)
    assert sum(t.numel() for t in indices) == num_tokens
    # bitsandbytes' module keeps O(N x D) for its LayerNorm (and casts) instead.
    _, ref_saved = _saved_tensors(ref, ids)
    ref_params = {p.data_ptr() for p in ref.parameters()}
    ref_bytes = sum(t.numel() * t.element_size() for t in ref_saved if t.data_ptr() not in ref_params)
    our_bytes = sum(t.numel() * t.element_size() for t in activations + indices)
    assert ref_bytes >= num_tokens * dim * 4
    assert our_bytes * 10 <= ref_bytes
    out.sum().backward()  # the saved state suffices for backward


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launch_counts(device, deterministic, dtype):
    ours, _ = make_modules(20, 24, dtype, device, 0, deterministic=deterministic)
    ids = torch.randint(0, 20, (5, 7), device=device)
    before = triton_embed.launch_counts.copy()
    out = ours(ids)
    forward = triton_embed.launch_counts - before
    assert forward == {"stable_embedding_fwd_kernel": 1}  # the Triton path ran: one fused launch
    middle = triton_embed.launch_counts.copy()
    out.backward(torch.randn_like(out))
    backward = triton_embed.launch_counts - middle
    if dtype == torch.float32:  # the table in the default dtype: one LayerNorm backward per distinct id
        assert backward == {"embedding_bwd_pieces_kernel": 1, "stable_embedding_runs_kernel": 1,
                            "layer_norm_param_grad_kernel": 1}
    else:  # the d(emb) rows of each token, rounded to bf16, then summed
        assert backward == {"stable_embedding_bwd_kernel": 1, "embedding_bwd_pieces_kernel": 1,
                            "embedding_bwd_rows_kernel": 1}


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_launch_counts_scale_grad_by_freq(device, deterministic, dtype):
    # The ids are counted inside the first backward launch (no bincount, no host sync); rounding the
    # accumulator to bf16 and dividing by the counts happen in the second.
    ours, ref = make_modules(20, 24, dtype, device, 0, deterministic=deterministic, scale_grad_by_freq=True,
                             padding_idx=4)
    ids = torch.tensor([[4, 1, 1], [7, 1, 4]], device=device)
    grad = torch.randn(2, 3, 24).to(dtype).to(device)
    before = triton_embed.launch_counts.copy()
    got = forward_backward(ours, ids, grad)
    launched = triton_embed.launch_counts - before
    assert launched["stable_embedding_fwd_kernel"] == 1
    assert sum(launched.values()) - 1 <= 3
    expected = forward_backward(ref, ids, grad)
    exact = truth(ref.weight, ref.norm.weight, ref.norm.bias, ids, grad, 4, True)
    for name, o, r, t in zip(("output", "weight grad", "norm weight grad", "norm bias grad"), got, expected, exact):
        check_against_truth(o, r, t, effective_dtype(dtype, torch.float32), name)


def test_launch_counts_max_norm_and_frozen_table(device):
    ours, _ = make_modules(20, 24, torch.float32, device, 0, max_norm=1.0)
    ours.weight.requires_grad_(False)
    ids = torch.randint(0, 20, (9,), device=device)
    before = triton_embed.launch_counts.copy()
    out = ours(ids)
    assert triton_embed.launch_counts - before == {
        "claim_rows_kernel": 1, "renorm_rows_kernel": 1, "stable_embedding_fwd_kernel": 1,
    }
    middle = triton_embed.launch_counts.copy()
    out.sum().backward()
    assert triton_embed.launch_counts - middle == {"stable_embedding_bwd_kernel": 1, "layer_norm_param_grad_kernel": 1}
    assert ours.weight.grad is None and ours.norm.weight.grad is not None


def test_reference_backend_launches_nothing(device):
    ours, ref = make_modules(10, 8, torch.float32, device, 0)
    ids = torch.tensor([[1, 2], [3, 1]], device=device)
    with triton_embed.use_backend("reference"):
        before = triton_embed.launch_counts.copy()
        got = forward_backward(ours, ids, torch.ones(2, 2, 8, device=device))
        assert triton_embed.launch_counts == before
    expected = forward_backward(ref, ids, torch.ones(2, 2, 8, device=device))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
