"""Forward-mode AD through LayerNorm and StableEmbedding: ``torch.func.jvp`` and dual tensors give the
tangent PyTorch gives for the same function (they used to give none at all)."""
from __future__ import annotations


import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from triton_embed import functional, reference

from _support.strategies import default_dtype


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [5, 100])  # one-block and streamed rows under the interpreter
def test_layer_norm_jvp_matches_torch(device, dtype, dim):
    gen = torch.Generator().manual_seed(dim)
    x, dx = (torch.randn(2, 3, dim, generator=gen, dtype=dtype).to(device) for _ in range(2))
    w, b, dw, db = (torch.randn(dim, generator=gen, dtype=dtype).to(device) for _ in range(4))
    ours = torch.func.jvp(lambda *a: functional.layer_norm(a[0], dim, a[1], a[2]), (x, w, b), (dx, dw, db))
    theirs = torch.func.jvp(lambda *a: F.layer_norm(a[0], (dim,), a[1], a[2]), (x, w, b), (dx, dw, db))
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, **_tolerance(dtype))
    # Only the input carries a tangent, and no affine parameters.
    ours = torch.func.jvp(lambda a: functional.layer_norm(a, dim), (x,), (dx,))[1]
    torch.testing.assert_close(ours, torch.func.jvp(lambda a: F.layer_norm(a, (dim,)), (x,), (dx,))[1],
                               **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stable_embedding_jvp_matches_the_reference(device, dtype):
    gen = torch.Generator().manual_seed(1)
    weight, dweight = (torch.randn(9, 12, generator=gen, dtype=dtype).to(device) for _ in range(2))
    gamma, beta, dgamma, dbeta = (torch.randn(12, generator=gen, dtype=dtype).to(device) for _ in range(4))
    ids = torch.tensor([[1, 8, 8], [0, 4, 1]], device=device)
    with default_dtype(dtype):
        ours = torch.func.jvp(lambda *a: functional.stable_embedding(ids, *a, max_norm=None),
                              (weight, gamma, beta), (dweight, dgamma, dbeta))
        theirs = torch.func.jvp(lambda *a: reference.stable_embedding(ids, *a),
                                (weight, gamma, beta), (dweight, dgamma, dbeta))
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, **_tolerance(dtype))


def test_stable_embedding_dual_tensors_bf16_table(device):
    """A bf16 table: the tangent is cast as the rows are (to float32, LayerNorm, back to bf16)."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(5, 8, generator=gen).to(device, torch.bfloat16)
    tangent = torch.randn(5, 8, generator=gen).to(device, torch.bfloat16)
    gamma, beta = torch.randn(8, generator=gen).to(device), torch.randn(8, generator=gen).to(device)
    ids = torch.tensor([3, 0, 3], device=device)
    with fwAD.dual_level():
        out = functional.stable_embedding(ids, fwAD.make_dual(weight, tangent), gamma, beta)
        primal, out_tangent = fwAD.unpack_dual(out)
    with fwAD.dual_level():
        ref = reference.stable_embedding(ids, fwAD.make_dual(weight, tangent), gamma, beta)
        ref_primal, ref_tangent = fwAD.unpack_dual(ref)
    assert out_tangent is not None and out_tangent.dtype == torch.bfloat16
    torch.testing.assert_close(primal, ref_primal, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out_tangent, ref_tangent, rtol=2e-2, atol=5e-2)


def test_backward_still_works_through_the_forward_ad_twins(device):
    """Inside a dual level the ops run as autograd.Functions: reverse mode must still match."""
    weight = torch.randn(6, 4, device=device, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(4, device=device, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([1, 1, 5], device=device)
    with fwAD.dual_level(), default_dtype(torch.float64):
        out = functional.stable_embedding(ids, weight, gamma, None)
        out.pow(2).sum().backward()
        ref_weight = weight.detach().clone().requires_grad_()
        ref_gamma = gamma.detach().clone().requires_grad_()
        reference.stable_embedding(ids, ref_weight, ref_gamma, None).pow(2).sum().backward()
    torch.testing.assert_close(weight.grad, ref_weight.grad)
    torch.testing.assert_close(gamma.grad, ref_gamma.grad)
