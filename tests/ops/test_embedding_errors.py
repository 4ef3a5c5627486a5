"""Bad input: each failure raises PyTorch's exception type with a message naming the problem, and the
table is bitwise unchanged afterwards."""
from __future__ import annotations

import math

import pytest
import torch

import triton_embed
from triton_embed import functional
from triton_embed.runtime.dispatch import use_triton


@pytest.fixture
def table(device):
    return torch.randn(10, 4, device=device, requires_grad=True)


def unchanged_after(table, call, exc_type, match):
    before = table.detach().clone()
    with pytest.raises(exc_type, match=match):
        call()
    assert torch.equal(table.detach(), before), "the table changed although the call failed"


@pytest.mark.parametrize("bad_id", [10, 11, 2**40, -1, -11])
@pytest.mark.parametrize("max_norm", [None, 0.01])
@pytest.mark.parametrize("mode", ["sync", "deferred"])
def test_out_of_range_ids_raise_index_error(device, table, bad_id, max_norm, mode):
    """sync: the call raises. deferred: the call returns (zero rows for the bad id), check_errors() raises.
    Either way the table is unchanged, max_norm's renorm included."""
    triton_embed.set_index_check(mode)
    ids = torch.tensor([[0, 3], [bad_id, 9]], device=device)
    call = lambda: functional.embedding(ids, table, max_norm=max_norm)  # noqa: E731
    message = f"out of range.*id {bad_id}, outside \\[0, 10\\)"
    if mode == "sync" or not use_triton(table):
        unchanged_after(table, call, IndexError, message)
    else:
        # With max_norm a lookup is two ops, the renorm and the gather: the gather may already see (and
        # raise) what the renorm's kernel noted, as any later op would.
        before = table.detach().clone()
        try:
            out = call()
        except IndexError as exc:
            assert max_norm is not None and "earlier call" in str(exc)
            out = None
        assert torch.equal(table.detach(), before), "a call that met a bad id changed the table"
        if out is not None:
            assert not out[1, 0].any() and torch.equal(out[0, 1], table[3].detach())
            unchanged_after(table, triton_embed.check_errors, IndexError, message)
    triton_embed.check_errors()  # reported once, then cleared


def test_deferred_error_is_raised_by_the_next_call(device, table):
    if not use_triton(table):
        pytest.skip("the reference path raises at the call")
    functional.embedding(torch.tensor([4, 10], device=device), table)
    good = torch.tensor([1, 2], device=device)
    with pytest.raises(IndexError, match="earlier call"):
        functional.embedding(good, table)  # on the CPU the record is visible at once
    assert torch.equal(functional.embedding(good, table), table[good])


def test_out_of_range_ids_raise_in_the_module_too(device):
    triton_embed.set_index_check("sync")
    emb = triton_embed.Embedding(5, 3, max_norm=0.1, device=device)
    unchanged_after(emb.weight, lambda: emb(torch.tensor([5], device=device)), IndexError, "out of range")


def test_with_the_check_off_bad_ids_read_nothing(device, table):
    triton_embed.set_index_check(False)
    if not use_triton(table):
        pytest.skip("the reference path does its own checking")
    out = functional.embedding(torch.tensor([1, 10, -3], device=device), table)
    assert torch.equal(out[0], table[1]) and not out[1:].any()
    triton_embed.set_index_check(True)
    triton_embed.check_errors()  # switching modes cleared what the kernels noted


def test_with_the_check_off_the_reference_path_leaves_the_table(table):
    """The reference path raises PyTorch's IndexError at the lookup even with the check off; the renorm
    before it must not have changed the table (a call that met a bad id changes nothing)."""
    triton_embed.set_index_check("off")
    try:
        with triton_embed.use_backend("reference"):
            unchanged_after(table, lambda: functional.embedding(torch.tensor([1, 10]), table, max_norm=0.01),
                            IndexError, "out of range")
    finally:
        triton_embed.set_index_check(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.int16, torch.uint8])
def test_non_integer_id_tensors_raise(device, table, dtype):
    ids = torch.tensor([1, 2], device=device).to(dtype)
    unchanged_after(table, lambda: functional.embedding(ids, table), RuntimeError, "indices.*Long, Int.*int32 or int64")


def test_ids_that_are_not_a_tensor_raise(table):
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        functional.embedding([1, 2], table)


@pytest.mark.parametrize("shape", [(10,), (2, 5, 4), ()])
def test_weight_must_be_2d(device, shape):
    weight = torch.randn(shape, device=device)
    unchanged_after(weight, lambda: functional.embedding(torch.tensor([0], device=device), weight), RuntimeError, "'weight' must be 2-D")


@pytest.mark.parametrize("padding_idx", [10, 11, -11])
def test_padding_idx_out_of_range(device, table, padding_idx):
    call = lambda: functional.embedding(torch.tensor([0], device=device), table, padding_idx=padding_idx)  # noqa: E731
    unchanged_after(table, call, AssertionError, "Padding_idx must be within num_embeddings")
    unchanged_after(table, call, ValueError, f"padding_idx={padding_idx}")
    with pytest.raises(AssertionError, match="Padding_idx"):
        triton_embed.Embedding(10, 4, padding_idx=padding_idx)


@pytest.mark.parametrize("max_norm", [-1.0, math.nan])
def test_negative_or_nan_max_norm(device, table, max_norm):
    call = lambda: functional.embedding(torch.tensor([0, 1], device=device), table, max_norm=max_norm)  # noqa: E731
    unchanged_after(table, call, ValueError, "max_norm must be a non-negative number")


def test_ids_on_another_device_raise(table):
    if table.device.type != "cuda":
        pytest.skip("needs a CUDA table to put the ids elsewhere")
    with pytest.raises(RuntimeError, match="same device"):
        functional.embedding(torch.tensor([0]), table)


def test_forcing_triton_on_cpu_without_the_interpreter_explains(monkeypatch):
    from triton_embed.runtime import dispatch as _dispatch

    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: False)
    triton_embed.set_backend("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        functional.embedding(torch.tensor([0]), torch.randn(2, 2))


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        triton_embed.set_backend("cuda")
