"""The out-of-range error record and its modes (triton_embed/runtime/errors.py, kernels/errors.py): every op that runs
kernels raises a pending report before it does any work; a report is one consistent record (the first
writer claims it, the host reads only complete ones); saving and restoring the mode keeps a report; an empty
environment variable means the default; nothing waits during CUDA-graph capture and no record is made
there. What only a GPU would show (capture, pinned memory, the device's record) is checked with mocks; the
compiled atomics are checked in test_aot_compile.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import triton_embed
from triton_embed import functional
from triton_embed.kernels.errors import error_probe_kernel
from triton_embed.ops import sharded  # noqa: F401  (registers triton_embed::embedding_shard*)
from triton_embed.quantized import formats as quantize
from triton_embed.runtime import dispatch as _dispatch
from triton_embed.runtime import errors

pytestmark = pytest.mark.skipif(not _dispatch.use_triton(torch.empty(0)) and not torch.cuda.is_available(),
                                reason="the record is written by the kernels (a GPU, or the interpreter)")

V, D = 7, 4


def _pending(device) -> None:
    """Leave a report (id 99) on ``device``, as a bad deferred lookup does; the host sees it at once here."""
    triton_embed.set_index_check("deferred")
    functional.embedding(torch.tensor([1, 99], device=device), torch.randn(V, D, device=device))
    _wait(device)


def _ops(device):
    """Every public op that runs kernels, on valid inputs: name -> a function that sets the op up (for a
    backward: runs the forward) and returns the call that runs it."""
    dev = dict(device=device)
    weight = torch.randn(V, D, **dev)
    ids = torch.tensor([[0, 3], [6, 3]], **dev)
    grad = torch.randn(2, 2, D, **dev)
    gamma, beta = torch.randn(D, **dev), torch.randn(D, **dev)
    x = torch.randn(3, D, **dev)
    mean, rstd = torch.zeros(3, **dev), torch.ones(3, **dev)
    codes, scales = quantize.quantize_int8(torch.randn(V, D, **dev))
    stats = torch.zeros(4, **dev), torch.ones(4, **dev)
    ops = torch.ops.triton_embed

    def backward_of(forward, grad=grad):
        def setup():
            out = forward()  # now: the forward
            return lambda: out.backward(grad)  # later: the backward
        return setup

    def now(call):
        return lambda: call

    def leaf(t):
        return t.clone().requires_grad_()

    return {
        "embedding": now(lambda: functional.embedding(ids, weight)),
        "max_norm renorm": now(lambda: ops.embedding_renorm_(weight, ids, 1.0, 2.0)),
        "embedding dense backward": now(lambda: ops.embedding_dense_backward(grad, ids, V, -1, False, True)),
        "embedding sparse backward": backward_of(lambda: functional.embedding(ids, leaf(weight), sparse=True)),
        "embedding autograd": backward_of(lambda: functional.embedding(ids, leaf(weight))),
        "stable_embedding": now(lambda: functional.stable_embedding(ids, weight, gamma, beta)),
        "stable_embedding backward": now(lambda: ops.stable_embedding_backward(
            grad, weight, ids, gamma, beta, *stats, 1e-5, torch.float32, 0, -1, False, True)),
        "stable_embedding sparse autograd": backward_of(
            lambda: functional.stable_embedding(ids, leaf(weight), gamma, beta, sparse=True)),
        "layer_norm": now(lambda: functional.layer_norm(x, D, gamma, beta)),
        "layer_norm backward": now(lambda: ops.layer_norm_backward(x, x, gamma, beta, mean, rstd, 1e-5)),
        "layer_norm autograd": backward_of(lambda: functional.layer_norm(leaf(x), D, leaf(gamma), beta), x),
        "quantized embedding": now(lambda: ops.quantized_embedding(codes, scales, None, ids, V, D, 64, torch.float32)),
        "quantized stable_embedding": now(lambda: ops.quantized_stable_embedding(
            codes, scales, None, ids, gamma, beta, V, D, 64, 1e-5, torch.float32, torch.float32)),
        "quantized stable_embedding backward": now(lambda: ops.quantized_stable_embedding_backward(
            grad, codes, scales, None, ids, gamma, beta, *stats, V, D, 64, 1e-5, torch.float32)),
        "embedding shard": now(lambda: ops.embedding_shard(weight, ids, 0, V, -1, False)),
        "embedding shard renorm": now(lambda: ops.embedding_shard_renorm_(weight, ids, 0, V, 1.0, 2.0)),
    }


@pytest.mark.parametrize("name", list(_ops(torch.device("cpu"))))
def test_every_op_raises_a_pending_report_before_any_work(device, name):
    setup = _ops(device)[name]
    setup()()  # runs on valid inputs (and makes its compile/tuning choices)
    call = setup()  # a backward's forward runs before the report exists
    _pending(device)
    launches = dict(_dispatch.launch_counts)
    with pytest.raises(IndexError, match="got id 99, outside \\[0, 7\\)"):
        call()
    assert dict(_dispatch.launch_counts) == launches, "the op launched kernels before raising"
    triton_embed.check_errors()  # reported once
    setup()()


def test_saving_and_restoring_the_mode_keeps_a_report(device):
    _pending(device)
    triton_embed.set_index_check(triton_embed.index_check_mode())
    with pytest.raises(IndexError, match="got id 99"):
        triton_embed.check_errors()


def test_a_real_switch_drops_a_report(device):
    _pending(device)
    triton_embed.set_index_check("sync")
    triton_embed.set_index_check("deferred")
    triton_embed.check_errors()


@pytest.mark.parametrize(("value", "mode"), [("", "deferred"), ("  ", "deferred"), ("off", "off"), ("0", "off"),
                                             ("sync", "sync"), ("1", "deferred")])
def test_the_environment_variable(value, mode):
    """``TRITON_EMBED_CHECK_INDICES=`` (empty) is unset: the default, not "off"."""
    env = {**os.environ, "TRITON_EMBED_CHECK_INDICES": value}
    out = subprocess.run([sys.executable, "-c", "import triton_embed; print(triton_embed.index_check_mode())"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == mode


def test_an_empty_backend_variable_is_the_default():
    """The same rule for ``TRITON_EMBED_BACKEND=``: the default backend, not an error at import."""
    env = {**os.environ, "TRITON_EMBED_BACKEND": ""}
    out = subprocess.run([sys.executable, "-c", "import triton_embed; print(triton_embed.get_backend())"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "auto"


def test_the_probe_writes_what_the_host_expects():
    """``_cuda_record`` trusts pinned memory when the probe's report reads back as ``errors._PROBE``."""
    if torch.cuda.is_available():
        pytest.skip("the probe runs on CUDA records there (errors._cuda_record)")
    record = torch.zeros(4, dtype=torch.int64)
    error_probe_kernel[(1,)](record)
    assert record.tolist() == errors._PROBE


