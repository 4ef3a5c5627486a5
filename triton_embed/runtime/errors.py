"""Out-of-range ids without a host sync: kernels mask them and note one in a small error record; the
``IndexError`` reaches the host later, without stalling the stream.

Modes (``set_index_check``, env ``TRITON_EMBED_CHECK_INDICES``; unset or empty means the default):

- ``"deferred"`` (default, also ``True``/``1``): a call that meets an id outside ``[0, num_embeddings)``
  gives zero rows for it, writes nothing for it, leaves the table unchanged (``max_norm`` too) and returns.
  The ``IndexError`` is raised, before it does any work, by the next triton_embed op on that device (any
  op that runs kernels: lookups, their backwards, LayerNorm, renorm, quantized tables) made once the GPU has
  run the bad call's kernels (the kernels write the record to pinned host memory, which the host reads
  without a CUDA call), or by :func:`check_errors`, which waits for the device. The bad call's own backward
  is such an op: where the record is visible by then it raises before producing any gradient.
- ``"sync"``: the call itself raises (it waits for its kernels: one host sync per call; for debugging).
- ``"off"`` (also ``False``/``0``): nothing is raised; bad ids are still masked, never a wild pointer. A
  backward treats them as the forward did (rows that read nothing): no gradient row and no sparse entry
  names a row that no valid token of the call named.

One report is one consistent record: the first kernel to meet a bad id claims the record (an atomic
compare-and-swap) and the host reads it only once that writer has marked it complete; later bad ids wait
until the host has reported and cleared it (``kernels/errors.py``).

CPU tensors on the reference path keep PyTorch's own immediate ``IndexError``. While a CUDA graph is being
captured nothing waits or raises (a report already visible stays for the first op after the capture or
for :func:`check_errors`); replays of the graph record into the same place, for a later op or
:func:`check_errors` to report. A device's record is made by the first triton_embed op there, which must
run outside capture (a warm-up step, as CUDA graphs need anyway); an op that would make it during capture
raises a ``RuntimeError`` saying so.
"""
from __future__ import annotations

import os
import threading

import torch

from triton_embed.kernels import errors as kernel_errors
from triton_embed.kernels.errors import error_probe_kernel

MODES = ("deferred", "sync", "off")
#: Op codes the kernels write into the record (see kernels/gather.py, renorm.py, stable_embedding.py).
OP_NAMES = {1: "embedding", 2: "embedding (max_norm renorm)", 3: "stable_embedding"}
#: The record's states (kernels/errors.py): only COMPLETE is a report.
EMPTY, CLAIMED, COMPLETE = (kernel_errors.EMPTY.value, kernel_errors.CLAIMED.value, kernel_errors.COMPLETE.value)
_PROBE = [COMPLETE, -1, 1, kernel_errors.OP_PROBE.value]

_ALIASES = {"1": "deferred", "true": "deferred", "on": "deferred", "0": "off", "false": "off"}
_ENV = "TRITON_EMBED_CHECK_INDICES"


def _parse_mode(value: object) -> str:
    if value is True:
        return "deferred"
    if value is False or value is None:
        return "off"
    text = str(value).strip().lower()
    text = _ALIASES.get(text, text)
    if text not in MODES:
        raise ValueError(f"index check mode must be one of {MODES} (or True/False), got {value!r}")
    return text


def _mode_from_env() -> str:
    """The env variable's mode; unset or empty (``VAR=``) means the default, as for any setting."""
    value = os.environ.get(_ENV, "")
    return _parse_mode(value) if value.strip() else "deferred"


_mode = {"value": _mode_from_env()}
_lock = threading.Lock()


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    if device.type != "cuda":
        return False
    if device.index is None or device.index == torch.cuda.current_device():
        return torch.cuda.is_current_stream_capturing()
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


class _Record:
    """One device's record: ``tensor`` is what kernels write (int64[4]: state, bad id, rows, op); ``host``
    is a host view of at least the state, readable without a CUDA call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mirrored = False  # True: tensor lives on the device and is copied into host after each call
        if device.type != "cuda":
            self.tensor = torch.zeros(4, dtype=torch.int64, device=device)
            self.host = self.tensor
        else:
            self.tensor, self.host, self.mirrored = _cuda_record(device)
        self.host_view = self.host.numpy()

    def take(self) -> tuple[int, int, int] | None:
        """(bad id, rows, op) of a report, waiting for the device first; the record is cleared."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        state, bad, rows, op = self.tensor.tolist()
        if state == EMPTY:
            return None
        self._zero()
        # Once the device is idle every claim is complete; anything else is no report.
        return (bad, rows, op) if state == COMPLETE else None

    def clear(self) -> None:
        """Drop any report, once the device has finished writing (outside capture only)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._zero()

    def _zero(self) -> None:
        self.tensor.zero_()
        if self.mirrored:
            self.host.zero_()


def _cuda_record(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Pinned host memory that the kernels write directly, if this machine lets Triton use it (checked once
    with a real report, atomics included); else a device tensor mirrored into pinned memory after each call.
    Never called during capture (see :func:`_create`)."""
    host = torch.zeros(4, dtype=torch.int64, pin_memory=True)
    try:
        with torch.cuda.device(device):
            error_probe_kernel[(1,)](host)
            torch.cuda.synchronize(device)
        if host.tolist() == _PROBE:
            host.zero_()
            return host, host, False
    except (ValueError, RuntimeError):  # the launcher refused a host pointer: use device memory
        pass
    host.zero_()
    record = torch.zeros(4, dtype=torch.int64, device=device)
    torch.cuda.synchronize(device)  # the record is zero before any kernel can write it
    return record, host, True


