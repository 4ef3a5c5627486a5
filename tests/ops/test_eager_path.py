"""The eager path (``ops/eager.py``): in eager mode the functional API and the modules run the launchers and
the reference ops directly, without the custom ops' dispatcher machinery, and give bitwise what the custom
ops give; whatever traces or fakes the ops (make_fx, fake tensors, torch.compile) still sees the custom ops.
The arguments are checked once at the top, and the reference path's LayerNorm makes no extra passes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import triton_embed
from _support.recorder import recording
from triton_embed import functional, reference, tuning
from triton_embed.ops import plans
from triton_embed.ops.tiles import forward_tile


class _OpNames(TorchDispatchMode):
    """Records the name of every op dispatched under it (custom ops as one call: their bodies do not run
    under the mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def _table(device, rows=30, dim=12, dtype=torch.float32):
    gen = torch.Generator().manual_seed(rows * dim)
    return (torch.randn(rows, dim, generator=gen) * 2).to(dtype).to(device)


def _ids(device):
    return torch.tensor([[3, 0, 7, 3], [29, 3, 11, 2]], device=device)


def _custom_op_lookup(ids, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                      sparse=False):
    """The lookup through the custom ops, as torch.compile runs it."""
    padding = -1 if padding_idx is None else padding_idx
    if max_norm is not None:
        with torch.no_grad():
            torch.ops.triton_embed.embedding_renorm_(weight, ids, float(max_norm), float(norm_type))
    return torch.ops.triton_embed.embedding(weight, ids, padding, scale_grad_by_freq, sparse, False)


@pytest.mark.parametrize("options", [{}, {"padding_idx": 3, "scale_grad_by_freq": True}, {"max_norm": 1.5},
                                     {"sparse": True}], ids=lambda o: ",".join(o) or "plain")
def test_eager_lookup_is_the_custom_op_bitwise(device, options):
    grad = torch.randn(2, 4, 12, device=device)
    results = []
    for fn in (functional.embedding, _custom_op_lookup):
        weight = _table(device).requires_grad_()
        out = fn(_ids(device), weight, **options)
        out.backward(grad)
        results.append((out.detach(), weight.detach().clone(), weight.grad))
    (out, table, g), (ref_out, ref_table, ref_g) = results
    assert torch.equal(out, ref_out) and torch.equal(table, ref_table)
    if options.get("sparse"):
        g, ref_g = g.coalesce().to_dense(), ref_g.coalesce().to_dense()
    assert torch.equal(g, ref_g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_stable_embedding_is_the_custom_op_bitwise(device, dtype):
    grad = torch.randn(2, 4, 12, device=device).to(dtype)
    gamma, beta = torch.randn(12, device=device), torch.randn(12, device=device)
    results = []
    for custom in (False, True):
        leaves = [_table(device, dtype=dtype).requires_grad_(), gamma.clone().requires_grad_(),
                  beta.clone().requires_grad_()]
        if custom:
            out = torch.ops.triton_embed.stable_embedding(leaves[0], _ids(device), leaves[1], leaves[2], 1e-5,
                                                          torch.get_default_dtype(), 0, False, False, False)[0]
        else:
            out = functional.stable_embedding(_ids(device), *leaves, padding_idx=0)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)


def test_eager_layer_norm_is_the_custom_op_bitwise(device):
    x0, w0, b0 = torch.randn(5, 3, 40, device=device), torch.randn(40, device=device), torch.randn(40, device=device)
    grad = torch.randn(5, 3, 40, device=device)
    results = []
    for custom in (False, True):
        x, w, b = (t.clone().requires_grad_() for t in (x0, w0, b0))
        y = (torch.ops.triton_embed.layer_norm(x.reshape(15, 40), w, b, 1e-5)[0].view(5, 3, 40) if custom
             else functional.layer_norm(x, 40, w, b))
        y.backward(grad)
        results.append([y.detach(), x.grad, w.grad, b.grad])
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)


def test_eager_mode_dispatches_no_custom_op(device):
    """A training step of both modules, and a LayerNorm, run no ``triton_embed::*`` op in eager mode (a mode
    that sees each dispatched op sees the aten ops inside them instead)."""
    emb = triton_embed.StableEmbedding(30, 12, device=device)
    plain = triton_embed.Embedding(30, 12, max_norm=1.0, device=device)
    x = torch.randn(4, 12, device=device, requires_grad=True)
    with _OpNames() as mode:
        emb(_ids(device)).sum().backward()
        plain(_ids(device)).sum().backward()
        functional.layer_norm(x, 12).sum().backward()
    assert mode.names and not [n for n in mode.names if n.startswith("triton_embed::")], mode.names