# --- one report is one record ----------------------------------------------------------------------


def _record(device) -> torch.Tensor:
    return errors.record_for(device)


def _wait(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_the_first_writer_keeps_the_record(device):
    """A record another writer holds (complete, or claimed and being written) is never overwritten: a later
    kernel's bad id cannot mix its fields into it."""
    weight = torch.randn(V, D, device=device)
    for state in (errors.COMPLETE, errors.CLAIMED):
        triton_embed.set_index_check("off")  # the ops below must not raise what is there
        record = _record(device)
        held = torch.tensor([state, 111, 222, 3], dtype=torch.int64)
        record.copy_(held)
        functional.embedding(torch.tensor([2, -5], device=device), weight)
        functional.embedding(torch.tensor([2, 40], device=device), weight, max_norm=0.5)
        functional.stable_embedding(torch.tensor([9], device=device), weight, None, None)
        _wait(device)
        assert record.cpu().tolist() == held.tolist()
        record.zero_()


def test_a_claimed_record_is_no_report_yet(device):
    triton_embed.set_index_check("deferred")
    record = _record(device)
    record.copy_(torch.tensor([errors.CLAIMED, 5, 6, 1]))
    if device.type == "cpu":  # a device record reaches the host view after a call
        assert not errors.reported(device)
        errors.before_call(device)  # does not raise


def test_the_first_bad_call_is_the_one_reported(device):
    """Launches of three ops meet bad ids (the check off, so that none raises): the record is the first
    one's, whole (id, rows and op of the renorm), not a mix."""
    triton_embed.set_index_check("off")
    weight = torch.randn(V, D, device=device)
    functional.embedding(torch.tensor([2, 8], device=device), weight, max_norm=1.0)  # renorm then gather: id 8
    functional.stable_embedding(torch.tensor([-3], device=device), weight, None, None)
    _wait(device)
    assert _record(device).cpu().tolist() == [errors.COMPLETE, 8, V, 2]


# --- CUDA-graph capture, with mocks ---------------------------------------------------------------

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def fake_cuda(monkeypatch):
    """cuda:0 seen through mocks: ``state["capturing"]`` says whether a graph is being captured (then
    ``torch.cuda.synchronize`` fails as CUDA fails it); records are CPU tensors standing for pinned memory."""
    state = {"capturing": False, "syncs": 0, "made": []}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def synchronize(device=None):
        if state["capturing"]:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        state["syncs"] += 1

    def cuda_record(device):
        state["made"].append(device)
        host = torch.zeros(4, dtype=torch.int64)
        return host, host, False

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(errors, "_cuda_record", cuda_record)
    saved = dict(errors._records)
    errors._records.pop(CUDA0, None)
    yield state
    errors._records.clear()
    errors._records.update(saved)


def test_a_report_waits_out_a_capture(fake_cuda):
    """A report the host sees when a capture starts neither waits nor raises there (waiting would invalidate
    the capture: "operation not permitted when stream is capturing"); the first op after it raises it."""
    triton_embed.set_index_check("deferred")
    errors.before_call(CUDA0)  # the first op on the device, before capture: makes the record
    errors.record_for(CUDA0).copy_(torch.tensor([errors.COMPLETE, 5, 3, 1]))
    fake_cuda["capturing"] = True
    errors.before_call(CUDA0)
    errors.after_call(CUDA0)
    assert errors.reported(CUDA0) is False  # nothing may act on it during capture
    with pytest.raises(RuntimeError, match="outside CUDA-graph capture"):
        triton_embed.check_errors()
    with pytest.raises(RuntimeError, match="outside CUDA-graph capture"):
        triton_embed.set_index_check("off")
    triton_embed.set_index_check("deferred")  # not a switch: allowed
    assert fake_cuda["syncs"] == 0
    fake_cuda["capturing"] = False
    with pytest.raises(IndexError, match="got id 5, outside \\[0, 3\\)"):
        errors.before_call(CUDA0)
    errors.before_call(CUDA0)  # reported once


def test_sync_mode_does_not_wait_during_capture(fake_cuda):
    errors.before_call(CUDA0)
    triton_embed.set_index_check("sync")
    fake_cuda["capturing"] = True
    errors.record_for(CUDA0).copy_(torch.tensor([errors.COMPLETE, 5, 3, 1]))
    errors.after_call(CUDA0)  # would raise at once outside capture
    fake_cuda["capturing"] = False
    with pytest.raises(IndexError, match="got id 5"):
        errors.after_call(CUDA0)


def test_no_record_is_made_during_capture(fake_cuda):
    """The record (pinned memory, zeroed) must exist before capture: made during it, its allocation and
    zeroing would be recorded into the graph instead of happening. An op that would make it refuses."""
    fake_cuda["capturing"] = True
    with pytest.raises(RuntimeError, match="during CUDA-graph capture"):
        errors.before_call(CUDA0)
    with pytest.raises(RuntimeError, match="during CUDA-graph capture"):
        errors.record_for(CUDA0)
    assert fake_cuda["made"] == [] and CUDA0 not in errors._records
    fake_cuda["capturing"] = False
    errors.before_call(CUDA0)  # the first op outside capture makes it, once
    errors.before_call(CUDA0)
    fake_cuda["capturing"] = True
    errors.record_for(CUDA0)
    assert fake_cuda["made"] == [CUDA0]


def test_a_device_record_reaches_the_host_after_each_call(fake_cuda, monkeypatch):
    """Where kernels cannot write pinned memory the record lives on the device and is copied to the host
    after each call (no wait); during capture it is not (a copy would become part of the graph)."""
    def mirrored(device):
        return torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), True

    monkeypatch.setattr(errors, "_cuda_record", mirrored)
    triton_embed.set_index_check("deferred")
    errors.before_call(CUDA0)
    errors.record_for(CUDA0).copy_(torch.tensor([errors.COMPLETE, 4, 3, 3]))
    fake_cuda["capturing"] = True
    errors.after_call(CUDA0)
    fake_cuda["capturing"] = False
    errors.before_call(CUDA0)  # the host copy is still empty
    errors.after_call(CUDA0)
    with pytest.raises(IndexError, match="stable_embedding got id 4"):
        errors.before_call(CUDA0)
