"""Which implementation runs an op: compiled Triton kernels, the Triton interpreter, or the reference path."""
from __future__ import annotations

import contextlib
import inspect
import os
from collections import Counter
from typing import Callable, Iterator

import torch
from torch.autograd import forward_ad
from torch.nn.modules import module as nn_module

BACKENDS = ("auto", "triton", "reference")

_state = {"backend": os.environ.get("TRITON_EMBED_BACKEND", "").strip() or "auto"}  # empty means unset
if _state["backend"] not in BACKENDS:
    raise ValueError(f"TRITON_EMBED_BACKEND must be one of {BACKENDS}, got {_state['backend']!r}")

#: How many times each Triton kernel was launched in this process (by kernel name).
launch_counts: Counter[str] = Counter()

#: The Python body of every custom op, by qualified name (``triton_embed::embedding``): what a test's
#: dispatch recorder runs to see the aten ops inside an op that it would otherwise see as one call.
IMPLEMENTATIONS: dict[str, Callable] = {}
#: The positions of the arguments each custom op writes in place (``mutates_args``), by qualified name.
_MUTATED: dict[str, tuple[int, ...]] = {}


def custom_op(name: str, mutates_args: tuple[str, ...] = ()) -> Callable[[Callable], torch.library.CustomOpDef]:
    """``torch.library.custom_op``, keeping the body in :data:`IMPLEMENTATIONS` too."""
    def register(fn: Callable) -> torch.library.CustomOpDef:
        IMPLEMENTATIONS[name] = fn
        params = list(inspect.signature(fn).parameters)
        _MUTATED[name] = tuple(params.index(arg) for arg in mutates_args)
        return torch.library.custom_op(name, mutates_args=mutates_args)(fn)

    return register


def run_op(name: str, *args):
    """Run the custom op ``triton_embed::<name>`` on ``args`` when no gradient can flow through it; in eager
    mode (:func:`eager`) its Python body directly, without the dispatcher's schema, fake and autograd layers.
    Where a gradient can flow (``create_graph=True``, or grad mode on with a leaf that needs one), the op
    itself, so that its registered autograd formula (or its refusal) applies.

    >>> import torch, triton_embed
    >>> grad, ids = torch.ones(2, 3), torch.tensor([1, 1])
    >>> run_op("embedding_dense_backward", grad, ids, 4, -1, False, False)[1].tolist()
    [2.0, 2.0, 2.0]
    """
    if not (torch.is_grad_enabled() and _needs_grad(args)) and eager(*args):
        qualified = f"triton_embed::{name}"
        result = IMPLEMENTATIONS[qualified](*args)
        for position in _MUTATED[qualified]:  # as the op would: autograd must see the in-place write
            torch.autograd.graph.increment_version(args[position])
        return result
    return getattr(torch.ops.triton_embed, name)(*args)


