"""Autograd beyond the first derivative, torch.func, custom-op checks, torch.compile, and proof that the
Triton kernels (not the reference path) computed the results."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import triton_embed
from triton_embed import functional, reference
from triton_embed.runtime.dispatch import interpreter_enabled


def double(device, *shape):
    return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)


@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("scale_grad_by_freq", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_gradcheck_and_gradgradcheck_in_float64(device, padding_idx, scale_grad_by_freq, deterministic):
    ids = torch.tensor([[0, 2, 2], [5, 0, 2]], device=device)

    def fn(weight):
        return functional.embedding(ids, weight, padding_idx, scale_grad_by_freq=scale_grad_by_freq,
                                    deterministic=deterministic)

    weight = double(device, 6, 3)
    if padding_idx is None and not scale_grad_by_freq:
        # Padding and frequency scaling change the gradient by definition, not by calculus (as in PyTorch);
        # the backward is still a linear map of the output gradient, which gradgradcheck verifies.
        assert torch.autograd.gradcheck(fn, (weight,))
    assert torch.autograd.gradgradcheck(fn, (weight,))


def test_double_backward_matches_pytorch(device):
    ids = torch.tensor([1, 3, 3, 0], device=device)
    weight = double(device, 5, 4)
    ref_weight = weight.detach().clone().requires_grad_()
    grad_out = torch.randn(4, 4, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for fn, w in ((functional.embedding, weight), (F.embedding, ref_weight)):
        out = fn(ids, w, padding_idx=0)
        (g,) = torch.autograd.grad(out, w, grad_out, create_graph=True)
        (gg,) = torch.autograd.grad((g**2).sum(), grad_out)
        results.append(gg)
    torch.testing.assert_close(results[0], results[1])


def test_forward_mode_ad_with_torch_func_jvp(device):
    ids = torch.tensor([[4, 1], [1, 1]], device=device)
    weight = torch.randn(6, 3, device=device)
    tangent = torch.randn(6, 3, device=device)
    out, jvp_out = torch.func.jvp(lambda w: functional.embedding(ids, w), (weight,), (tangent,))
    ref_out, ref_jvp = torch.func.jvp(lambda w: F.embedding(ids, w), (weight,), (tangent,))
    assert torch.equal(out, ref_out) and torch.equal(jvp_out, ref_jvp)


def test_forward_mode_ad_with_dual_tensors(device):
    import torch.autograd.forward_ad as fwAD

    ids = torch.tensor([2, 0, 2], device=device)
    weight = torch.randn(3, 5, device=device)
    tangent = torch.randn(3, 5, device=device)
    with fwAD.dual_level():
        out = functional.embedding(ids, fwAD.make_dual(weight, tangent), padding_idx=1)
        primal, out_tangent = fwAD.unpack_dual(out)
    assert torch.equal(primal, weight[ids]) and torch.equal(out_tangent, tangent[ids])


def test_opcheck_on_every_custom_op(device):
    ids = torch.tensor([[0, 3], [3, 1]], device=device)
    weight = torch.randn(5, 4, device=device, requires_grad=True)
    grad = torch.randn(2, 2, 4, device=device)
    for args in [(weight, ids, -1, False, False, False), (weight, ids, 3, True, False, True)]:
        torch.library.opcheck(torch.ops.triton_embed.embedding.default, args)
    for args in [(grad, ids, 5, -1, False, False), (grad, ids, 5, 1, True, True)]:
        torch.library.opcheck(torch.ops.triton_embed.embedding_dense_backward.default, args)
    table = torch.randn(5, 4, device=device)
    torch.library.opcheck(torch.ops.triton_embed.embedding_renorm_.default, (table, ids, 0.5, 2.0))


class TinyModel(torch.nn.Module):
    def __init__(self, device, **options):
        super().__init__()
        self.embed = triton_embed.Embedding(16, 8, device=device, **options)
        self.head = torch.nn.Linear(8, 3, device=device)

    def forward(self, ids):
        return self.head(self.embed(ids)).sum(-1)


@pytest.mark.parametrize("dynamic", [None, True])
@pytest.mark.parametrize("options", [{}, {"padding_idx": 0, "max_norm": 1.0, "scale_grad_by_freq": True}])
def test_compiled_model_has_no_graph_break_and_matches_eager(device, options, dynamic):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = TinyModel(device, **options)
    compiled_model = TinyModel(device, **options)
    compiled_model.load_state_dict(model.state_dict())
    # dynamic=True: the float options (max_norm, norm_type) may be traced as symbolic floats.
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    ids = torch.randint(0, 16, (4, 6), device=device)
    expected = model(ids)
    out = compiled(ids)
    torch.testing.assert_close(out, expected)
    expected.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(compiled_model.embed.weight.grad, model.embed.weight.grad)
    torch.testing.assert_close(compiled_model.embed.weight, model.embed.weight)


def test_compiled_with_inductor_on_the_reference_path():
    """On the CPU: inductor compiles the model, the ops stay opaque custom ops."""
    torch._dynamo.reset()
    with triton_embed.use_backend("reference"):
        model = TinyModel(torch.device("cpu"))
        compiled = torch.compile(model, fullgraph=True)
        ids = torch.randint(0, 16, (2, 5))
        out = compiled(ids)
        torch.testing.assert_close(out, model(ids))
        out.sum().backward()
        assert model.embed.weight.grad is not None


def test_the_triton_kernels_computed_the_results(device, monkeypatch):
    """With every reference op made to fail, forward, renorm and the backward still run, and each
    kernel's launch count grows: the results cannot be the reference path in disguise."""
    if device.type == "cpu" and not interpreter_enabled():
        pytest.skip("the Triton kernels need a GPU or TRITON_INTERPRET=1")

    def refuse(*args, **kwargs):
        raise AssertionError("the reference path ran")

    for name in ("gather", "embedding_dense_backward", "embedding_renorm_", "embedding"):
        monkeypatch.setattr(reference, name, refuse)
    triton_embed.set_backend("triton")
    before = dict(triton_embed.launch_counts)
    weight = torch.randn(12, 6, device=device, requires_grad=True)
    ids = torch.tensor([[3, 3, 0], [11, 3, 5]], device=device)
    for deterministic in (False, True):
        functional.embedding(ids, weight, max_norm=0.5, deterministic=deterministic).sum().backward()
    grown = {k for k, v in triton_embed.launch_counts.items() if v > before.get(k, 0)}
    assert {"gather_rows_kernel", "embedding_bwd_pieces_kernel", "embedding_bwd_rows_kernel", "claim_rows_kernel",
            "renorm_rows_kernel"} <= grown
    expected = torch.zeros(12, 6, device=device)
    expected.index_add_(0, ids.reshape(-1), torch.ones(6, 6, device=device))
    torch.testing.assert_close(weight.grad, 2 * expected)


