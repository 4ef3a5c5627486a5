"""No host sync on the hot path: with the default settings a training step's forward and backward of
Embedding and StableEmbedding never wait for the device (so the CPU's launch queue never stalls and CUDA
graphs can capture the step). Bad ids are found on the device and reported later (see test_out_of_range)."""
from __future__ import annotations

import pytest
import torch
from _support.recorder import recording

import triton_embed
from triton_embed.runtime.dispatch import use_triton

OPTIONS = [{}, {"padding_idx": 0}, {"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"norm_type": 3.0, "max_norm": 2.0},
           {"sparse": True}]  # a sparse gradient with a padding row drops its tokens: a sync, as in PyTorch


@pytest.fixture(autouse=True)
def _kernels_only(device):
    if not use_triton(torch.empty(0, device=device)):
        pytest.skip("the reference path checks ids on the host, as PyTorch's CPU ops do")


@pytest.mark.parametrize("cls", [triton_embed.Embedding, triton_embed.StableEmbedding])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_a_training_step_makes_no_host_sync(device, cls, options):
    emb = cls(100, 24, device=device, **options)
    ids = torch.randint(0, 100, (6, 9), device=device)
    ids[0, :5] = 0
    grad = torch.randn(6, 9, 24, device=device)
    emb(ids).backward(grad)  # first call: error record, tuning choices
    with recording() as record:
        out = emb(ids)
        out.backward(grad)
    assert record.syncs == [], record.syncs
    assert record.launches, "the Triton kernels did not run"


def test_layer_norm_makes_no_host_sync(device):
    x = torch.randn(7, 40, device=device, requires_grad=True)
    w = torch.randn(40, device=device, requires_grad=True)
    triton_embed.functional.layer_norm(x, 40, w).sum().backward()
    grad = torch.randn(7, 40, device=device)
    with recording() as record:
        triton_embed.functional.layer_norm(x, 40, w).backward(grad)
    assert record.syncs == []


def test_the_sync_mode_does_sync(device):
    """The recorder would see a sync: "sync" mode waits once per call to raise at the call."""
    triton_embed.set_index_check("sync")
    emb = triton_embed.Embedding(10, 4, device=device)
    ids = torch.tensor([1, 2], device=device)
    emb(ids)
    with recording() as record:
        emb(ids)
    assert record.syncs