def _needs_grad(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


#: Tensor types the eager path takes as they are; any other (DTensor, fake and functional tensors, user
#: subclasses) goes through the custom ops, whose sharding rules, fakes and dispatch such tensors need.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
#: Dispatch modes that trace or fake the ops (torch.compile's, make_fx's, torch.export's): they must see the
#: custom op, not the kernels' launches. Other (user) modes see the aten ops inside instead.
_TRACING_MODES = tuple(
    getattr(torch._C._TorchDispatchModeKey, key) for key in ("FAKE", "PROXY", "FUNCTIONAL")
    if hasattr(torch._C._TorchDispatchModeKey, key)
)


def eager(*args) -> bool:
    """Whether a call on ``args`` may skip the custom ops' machinery (the dispatcher, schema checks, fake and
    autograd wrappers: tens of µs a call) and run the launchers or the reference ops directly: not under
    ``torch.compile`` or a tracing mode, no forward-mode AD or ``torch.func`` transform (nor a tensor one
    left wrapped), plain tensors only.

    >>> import torch
    >>> eager(torch.ones(2), 3), eager(torch.nn.Parameter(torch.ones(2)))
    (True, True)
    """
    if torch.compiler.is_compiling() or forward_ad._current_level >= 0:
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    for arg in args:
        if isinstance(arg, torch.Tensor) and (type(arg) not in _PLAIN_TENSORS or _functorch_wrapped(arg)):
            return False
    if torch._C._len_torch_dispatch_stack():
        return all(torch._C._get_dispatch_mode(key) is None for key in _TRACING_MODES)
    return True


_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def interpreter_enabled() -> bool:
    """True when Triton kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "", "false", "False")


def set_backend(name: str) -> None:
    """Choose the implementation for every op in this process.

    ``"auto"`` (default): CUDA tensors run the Triton kernels; CPU tensors run the reference path, or the
    Triton kernels under the interpreter when ``TRITON_INTERPRET=1``. ``"triton"``: always the kernels
    (CPU tensors need the interpreter). ``"reference"``: always the PyTorch reference path.

    >>> import triton_embed
    >>> triton_embed.set_backend("reference"); triton_embed.set_backend("auto")
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _state["backend"] = name


def get_backend() -> str:
    """The backend set by :func:`set_backend` (or ``TRITON_EMBED_BACKEND``).

    >>> import triton_embed
    >>> triton_embed.get_backend() in ("auto", "triton", "reference")
    True
    """
    return _state["backend"]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`.

    >>> import torch, triton_embed
    >>> with triton_embed.use_backend("reference"):
    ...     out = triton_embed.functional.embedding(torch.tensor([1]), torch.ones(3, 2))
    """
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


#: Element types the kernels take. Tensors of any other dtype (complex, float8, uint16/32/64) run the
#: reference path, i.e. PyTorch's own ops, on whatever device they are on.
KERNEL_DTYPES = frozenset({
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool,
})


def use_triton(tensor: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether an op on ``tensor`` (and the optional ``others``, e.g. LayerNorm parameters) runs the Triton
    kernels under the current backend."""
    backend = _state["backend"]
    if backend == "reference" or tensor.dtype not in KERNEL_DTYPES:
        return False
    for other in others:
        if other is not None and other.dtype not in KERNEL_DTYPES:
            return False
    if tensor.is_cuda:
        return True
    if interpreter_enabled():
        return True
    if backend == "triton":
        raise RuntimeError(
            "triton_embed backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before import "
            f"to run the kernels on the CPU; got a tensor on {tensor.device}"
        )
    return False


_NO_GUARD = contextlib.nullcontext()


def device_guard(tensor: torch.Tensor):
    """Make ``tensor``'s CUDA device current for a launch (Triton launches on the current device); nothing
    to do (and nothing to pay) when it already is."""
    if tensor.is_cuda and tensor.get_device() != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return _NO_GUARD


def record_launch(name: str) -> None:
    launch_counts[name] += 1


_poison = {"enabled": os.environ.get("TRITON_EMBED_POISON", "0") not in ("0", "", "false", "False")}


def set_poison(enabled: bool) -> None:
    """Testing aid: fill every buffer a kernel must write with NaN (or -1 for integers) before the launch,
    so a kernel that skips part of its output cannot pass for correct. ``TRITON_EMBED_POISON=1`` sets it."""
    _poison["enabled"] = bool(enabled)


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised buffer a kernel will fully write (poisoned when :func:`set_poison` is on)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison["enabled"]:
        out.fill_(float("nan") if dtype.is_floating_point else -1)
    return out


def fusable_layer_norm(norm: torch.nn.Module, dim: int) -> bool:
    """Whether a StableEmbedding's ``norm`` can be fused into its kernel: exactly a ``torch.nn.LayerNorm``
    over the last ``dim`` features, with no forward or backward hooks of its own or global ones (a fused norm
    is never called, so its hooks would not fire). Otherwise the module calls ``norm`` itself, as
    bitsandbytes does."""
    if type(norm) is not torch.nn.LayerNorm or tuple(norm.normalized_shape) != (dim,):
        return False
    # Asked on every call: a chain of truth tests, no tuple built.
    return not (norm._forward_hooks or norm._forward_pre_hooks or norm._backward_hooks or norm._backward_pre_hooks
                or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks)