def test_tracing_still_sees_the_custom_ops(device):
    """make_fx records the custom ops (not the launches inside), and fake tensors take their fakes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    weight = _table(device)
    graph = make_fx(lambda ids, w: functional.stable_embedding(ids, w, None, None))(_ids(device), weight)
    targets = {str(node.target) for node in graph.graph.nodes}
    assert "triton_embed.stable_embedding.default" in targets, targets
    with FakeTensorMode() as fake:
        out = functional.embedding(fake.from_tensor(_ids(device)), fake.from_tensor(weight))
    assert out.shape == (2, 4, 12)


def test_a_kernel_renorm_is_seen_by_autograd(device):
    """max_norm rescales the table in place: a graph that saved the table before must refuse to backward."""
    weight = (_table(device) * 10).requires_grad_()
    product = weight * weight  # saves the table
    functional.embedding(_ids(device), weight, max_norm=1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.sum().backward()


def _count(fn, name: str) -> int:
    with _OpNames() as mode:
        fn()
    return mode.names.count(name)


@pytest.mark.parametrize("max_norm", [None, 1.0])
def test_the_reference_path_checks_the_ids_once(max_norm):
    """On CPU tensors PyTorch's lookup checks the ids itself: no pass of our own, except before max_norm's
    renorm (which must not start on a bad id); before, the renorm and the lookup each checked them."""
    weight = _table("cpu").requires_grad_()
    with triton_embed.use_backend("reference"):
        with recording() as lookup:  # sees inside the custom ops too, had they run
            functional.embedding(_ids("cpu"), weight, max_norm=max_norm)
        with recording() as stable:
            functional.stable_embedding(_ids("cpu"), weight, None, None, max_norm=max_norm)
    expected = 0 if max_norm is None else 1
    assert lookup.ops["aten::aminmax"] == stable.ops["aten::aminmax"] == expected


def test_the_reference_path_words_a_bad_id_as_ours():
    weight = _table("cpu")
    with triton_embed.use_backend("reference"):
        for fn in (functional.embedding, lambda i, w: functional.stable_embedding(i, w, None, None)):
            with pytest.raises(IndexError, match=r"embedding id 30 is outside \[0, 30\)"):
                fn(torch.tensor([1, 30]), weight)
        triton_embed.set_index_check("off")  # then PyTorch's own words
        with pytest.raises(IndexError, match="index out of range in self"):
            functional.embedding(torch.tensor([1, 30]), weight)


def test_the_reference_layer_norm_makes_one_pass():
    """float32/float64 rows: ATen's LayerNorm gives the statistics too (no pass of its own over the rows),
    its output bitwise F.layer_norm's, its statistics those of float64 math; the backward reuses them
    instead of running the forward again."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 96, generator=gen) * 3 + 1
    w, b = torch.randn(96, generator=gen), torch.randn(96, generator=gen)
    with _OpNames() as mode:
        y, mean, rstd = reference.layer_norm_forward(x, w, b, 1e-5)
    assert mode.names == ["aten::native_layer_norm", "aten::view", "aten::view"], mode.names
    assert torch.equal(y, F.layer_norm(x, (96,), w, b, 1e-5))
    wide = x.double()
    torch.testing.assert_close(mean, wide.mean(-1).float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd, torch.rsqrt(wide.var(-1, unbiased=False) + 1e-5).float(), rtol=1e-6, atol=1e-6)
    grad = torch.randn(64, 96, generator=gen)
    assert _count(lambda: reference.layer_norm_backward(grad, x, w, b, mean, rstd, 1e-5), "aten::native_layer_norm") == 0
    recomputed = reference.layer_norm_backward(grad, x, w, b, None, None, 1e-5)
    for a, c in zip(reference.layer_norm_backward(grad, x, w, b, mean, rstd, 1e-5), recomputed):
        assert torch.equal(a, c)  # ATen's own statistics: the very numbers it would recompute


def test_launch_plans_are_derived_once_per_config_and_shape():
    calls = []

    def derive(config, dim, wide):
        calls.append(dim)
        return forward_tile(config, dim, wide)

    config = {"ELEMS": 4096, "num_warps": 8}
    first = plans.plan(derive, config, 768, False)
    assert plans.plan(derive, config, 768, False) is first and calls == [768]
    plans.plan(derive, config, 1024, False)
    plans.plan(derive, dict(config), 768, False)  # another config object: a new plan
    assert calls == [768, 1024, 768]


def test_tuning_keys_are_the_same_within_a_token_bucket():
    keys = {tuning._bucket_key("gather", torch.float32, 768, tuning.token_bucket(n), None, "") for n in (4097, 8192)}
    assert keys == {tuning.tuning_key("gather", torch.float32, 768, 5000)}
