"""triton_embed.StableEmbedding (fused lookup + LayerNorm) against reference.StableEmbedding, bitsandbytes'
module written out in PyTorch, and a float64 truth.

Without a GPU the kernels run under Triton's interpreter (see conftest); shapes stay small.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from _support.oracle import check_against_truth
from _support.strategies import default_dtype, make_ids

import triton_embed
from triton_embed import reference
from triton_embed.functional import stable_embedding
from triton_embed.ops import stable_embedding as stable_ops
from triton_embed.ops import stable_launch
from triton_embed.runtime.dispatch import use_triton

HEALTH = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])

WEIGHT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DIMS = st.one_of(st.sampled_from([1, 2, 63, 64, 65, 96]), st.integers(1, 96))
INDEX_SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=3).filter(lambda s: torch.Size(s).numel() <= 64)
DISTRIBUTIONS = st.sampled_from(["uniform", "skewed", "hot"])


def make_modules(num_embeddings, dim, dtype, device, seed, **options):
    """Our module and the reference module with the same (random, non-trivial) parameters."""
    ours = triton_embed.StableEmbedding(num_embeddings, dim, device=device, dtype=dtype, **options)
    options.pop("deterministic", None)
    ref = reference.StableEmbedding(num_embeddings, dim, device=device, dtype=dtype, **options)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(num_embeddings, dim, generator=gen) * 2 + torch.randn(num_embeddings, 1, generator=gen))
        ours.norm.weight.copy_(torch.randn(dim, generator=gen))
        ours.norm.bias.copy_(torch.randn(dim, generator=gen))
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def forward_backward(module, ids, grad):
    """(output, weight grad as dense, dγ, dβ)."""
    for p in module.parameters():
        p.grad = None
    out = module(ids)
    out.backward(grad)
    weight_grad = module.weight.grad
    if weight_grad is not None and weight_grad.is_sparse:
        weight_grad = weight_grad.coalesce().to_dense()
    return out, weight_grad, module.norm.weight.grad, module.norm.bias.grad


def truth(weight, norm_weight, norm_bias, ids, grad, padding_idx, scale_grad_by_freq, eps=1e-5):
    """The same function in float64 throughout, without bitsandbytes' intermediate roundings."""
    leaves = [t.detach().double().requires_grad_() for t in (weight, norm_weight, norm_bias)]
    emb = F.embedding(ids, leaves[0], padding_idx, None, 2.0, scale_grad_by_freq)
    out = F.layer_norm(emb, (weight.shape[1],), leaves[1], leaves[2], eps)
    return (out, *torch.autograd.grad(out, leaves, grad.double()))


def effective_dtype(weight_dtype, compute_dtype):
    if weight_dtype in (torch.bfloat16, torch.float16):
        return weight_dtype
    if torch.float32 in (weight_dtype, compute_dtype):
        return torch.float32
    return torch.float64


def compare_modules(ours, ref, ids, grad, padding_idx=None, scale_grad_by_freq=False):
    got = forward_backward(ours, ids, grad)
    expected = forward_backward(ref, ids, grad)
    exact = truth(ref.weight, ref.norm.weight, ref.norm.bias, ids, grad, padding_idx, scale_grad_by_freq)
    dtype = effective_dtype(ours.weight.dtype, torch.get_default_dtype())
    for name, o, r, t in zip(("output", "weight grad", "norm weight grad", "norm bias grad"), got, expected, exact):
        check_against_truth(o, r, t, dtype, name)
    # Padding rows get exactly zero gradient.
    if padding_idx is not None:
        assert torch.count_nonzero(got[1][padding_idx]) == 0
    return got


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


# ----------------------------------------------------------------------------------------------------------
# torch.compile and the custom ops