_records: dict[torch.device, _Record] = {}


def _normalize(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _create(device: torch.device) -> _Record:
    """The record of ``device``, made on first use; refused during CUDA-graph capture, where its allocation
    and zeroing would become part of the graph instead of happening now."""
    device = _normalize(device)
    with _lock:
        record = _records.get(device)
        if record is None:
            if _capturing(device):
                raise RuntimeError(
                    f"triton_embed's first op on {device} is running during CUDA-graph capture: its error record "
                    "(pinned host memory) must be made outside capture. Run one step eagerly on this device "
                    "before capturing (the warm-up CUDA graphs need anyway)"
                )
            record = _records[device] = _Record(device)
    return record


def record_for(device: torch.device) -> torch.Tensor:
    """The error record the kernels of a call on ``device`` write into."""
    record = _records.get(device) or _create(device)
    return record.tensor


def _raise(found: tuple[int, int, int], earlier: bool) -> None:
    bad, rows, op = found
    when = "an earlier call" if earlier else "this call"
    raise IndexError(
        f"index out of range in self: {OP_NAMES.get(op, 'embedding')} got id {bad}, outside [0, {rows}) "
        f"(found on the device by {when}; out-of-range ids read zero rows and wrote nothing)"
    )


def before_call(device: torch.device) -> None:
    """Raise the IndexError an earlier call on ``device`` recorded, if the host can already see it. Every op
    that runs kernels calls it first; the first call on a device makes the device's record. Per call: one
    dict lookup and one read of host memory."""
    record = _records.get(device)
    if record is None:
        record = _create(device)
    if record.host_view[0] == COMPLETE and _mode["value"] != "off":
        _report_earlier(record)


def _report_earlier(record: _Record) -> None:
    if _capturing(record.device):  # waiting would invalidate the capture: the report stays for later
        return
    found = record.take()
    if found is not None:
        _raise(found, earlier=True)


def reported(device: torch.device) -> bool:
    """Whether the host already sees a report on ``device`` (no CUDA call, no wait) that it may act on now:
    always False during capture, where acting on it (a data-dependent size) would wait."""
    record = _records.get(device)
    return record is not None and record.host_view[0] == COMPLETE and not _capturing(record.device)


def forget(device: torch.device) -> None:
    """With the check off: drop ``device``'s report (waiting for the device), for a path that has just
    handled bad ids exactly. In the other modes the report stays, to be raised."""
    record = _records.get(device)
    if _mode["value"] == "off" and record is not None and not _capturing(record.device):
        record.clear()


def after_call(device: torch.device) -> None:
    """After a call's launches: mirror a device-memory record to the host (no wait), and in ``"sync"``
    mode wait and raise at once. Nothing while a CUDA graph is being captured."""
    mode = _mode["value"]
    if mode == "off":
        return
    record = _records.get(device)
    if record is None or not (record.mirrored or mode == "sync") or _capturing(record.device):
        return
    if record.mirrored:
        record.host.copy_(record.tensor, non_blocking=True)
    if mode == "sync":
        found = record.take()
        if found is not None:
            _raise(found, earlier=False)


def check_errors() -> None:
    """Wait for every device triton_embed ran on and raise the ``IndexError`` of any out-of-range id its
    kernels recorded since the last report (in the ``"deferred"`` and ``"sync"`` modes). It waits, so it
    refuses to run during CUDA-graph capture (call it after the capture or after a replay).

    >>> import triton_embed
    >>> triton_embed.check_errors()  # nothing recorded: returns quietly
    """
    if _mode["value"] == "off":
        return
    for record in list(_records.values()):
        if _capturing(record.device):
            raise RuntimeError("check_errors() waits for the device: call it outside CUDA-graph capture")
        found = record.take()
        if found is not None:
            _raise(found, earlier=True)


def set_index_check(mode: bool | str) -> None:
    """How out-of-range ids are reported: ``"deferred"`` (default; ``True``), ``"sync"`` or ``"off"``
    (``False``). See this module's docstring for exactly when each raises. Switching to another mode drops
    any pending report (waiting for the devices first); setting the current mode again (a save and restore)
    changes nothing. A switch is refused during CUDA-graph capture.

    >>> import triton_embed
    >>> saved = triton_embed.index_check_mode()
    >>> triton_embed.set_index_check("sync"); triton_embed.set_index_check(saved)
    """
    new = _parse_mode(mode)
    if new == _mode["value"]:
        return
    records = list(_records.values())
    if any(_capturing(record.device) for record in records):
        raise RuntimeError("set_index_check waits for the device to drop pending reports: switch modes outside "
                           "CUDA-graph capture")
    _mode["value"] = new
    for record in records:
        record.clear()


def index_check_mode() -> str:
    """The current mode: ``"deferred"``, ``"sync"`` or ``"off"``.

    >>> import triton_embed
    >>> triton_embed.index_check_mode() in ("deferred", "sync", "off")
    True
    """
    return _mode["value"]


def index_check_enabled() -> bool:
    """Whether out-of-range ids are reported at all (mode other than ``"off"``)."""
    return _mode["value"] != "off"
