"""Sparse gradients accumulate as PyTorch's do, entry for entry: ``grad._indices()`` and ``grad._values()``
after one, two and three backward calls into the same ``.grad``, uncoalesced, for Embedding and
StableEmbedding(sparse=True), with and without a padding row, on the kernels and on the reference path.

PyTorch's accumulated entries depend on its gradient's layout (on the CPU a sparse addition merges two
gradients with contiguous values position by position and concatenates others, e.g. the expanded gradient
of ``out.sum()``), so the layouts must be PyTorch's too, not only the values after ``to_dense()``.
"""
from __future__ import annotations

import pytest
import torch

import triton_embed
from triton_embed import reference

BACKENDS = ["auto", "reference"]  # auto: the kernels (under the interpreter on a machine without a GPU)


def test_pytorch_test_embedding_backward(device):
    """PyTorch's own ``test_embedding_backward`` (test/nn/test_embedding.py), on triton_embed.Embedding."""
    for backend in BACKENDS:
        with triton_embed.use_backend(backend):
            embedding = triton_embed.Embedding(10, 3, sparse=True, dtype=torch.float64, device=device)
            tensor = torch.tensor([[7, 1, 3]], device=device)
            ones = torch.tensor(1.0, dtype=torch.float64, device=device).expand(3, 3)
            tensor_twice = tensor.repeat(1, 2)
            ones_twice = torch.cat((ones, ones))

            embedding.zero_grad()
            embedding(tensor[0]).sum().backward()
            assert torch.equal(embedding.weight.grad._indices(), tensor)
            assert torch.equal(embedding.weight.grad._values(), ones)

            embedding.zero_grad()
            embedding(tensor[0]).sum().backward()
            embedding(tensor[0]).sum().backward()
            assert torch.equal(embedding.weight.grad._indices(), tensor_twice), backend
            assert torch.equal(embedding.weight.grad._values(), ones_twice)

            embedding.zero_grad()
            embedding(tensor[0]).sum().backward()
            tensor[0, 0] = 8
            embedding(tensor[0]).sum().backward()
            tensor_twice[0, 3] = 8
            assert torch.equal(embedding.weight.grad._indices(), tensor_twice)
            assert torch.equal(embedding.weight.grad._values(), ones_twice)


LOSSES = {
    "sum": lambda out: out.sum(),  # an expanded (stride 0) output gradient
    "weighted": lambda out: (out * torch.linspace(-1, 2, out.shape[-1], device=out.device)).sum(),
    "transposed": lambda out: (out * torch.randn(out.shape[::-1], device=out.device).permute(*range(out.dim() - 1, -1, -1))).sum(),
}


def _pair(cls, padding_idx, device, seed=0):
    """Ours and PyTorch's (torch.nn.Embedding, or the bitsandbytes graph in PyTorch ops) on equal weights."""
    torch.manual_seed(seed)
    if cls is triton_embed.Embedding:
        ours = triton_embed.Embedding(12, 4, padding_idx=padding_idx, sparse=True, device=device)
        theirs = torch.nn.Embedding(12, 4, padding_idx=padding_idx, sparse=True, device=device)
    else:
        ours = triton_embed.StableEmbedding(12, 4, padding_idx=padding_idx, sparse=True, device=device)
        theirs = reference.StableEmbedding(12, 4, padding_idx=padding_idx, sparse=True, device=device)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [triton_embed.Embedding, triton_embed.StableEmbedding], ids=lambda c: c.__name__)
@pytest.mark.parametrize("padding_idx", [None, 1])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_accumulated_entries_are_pytorchs(device, backend, cls, padding_idx, loss):
    calls = [torch.tensor([[7, 1, 3], [1, 9, 7]], device=device), torch.tensor([3, 1, 7, 7], device=device),
             torch.tensor([[7, 1, 3], [1, 9, 7]], device=device, dtype=torch.int32)]
    ours, theirs = _pair(cls, padding_idx, device)
    with triton_embed.use_backend(backend):
        for step, ids in enumerate(calls):
            for module in (ours, theirs):
                torch.manual_seed(step)  # the same random output gradient for both
                LOSSES[loss](module(ids)).backward()
            got, want = ours.weight.grad, theirs.weight.grad
            assert got.is_sparse and not got.is_coalesced()
            assert torch.equal(got._indices(), want._indices()), (step, got._indices(), want._indices())
            if cls is triton_embed.Embedding:  # sparse gradient values are exact
                assert torch.equal(got._values(), want._values())
            else:  # the LayerNorm backward's values, within float32 rounding of PyTorch's
                torch.testing.assert_close(got._values(), want._values(), rtol=1e-5, atol=1e-5)
            assert got._values().is_contiguous() == want._values().is_contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_gradient_has_no_entries(device, backend):
    """As PyTorch: no tokens, or zero-width rows, give no entry at all."""
    for shape, dim in (((0,), 3), ((4,), 0)):
        ours = triton_embed.Embedding(5, dim, sparse=True, device=device)
        theirs = torch.nn.Embedding(5, dim, sparse=True, device=device)
        ids = torch.zeros(shape, dtype=torch.int64, device=device) + 2
        with triton_embed.use_backend(backend):
            ours(ids).sum().backward()
        theirs(ids).sum().backward()
        assert ours.weight.grad._indices().shape == theirs.weight.grad._indices().shape == (1, 0)
        assert ours.weight.grad._values().shape == theirs.weight.grad._values().shape


def test_a_compiled_sparse_backward_gives_the_same_entries(device):
    """torch.compile traces the sparse backward into PyTorch ops (inductor): the same entries, accumulated the
    same way, and a masked id's zero entry still on a row a valid token named (the report comes from the next
    op). The caches are off: a cached graph of another build of this function would be reused."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    ours, theirs = _pair(triton_embed.Embedding, None, device)
    compiled = torch.compile(lambda ids: ours(ids).sum(), fullgraph=True)
    ids = torch.tensor([7, 1, 3], device=device)
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        for _ in range(2):
            compiled(ids).backward()
            theirs(ids).sum().backward()
        assert torch.equal(ours.weight.grad._indices(), theirs.weight.grad._indices())
        assert torch.equal(ours.weight.grad._values(), theirs.weight.grad._values())
        ours.weight.grad = None
        compiled(torch.tensor([7, 40, 3], device=device)).backward()
    assert ours.weight.grad._indices().tolist() == [[7, 7, 3]]
    assert not ours.weight.grad._values()[1].any()
    with pytest.raises(IndexError, match="got id 40"):
        triton_embed.check_errors()
