"""triton_embed.Embedding as a drop-in for bitsandbytes.nn.Embedding and torch.nn.Embedding."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import triton_embed
from _support.peers import needs

needs_bnb = needs("bitsandbytes")


def test_init_is_xavier_uniform_with_zeroed_padding_row(device):
    torch.manual_seed(0)
    emb = triton_embed.Embedding(300, 200, padding_idx=-3, device=device)
    bound = (6.0 / (300 + 200)) ** 0.5
    weight = emb.weight.detach()
    assert emb.padding_idx == 297
    assert not weight[297].any()
    others = torch.cat([weight[:297], weight[298:]])
    assert others.abs().max() <= bound
    assert others.abs().max() > 0.9 * bound  # uniform over the whole range, not PyTorch's normal init
    assert abs(others.std().item() - bound / 3**0.5) < 0.05 * bound


def test_constructor_matches_bitsandbytes_positional_order(device):
    weight = torch.randn(6, 4)
    emb = triton_embed.Embedding(6, 4, 1, 2.0, 3.0, True, False, weight, device)
    assert (emb.padding_idx, emb.max_norm, emb.norm_type, emb.scale_grad_by_freq, emb.sparse) == (1, 2.0, 3.0, True, False)
    assert torch.equal(emb.weight.detach().cpu(), weight)
    assert emb.weight.device.type == device.type
    assert emb.weight.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_are_honoured(device, dtype):
    emb = triton_embed.Embedding(10, 8, device=device, dtype=dtype)
    assert emb.weight.dtype == dtype and emb.weight.device.type == device.type and emb.weight.requires_grad
    assert emb(torch.tensor([1, 2], device=device)).dtype == dtype


def test_forward_and_backward_match_torch_embedding(device):
    torch.manual_seed(1)
    ours = triton_embed.Embedding(50, 12, padding_idx=4, scale_grad_by_freq=True, device=device)
    theirs = torch.nn.Embedding(50, 12, padding_idx=4, scale_grad_by_freq=True, device=device)
    theirs.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 50, (3, 17), device=device)
    grad = torch.randn(3, 17, 12, device=device)
    out, expected = ours(ids), theirs(ids)
    assert torch.equal(out, expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trips_with_torch_embedding(device):
    ours = triton_embed.Embedding(7, 3, device=device)
    assert list(ours.state_dict()) == ["weight"]
    theirs = torch.nn.Embedding(7, 3, device=device)
    theirs.load_state_dict(ours.state_dict())
    assert torch.equal(theirs.weight, ours.weight)
    fresh = triton_embed.Embedding(7, 3, device=device)
    fresh.load_state_dict(torch.nn.Embedding(7, 3, device=device).state_dict())
    buffer = io.BytesIO()
    torch.save(fresh.state_dict(), buffer)
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer))
    assert torch.equal(ours.weight, fresh.weight)


@needs_bnb
def test_state_dict_round_trips_with_bitsandbytes():
    import bitsandbytes as bnb

    ours = triton_embed.Embedding(9, 5, padding_idx=2)
    theirs = bnb.nn.Embedding(9, 5, padding_idx=2)
    theirs.load_state_dict(ours.state_dict())
    ids = torch.tensor([[0, 2, 8, 8]])
    assert torch.equal(theirs(ids), ours(ids))
    ours.load_state_dict(bnb.nn.Embedding(9, 5).state_dict())


@needs_bnb
def test_registers_32bit_optimizer_state_with_bitsandbytes():
    from bitsandbytes.optim import GlobalOptimManager

    emb = triton_embed.Embedding(4, 2)
    manager = GlobalOptimManager.get_instance()
    overrides = [(module, name, config) for module, name, config in manager.module_weight_config_triple]
    # A weak proxy of the module (the manager would otherwise keep it alive for good).
    assert any(module.weight is emb.weight and name == "weight" and config == {"optim_bits": 32}
               for module, name, config in overrides)


@needs_bnb
def test_matches_bitsandbytes_module_with_every_option():
    import bitsandbytes as bnb

    torch.manual_seed(3)
    for kwargs in [{}, {"padding_idx": 1}, {"max_norm": 0.1}, {"scale_grad_by_freq": True}, {"sparse": True}]:
        ours = triton_embed.Embedding(20, 6, **kwargs)
        theirs = bnb.nn.Embedding(20, 6, **kwargs)
        theirs.load_state_dict(ours.state_dict())
        ids = torch.randint(0, 20, (30,))
        out, expected = ours(ids), theirs(ids)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
        out.sum().backward()
        expected.sum().backward()
        ours_grad, theirs_grad = ours.weight.grad, theirs.weight.grad
        if kwargs.get("sparse"):
            ours_grad, theirs_grad = ours_grad.coalesce().to_dense(), theirs_grad.coalesce().to_dense()
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-6)


def test_works_without_bitsandbytes(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError("no bitsandbytes here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    emb = triton_embed.Embedding(4, 2)
    assert emb(torch.tensor([3])).shape == (1, 2)


def test_from_pretrained_and_freeze(device):
    table = torch.randn(5, 3, device=device)
    frozen = triton_embed.Embedding.from_pretrained(table, freeze=True, padding_idx=1)
    assert isinstance(frozen, triton_embed.Embedding)
    assert not frozen.weight.requires_grad and frozen.padding_idx == 1
    assert torch.equal(frozen(torch.tensor([4, 0], device=device)), table[[4, 0]])
    trainable = triton_embed.Embedding.from_pretrained(table, freeze=False)
    assert trainable.weight.requires_grad
    assert not triton_embed.Embedding(5, 3, _weight=table, _freeze=True).weight.requires_grad


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_integer_tables_through_from_pretrained(device, dtype):
    table = torch.arange(24, device=device).view(6, 4).to(dtype)
    emb = triton_embed.Embedding.from_pretrained(table, freeze=True)
    out = emb(torch.tensor([[5, 0], [2, 2]], device=device))
    assert out.dtype == dtype
    assert torch.equal(out, table[torch.tensor([[5, 0], [2, 2]], device=device)])


def test_empty_table_and_empty_inputs(device):
    empty_table = triton_embed.Embedding(0, 3, device=device)
    assert empty_table(torch.empty(0, dtype=torch.long, device=device)).shape == (0, 3)
    emb = triton_embed.Embedding(4, 3, device=device)
    out = emb(torch.empty(2, 0, dtype=torch.long, device=device))
    assert out.shape == (2, 0, 3)
    out.sum().backward()
    assert torch.equal(emb.weight.grad, torch.zeros_like(emb.weight))
    zero_dim = triton_embed.Embedding(4, 0, device=device)
    assert zero_dim(torch.tensor([1, 2], device=device)).shape == (2, 0)


def test_scalar_index_gives_one_row(device):
    emb = triton_embed.Embedding(4, 3, device=device)
    out = emb(torch.tensor(2, device=device))
    assert out.shape == (3,)
    assert torch.equal(out, emb.weight[2])


def test_deepcopy_and_pickle(device):
    emb = triton_embed.Embedding(6, 4, padding_idx=0, max_norm=1.5, device=device, deterministic=True)
    ids = torch.tensor([0, 5, 5], device=device)
    for clone in (copy.deepcopy(emb), pickle.loads(pickle.dumps(emb))):
        assert isinstance(clone, triton_embed.Embedding) and clone.deterministic
        assert (clone.padding_idx, clone.max_norm) == (0, 1.5)
        assert torch.equal(clone(ids), emb(ids))


def test_repr_lists_options():
    text = repr(triton_embed.Embedding(6, 4, padding_idx=0, deterministic=True))
    assert text.startswith("Embedding(6, 4, padding_idx=0") and "deterministic=True" in text


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_backward_on_this_device(device, dtype):
    emb = triton_embed.Embedding(8, 5, device=device, dtype=dtype)
    ids = torch.tensor([1, 1, 7], device=device)
    emb(ids).sum().backward()
    expected = torch.zeros(8, 5, dtype=dtype, device=device)
    expected[1] = 2
    expected[7] = 1
    assert torch.equal(emb.weight.grad, expected)


def test_autocast_keeps_weight_dtype_like_bitsandbytes(device):
    emb = triton_embed.Embedding(8, 4, device=device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        out = emb(torch.tensor([1, 2], device=device))
    assert out.dtype == torch.float32  # embedding is not an autocast op: the table's dtype passes through


def test_trains_with_an_optimizer(device):
    torch.manual_seed(0)
    emb = triton_embed.Embedding(10, 4, device=device)
    reference = torch.nn.Embedding(10, 4, device=device)
    reference.load_state_dict(emb.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (emb, reference)]
    ids = torch.randint(0, 10, (16,), device=device)
    for _ in range(3):
        for module, opt in zip((emb, reference), opts):
            opt.zero_grad()
            (module(ids) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(emb.weight, reference.weight, rtol=1e-5, atol=1e-6)
