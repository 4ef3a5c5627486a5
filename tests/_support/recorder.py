"""A recorder of what an op costs: the tensors it makes (bytes, and the biggest), its Triton launches and its
host syncs. A ``TorchDispatchMode`` sees every aten op; for triton_embed's custom ops it runs the op's own
Python body under itself (``_dispatch.IMPLEMENTATIONS``), so their insides are seen too. The Triton
interpreter's own bookkeeping during a launch is not the op's and is not recorded. Host syncs are the
aten ops that wait for the device (``_local_scalar_dense``: ``item``/``tolist``/``bool``; ``nonzero``) plus
``Tensor.tolist``/``item``/``__bool__`` and ``torch.cuda.synchronize`` called from Python."""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import triton_embed
from triton_embed.runtime import dispatch as _dispatch

SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal", "aten::item"}


@dataclass
class Record:
    made: list[tuple[str, int, int]] = field(default_factory=list)  # (op, numel, bytes) of each new tensor
    ops: Counter = field(default_factory=Counter)
    syncs: list[str] = field(default_factory=list)
    launches: Counter = field(default_factory=Counter)

    @property
    def bytes_made(self) -> int:
        return sum(b for _, _, b in self.made)

    def tensors_of_at_least(self, numel: int) -> list[tuple[str, int, int]]:
        return [m for m in self.made if m[1] >= numel]


class _Mode(TorchDispatchMode):
    def __init__(self, record: Record) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.record.ops[name] += 1
        if name in SYNC_OPS:
            self.record.syncs.append(name)
        impl = _dispatch.IMPLEMENTATIONS.get(name)
        if impl is not None:
            with self:
                return impl(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs)) if t.untyped_storage().nbytes()}
        out = func(*args, **kwargs)
        for t in _tensors(out):
            storage = t.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in inputs:
                inputs.add(storage.data_ptr())
                self.record.made.append((name, t.numel(), storage.nbytes()))
        return out


def _tensors(tree):
    """The strided tensors in ``tree``; a sparse COO tensor's are its indices and values."""
    if isinstance(tree, torch.Tensor) and tree.is_sparse:
        yield tree._indices()
        yield tree._values()
    elif isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


@contextlib.contextmanager
def recording():
    """``with recording() as rec:`` … then ``rec.bytes_made``, ``rec.launches``, ``rec.syncs``."""
    record = Record()
    before = triton_embed.launch_counts.copy()
    patches = []

    def patch(owner, attr, wrapper):
        original = getattr(owner, attr)
        patches.append((owner, attr, original))
        setattr(owner, attr, wrapper(original))

    def counting(label):
        def wrapper(original):
            def call(*args, **kwargs):
                record.syncs.append(label)
                return original(*args, **kwargs)
            return call
        return wrapper

    for attr in ("tolist", "item", "__bool__"):
        patch(torch.Tensor, attr, counting(f"Tensor.{attr}"))
    patch(torch.cuda, "synchronize", counting("torch.cuda.synchronize"))
    try:
        from triton.runtime import interpreter

        def quiet(original):  # the interpreter's own tensor traffic during a launch is not the op's
            def call(self, *args, **kwargs):
                with _disable_current_modes():
                    saved = [(o, a, getattr(o, a)) for o, a, orig in patches]
                    for o, a, orig in patches:
                        setattr(o, a, orig)
                    try:
                        return original(self, *args, **kwargs)
                    finally:
                        for o, a, current in saved:
                            setattr(o, a, current)
            return call

        patch(interpreter.GridExecutor, "__call__", quiet)
    except ImportError:
        pass
    try:
        with _Mode(record):
            yield record
    finally:
        for owner, attr, original in reversed(patches):
            setattr(owner, attr, original)
        record.launches.update(triton_embed.launch_counts - before)