def test_reference_backend_runs_no_kernel(device):
    triton_embed.set_backend("reference")
    before = sum(triton_embed.launch_counts.values())
    weight = torch.randn(4, 3, device=device, requires_grad=True)
    functional.embedding(torch.tensor([1, 1], device=device), weight, max_norm=1.0).sum().backward()
    assert sum(triton_embed.launch_counts.values()) == before
    assert torch.equal(weight.grad[1], torch.full((3,), 2.0, device=device))


class _PyTorchStable(torch.nn.Module):
    """bitsandbytes' StableEmbedding graph in plain PyTorch modules."""

    def __init__(self, stable: triton_embed.StableEmbedding) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(*stable.weight.shape, padding_idx=stable.padding_idx,
                                        _weight=stable.weight.detach().clone())
        self.norm = torch.nn.LayerNorm(stable.weight.shape[1])
        self.norm.load_state_dict(stable.norm.state_dict())

    def forward(self, ids):
        return self.norm(self.embed(ids).to(torch.get_default_dtype())).to(self.embed.weight.dtype)


@pytest.mark.parametrize("stable", [False, True])
def test_torch_func_transforms_match_pytorch(device, stable):
    """A nonlinear loss through torch.func.grad, per-sample gradients (vmap over grad) and jacrev: under
    torch.func the ops run as their PyTorch composition, so every transform works and matches PyTorch."""
    from torch.func import functional_call, grad, jacrev, vmap

    torch.manual_seed(0)
    embed = (triton_embed.StableEmbedding if stable else triton_embed.Embedding)(10, 4, padding_idx=0, device=device)
    with torch.no_grad():
        embed.weight.mul_(3.0)
    ref_embed = _PyTorchStable(embed) if stable else torch.nn.Embedding(10, 4, padding_idx=0,
                                                                         _weight=embed.weight.detach().clone())
    head = torch.nn.Linear(4, 3, device=device)
    ours, ref = torch.nn.Sequential(embed, head), torch.nn.Sequential(ref_embed, head)
    ids = torch.tensor([[1, 2, 3, 2], [0, 5, 5, 9]], device=device)
    targets = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]], device=device)

    def loss_of(model):
        return lambda params, i, t: F.cross_entropy(functional_call(model, params, (i,)).flatten(0, -2), t.flatten())

    results = []
    for model in (ours, ref):
        params = {k: v.detach() for k, v in model.named_parameters()}
        whole = grad(loss_of(model))(params, ids, targets)
        per_sample = vmap(grad(loss_of(model)), in_dims=(None, 0, 0))(params, ids, targets)
        jac = jacrev(lambda p: functional_call(model, p, (ids,)).exp().sum(-1))(params)
        results.append([whole, per_sample, jac])
    same = {"0.weight": "0.embed.weight"} if stable else {}  # the table's name in the PyTorch module
    for ours_part, ref_part in zip(*results):
        assert len(ours_part) == len(ref_part) == len(list(ours.parameters()))
        for name, value in ours_part.items():
            torch.testing.assert_close(value, ref_part[same.get(name, name)], rtol=1e-5, atol=1e-6)


def test_hessian_of_a_lookup_matches_pytorch(device):
    ids = torch.tensor([1, 3, 3, 0], device=device)
    weight = torch.randn(5, 2, dtype=torch.float64, device=device)
    ours = torch.func.hessian(lambda w: (functional.embedding(ids, w, padding_idx=0) ** 3).sum())(weight)
    ref = torch.func.hessian(lambda w: (F.embedding(ids, w, padding_idx=0) ** 3).sum())(weight)
    torch.testing.assert_close(ours, ref)
