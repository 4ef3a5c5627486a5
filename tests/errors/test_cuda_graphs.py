"""A whole training step (forward, backward, optimizer step) of a model holding a StableEmbedding, captured
in a CUDA graph and replayed: the replays match an eager run step for step. Possible because nothing on
the hot path syncs with the host or tunes (tuning is skipped during capture). Needs a GPU."""
from __future__ import annotations

import pytest
import torch

import triton_embed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = triton_embed.StableEmbedding(1000, 64, padding_idx=0)
        self.head = torch.nn.Linear(64, 1000)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _step(model, optimizer, ids, targets):
    optimizer.zero_grad(set_to_none=False)
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    return loss


def test_a_training_step_replays_in_a_cuda_graph():
    torch.manual_seed(0)
    eager = Model().cuda()
    graphed = Model().cuda()
    graphed.load_state_dict(eager.state_dict())
    opt_eager = torch.optim.Adam(eager.parameters(), lr=1e-3, capturable=True)
    opt_graph = torch.optim.Adam(graphed.parameters(), lr=1e-3, capturable=True)
    batches = [(torch.randint(0, 1000, (4, 32), device="cuda"), torch.randint(0, 1000, (4, 32), device="cuda"))
               for _ in range(5)]
    static_ids, static_targets = batches[0][0].clone(), batches[0][1].clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: compile, choose configs, create the optimizer state
        for _ in range(3):
            _step(graphed, opt_graph, static_ids, static_targets)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(graphed, opt_graph, static_ids, static_targets)

    # Back to the eager model's starting point, in place (the graph holds these tensors).
    graphed.load_state_dict(eager.state_dict())
    for state in opt_graph.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()
    for ids, targets in batches:
        static_ids.copy_(ids)
        static_targets.copy_(targets)
        graph.replay()
        loss = _step(eager, opt_eager, ids, targets)
        torch.testing.assert_close(static_loss, loss, rtol=1e-4, atol=1e-4)
    for a, b in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    triton_embed.check_errors()


# --- the out-of-range error record around CUDA graphs (the CPU tests mock these: test_error_record.py) ---


def test_kernels_write_the_record_in_pinned_memory():
    """The probe's report (the kernels' compare-and-swap and exchanges on pinned host memory) read back
    right, so the host reads reports without a CUDA call; else the record would live on the device."""
    from triton_embed import functional
    from triton_embed.runtime import errors

    functional.embedding(torch.tensor([1], device="cuda"), torch.randn(4, 2, device="cuda"))
    record = errors._records[torch.device("cuda", torch.cuda.current_device())]
    assert not record.mirrored and record.tensor.is_pinned()


def test_a_report_pending_at_capture_waits_for_the_first_op_after_it():
    """Waiting during capture would invalidate it ("operation not permitted when stream is capturing"):
    a report the host sees when the capture starts neither waits nor raises there, and comes after it."""
    from triton_embed import functional

    triton_embed.set_index_check("deferred")
    weight = torch.randn(50, 8, device="cuda")
    ids = torch.tensor([1, 2, 3], device="cuda")
    functional.embedding(ids, weight)  # the device's record, the kernel compiled
    functional.embedding(torch.tensor([4, 77], device="cuda"), weight)
    torch.cuda.synchronize()  # the host sees the report
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = functional.embedding(ids, weight)
    with pytest.raises(IndexError, match="got id 77, outside \\[0, 50\\)"):
        triton_embed.check_errors()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, weight[ids])
    triton_embed.check_errors()


def test_a_bad_id_in_a_replay_is_reported_after_it():
    from triton_embed import functional

    triton_embed.set_index_check("deferred")
    weight = torch.randn(50, 8, device="cuda")
    static = torch.tensor([1, 2, 3], device="cuda")
    functional.embedding(static, weight)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = functional.embedding(static, weight)
    for bad in (60, -2):
        static.copy_(torch.tensor([1, bad, 3]))
        graph.replay()
        with pytest.raises(IndexError, match=f"got id {bad}, outside \\[0, 50\\)"):
            triton_embed.check_errors()
        assert not out[1].any()
    static.copy_(torch.tensor([5, 6, 7]))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, weight[static])
    triton_embed.check_errors()


def test_the_first_op_on_a_device_refuses_to_run_during_capture():
    """The record (pinned memory, zeroed) cannot be made inside a capture: the op says so."""
    from triton_embed import functional
    from triton_embed.runtime import errors

    device = torch.device("cuda", torch.cuda.current_device())
    weight = torch.randn(50, 8, device=device)
    ids = torch.tensor([1, 2], device=device)
    functional.embedding(ids, weight)  # compiled outside capture
    saved = errors._records.pop(device)
    try:
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="during CUDA-graph capture"):
            with torch.cuda.graph(graph):
                functional.embedding(ids, weight)
        assert device not in errors._records
    finally:
        errors._records[device] = saved


def test_a_bad_calls_sparse_backward_raises_before_any_gradient():
    emb = triton_embed.Embedding(50, 8, sparse=True, device="cuda")
    out = emb(torch.tensor([1, 70, 3], device="cuda"))
    torch.cuda.synchronize()  # the report is visible, as it almost always is by the backward
    with pytest.raises(IndexError, match="got id 70"):
        out.sum().backward()
    assert emb.weight.grad is None
    triton_embed.check_errors()