def test_compiled_training_step_has_no_graph_break(device):
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = triton_embed.StableEmbedding(30, 16, padding_idx=0, device=device)
            self.head = torch.nn.Linear(16, 3, device=device)

        def forward(self, ids):
            return self.head(self.embed(ids)).logsumexp(-1).mean()

    model = Model()
    eager = Model()
    eager.load_state_dict(model.state_dict())
    ids = torch.randint(0, 30, (4, 6), device=device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    before = triton_embed.launch_counts.copy()
    loss = compiled(ids)
    loss.backward()
    launched = triton_embed.launch_counts - before
    # A float32 table: the backward is the per-id one (kernels/stable_embedding_runs.py).
    assert launched["stable_embedding_fwd_kernel"] == 1 and launched["stable_embedding_runs_kernel"] == 1
    eager_loss = eager(ids)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    assert compiled(ids) < loss


@pytest.mark.parametrize(
    "options",
    [(0, False, False, False), (-1, True, False, True), (2, False, True, False)],
)
def test_opcheck(device, options):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(9, 12, generator=gen).to(device).requires_grad_()
    nw = torch.randn(12, generator=gen).to(device).requires_grad_()
    nb = torch.randn(12, generator=gen).to(device).requires_grad_()
    ids = torch.randint(0, 9, (2, 5), generator=gen).to(device)
    padding_idx, scale_grad_by_freq, sparse, deterministic = options
    args = (weight, ids, nw, nb, 1e-5, torch.float32, padding_idx, scale_grad_by_freq, sparse, deterministic)
    if not sparse:  # opcheck's autograd checks densify; the sparse path is covered above
        torch.library.opcheck(torch.ops.triton_embed.stable_embedding.default, args)
    torch.library.opcheck(torch.ops.triton_embed.stable_embedding.default, (weight.detach(), *args[1:]))
    out, mean, rstd = torch.ops.triton_embed.stable_embedding(*args)
    grad = torch.randn_like(out)
    for mode in (stable_ops.WEIGHT_GRAD_DENSE, stable_ops.WEIGHT_GRAD_ROWS, stable_ops.WEIGHT_GRAD_NONE):
        torch.library.opcheck(
            torch.ops.triton_embed.stable_embedding_backward.default,
            (grad, weight.detach(), ids, nw.detach(), nb.detach(), mean.detach(), rstd.detach(), 1e-5,
             torch.float32, mode, padding_idx, scale_grad_by_freq, deterministic),
        )


# ----------------------------------------------------------------------------------------------------------
# bitsandbytes


def _bitsandbytes():
    try:
        import bitsandbytes
    except Exception as exc:  # not installed, or unusable on this machine
        pytest.skip(f"bitsandbytes is not importable: {exc!r}")
    return bitsandbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.peer
def test_bitsandbytes_differential(device, dtype):
    bnb = _bitsandbytes()
    gen = torch.Generator().manual_seed(9)
    theirs = bnb.nn.StableEmbedding(25, 32, padding_idx=3).to(device)
    ours = triton_embed.StableEmbedding(25, 32, padding_idx=3, device=device, dtype=dtype)
    with torch.no_grad():
        theirs.weight.copy_(torch.randn(25, 32, generator=gen))
        theirs.norm.weight.copy_(torch.randn(32, generator=gen))
        theirs.norm.bias.copy_(torch.randn(32, generator=gen))
    ours.load_state_dict(theirs.state_dict())
    if dtype != torch.float32:
        # bitsandbytes 0.50 cannot build a bf16 table (the device/dtype defect): cast only its table.
        theirs.weight = torch.nn.Parameter(theirs.weight.detach().to(dtype))
    ids = make_ids(gen, (4, 9), 25, "skewed", padding_idx=3).to(device)
    grad = torch.randn(4, 9, 32, generator=gen).to(dtype).to(device)
    got = forward_backward(ours, ids, grad)
    expected = forward_backward(theirs, ids, grad)
    exact = truth(theirs.weight, theirs.norm.weight, theirs.norm.bias, ids, grad, 3, False)
    for name, o, r, t in zip(("output", "weight grad", "norm weight grad", "norm bias grad"), got, expected, exact):
        check_against_truth(o, r, t, effective_dtype(dtype, torch.float32), name)
    # And the state loads back into bitsandbytes' module.
    again = bnb.nn.StableEmbedding(25, 32, padding_idx=3).to(device)
    again.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    assert torch.equal(again.weight, ours.weight.detach().float())


@pytest.mark.peer
def test_bitsandbytes_optimizer_override_registered(device):
    """The table gets 32-bit state from an 8-bit optimizer (a Linear as big gets 8-bit state), and the
    registration does not keep the module alive."""
    import gc
    import weakref

    bnb = _bitsandbytes()
    emb = triton_embed.StableEmbedding(1000, 16, device=device)
    manager = bnb.optim.GlobalOptimManager.get_instance()
    assert any(m.weight is emb.weight and name == "weight" and cfg == {"optim_bits": 32}
               for m, name, cfg in manager.module_weight_config_triple)
    head = torch.nn.Linear(16, 1000, device=device)
    optimizer = bnb.optim.Adam8bit([*emb.parameters(), *head.parameters()], lr=1e-3)
    head(emb(torch.tensor([1, 2, 3], device=device))).sum().backward()
    optimizer.step()
    assert optimizer.state[emb.weight]["state1"].dtype == torch.float32
    assert optimizer.state[head.weight]["state1"].dtype == torch.uint8
    alive = weakref.ref(emb)
    del emb, optimizer
    gc.collect()
    assert alive() is None
    for module, name, _ in manager.module_weight_config_triple:  # the dead ones left: the others still answer
        getattr(module, name)


def test_norm_hooks_fire_and_other_norms_work(device):
    """A hook on ``norm`` (activation capture, calibration) makes the module call its norm, as
    bitsandbytes does; the result is the fused one. Another norm module (RMSNorm, Identity) is called too."""
    ours, _ = make_modules(12, 8, torch.float32, device, 0, padding_idx=1)
    ids = torch.tensor([[3, 1, 3], [11, 0, 5]], device=device)
    fused = ours(ids)
    seen = []
    handle = ours.norm.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        hooked = ours(ids)
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 3, 8])]
    torch.testing.assert_close(hooked, fused, rtol=1e-6, atol=1e-6)
    grads = []  # a backward hook fires too
    handle = ours.norm.register_full_backward_hook(lambda module, grad_in, grad_out: grads.append(grad_out[0]))
    try:
        ours(ids).sum().backward()
    finally:
        handle.remove()
    assert len(grads) == 1 and grads[0].shape == (2, 3, 8)
    ours.weight.grad = None
    for other in (torch.nn.RMSNorm(8, device=device), torch.nn.Identity()):
        ours.norm = other
        out = ours(ids)
        torch.testing.assert_close(out, other(ours.weight[ids]))
        out.sum().backward()
        assert ours.weight.grad is not None
        ours.weight.grad = None
