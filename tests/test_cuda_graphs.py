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
