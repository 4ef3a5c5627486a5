"""Out-of-range ids without a host sync: kernels mask them and note one in a small error record; the
``IndexError`` reaches the host later, without stalling the stream.

Modes (``set_index_check``, env ``TRITON_EMBED_CHECK_INDICES``):

- ``"deferred"`` (default, also ``True``/``1``): a call that meets an id outside ``[0, num_embeddings)``
  gives zero rows for it, writes nothing for it, leaves the table unchanged (``max_norm`` too) and returns.
  The ``IndexError`` is raised, before it does any work, by the next triton_embed call on that device made
  once the GPU has run the bad call's kernels (the kernels write the record to pinned host memory, which
  the host reads without a CUDA call), or by :func:`check_errors`, which waits for the device.
- ``"sync"``: the call itself raises (it waits for its kernels: one host sync per call; for debugging).
- ``"off"`` (also ``False``/``0``): nothing is raised; bad ids are still masked, never a wild pointer.

CPU tensors on the reference path keep PyTorch's own immediate ``IndexError``. While a CUDA graph is being
captured nothing waits or raises; replays of the graph record into the same place, for a later call or
:func:`check_errors` to report.
"""
from __future__ import annotations

import os
import threading

import torch

from triton_embed.kernels.errors import error_probe_kernel

MODES = ("deferred", "sync", "off")
#: Op codes the kernels write into the record (see kernels/gather.py, renorm.py, stable_embedding.py).
OP_NAMES = {1: "embedding", 2: "embedding (max_norm renorm)", 3: "stable_embedding"}

_ALIASES = {"1": "deferred", "true": "deferred", "on": "deferred", "0": "off", "false": "off", "": "off"}


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


_mode = {"value": _parse_mode(os.environ.get("TRITON_EMBED_CHECK_INDICES", "deferred"))}
_lock = threading.Lock()


class _Record:
    """One device's record: ``tensor`` is what kernels write (int64[4]: flag, bad id, rows, op); ``host``
    is a host view of at least the flag, readable without a CUDA call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mirrored = False  # True: tensor lives on the device and is copied into host after each call
        if device.type != "cuda":
            self.tensor = torch.zeros(4, dtype=torch.int64, device=device)
            self.host = self.tensor
        else:
            self.tensor, self.host, self.mirrored = _cuda_record(device)
        self.host_view = self.host.numpy()

    def flagged(self) -> bool:
        return bool(self.host_view[0])

    def take(self) -> tuple[int, int, int] | None:
        """(bad id, rows, op) of a flagged record, waiting for the device first; the record is cleared."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        values = self.tensor.tolist()
        if not values[0]:
            return None
        self.tensor.zero_()
        if self.mirrored:
            self.host.zero_()
        return values[1], values[2], values[3]

    def clear(self) -> None:
        self.tensor.zero_()
        if self.mirrored:
            self.host.zero_()


def _cuda_record(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Pinned host memory that the kernels write directly, if this machine lets Triton use it (checked once
    with a real bad-id launch); else a device tensor mirrored into pinned memory after each call."""
    host = torch.zeros(4, dtype=torch.int64, pin_memory=True)
    if not torch.cuda.is_current_stream_capturing():
        try:
            with torch.cuda.device(device):
                error_probe_kernel[(1,)](host)
                torch.cuda.synchronize(device)
            if host.tolist() == [1, 1, 1, 1]:
                host.zero_()
                return host, host, False
        except (ValueError, RuntimeError):  # the launcher refused a host pointer: use device memory
            pass
    return torch.zeros(4, dtype=torch.int64, device=device), torch.zeros(4, dtype=torch.int64, pin_memory=True), True


_records: dict[torch.device, _Record] = {}


def _normalize(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def record_for(device: torch.device) -> torch.Tensor:
    """The error record the kernels of a call on ``device`` write into."""
    device = _normalize(device)
    record = _records.get(device)
    if record is None:
        with _lock:
            record = _records.get(device)
            if record is None:
                record = _records[device] = _Record(device)
    return record.tensor


def _raise(found: tuple[int, int, int], earlier: bool) -> None:
    bad, rows, op = found
    when = "an earlier call" if earlier else "this call"
    raise IndexError(
        f"index out of range in self: {OP_NAMES.get(op, 'embedding')} got id {bad}, outside [0, {rows}) "
        f"(found on the device by {when}; out-of-range ids read zero rows and wrote nothing)"
    )


def before_call(device: torch.device) -> None:
    """Raise the IndexError an earlier call on ``device`` recorded, if the host can already see it."""
    if _mode["value"] == "off":
        return
    record = _records.get(_normalize(device))
    if record is not None and record.flagged():
        found = record.take()
        if found is not None:
            _raise(found, earlier=True)


def after_call(device: torch.device) -> None:
    """After a call's launches: mirror a device-memory record to the host (no wait), and in ``"sync"``
    mode wait and raise at once. Nothing while a CUDA graph is being captured."""
    mode = _mode["value"]
    if mode == "off":
        return
    device = _normalize(device)
    record = _records.get(device)
    if record is None or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return
    if record.mirrored:
        record.host.copy_(record.tensor, non_blocking=True)
    if mode == "sync":
        found = record.take()
        if found is not None:
            _raise(found, earlier=False)


def check_errors() -> None:
    """Wait for every device triton_embed ran on and raise the ``IndexError`` of any out-of-range id its
    kernels recorded since the last report (in the ``"deferred"`` and ``"sync"`` modes).

    >>> import triton_embed
    >>> triton_embed.check_errors()  # nothing recorded: returns quietly
    """
    if _mode["value"] == "off":
        return
    for record in list(_records.values()):
        found = record.take()
        if found is not None:
            _raise(found, earlier=True)


def set_index_check(mode: bool | str) -> None:
    """How out-of-range ids are reported: ``"deferred"`` (default; ``True``), ``"sync"`` or ``"off"``
    (``False``). See this module's docstring for exactly when each raises. Switching clears any record.

    >>> import triton_embed
    >>> triton_embed.set_index_check("sync"); triton_embed.set_index_check(True)
    """
    _mode["value"] = _parse_mode(mode)
    for record in list(_records.values()):
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
