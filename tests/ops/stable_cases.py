"""What the StableEmbedding tests share: our module and the reference module with the same random parameters,
a forward + backward, the float64 truth, and the comparison by the tolerance rule."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from _support.oracle import check_against_truth
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import triton_embed
from triton_embed import reference

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


