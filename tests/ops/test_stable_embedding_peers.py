"""StableEmbedding beside the rest of PyTorch and its peers: torch.compile and the custom ops (opcheck),
bitsandbytes' module and optimizer registration, norms replaced or hooked.
"""
from __future__ import annotations

import pytest
import torch
from _support.oracle import check_against_truth
from _support.strategies import make_ids
from stable_cases import effective_dtype, forward_backward, make_modules, truth

import triton_embed
from triton_embed.ops import stable_embedding as stable_ops

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
