"""The implementations a case is measured on, each built as an ``nn.Module`` holding the case's weights.

- ``triton_embed``: our modules (``functional.layer_norm`` for the layer_norm op);
- ``reference``: PyTorch eager: ``triton_embed.reference`` (the PyTorch ops bitsandbytes runs, op for op),
  ``torch.nn.functional.layer_norm`` for layer_norm;
- ``bitsandbytes``: ``bitsandbytes.nn`` modules, when bitsandbytes imports (no LayerNorm of its own);
- ``compile``: ``torch.compile`` of the reference module (static shapes: one graph per shape);
- ``compile-max``: the same with ``mode="max-autotune-no-cudagraphs"`` (Inductor tunes its kernels too);
- ``liger``: Liger-Kernel's embedding (``liger_kernel.ops.experimental.embedding``) and LayerNorm, when
  ``liger-kernel`` imports.

Optional peers are imported inside functions only: the package works without them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

import triton_embed
from triton_embed import reference

from .cases import LAYER_NORM_EPS, MAX_NORM, Case, Inputs

OURS = "triton_embed"
PEERS = ("reference", "bitsandbytes", "compile", "compile-max", "liger")
#: The ops each peer runs (bitsandbytes has no LayerNorm; Liger no StableEmbedding and no max_norm).
APPLIES = {
    "reference": ("embedding", "stable", "layer_norm", "renorm"),
    "bitsandbytes": ("embedding", "stable", "renorm"),
    "compile": ("embedding", "stable", "layer_norm", "renorm"),
    "compile-max": ("embedding", "stable", "layer_norm", "renorm"),
    "liger": ("embedding", "layer_norm"),
}
COMPILE_PEERS = ("compile", "compile-max")
COMPILE_MODES = {"compile": None, "compile-max": "max-autotune-no-cudagraphs"}


def speedup_field(peer: str) -> str:
    """The Row field of the speed-up over ``peer``.

    >>> speedup_field("compile-max")
    'speedup_vs_compile_max'
    """
    return "speedup_vs_" + peer.replace("-", "_")


class ReferenceEmbedding(torch.nn.Embedding):
    """``bitsandbytes.nn.Embedding.forward`` through ``triton_embed.reference.embedding`` (one F.embedding)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return reference.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )


class LayerNormModule(torch.nn.Module):
    """A LayerNorm over the last dim with γ, β in the input's dtype, computed by ``kind``: ``"triton_embed"``
    (``functional.layer_norm``), ``"reference"`` (``F.layer_norm``) or ``"liger"``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, kind: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.bias = torch.nn.Parameter(bias.detach().clone())
        self.kind = kind
        self._liger = liger_functions()[1] if kind == "liger" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        if self.kind == "triton_embed":
            return triton_embed.functional.layer_norm(x, (dim,), self.weight, self.bias, LAYER_NORM_EPS)
        if self.kind == "liger":
            return self._liger.apply(x, self.weight, self.bias, LAYER_NORM_EPS)
        return F.layer_norm(x, (dim,), self.weight, self.bias, LAYER_NORM_EPS)


class LigerEmbedding(torch.nn.Embedding):
    """Liger-Kernel's embedding function on this module's weight (it has no padding or max_norm)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return liger_functions()[0].apply(self.weight, input)


@dataclass(frozen=True)
class Impl:
    """One implementation: its name, whether it is ours, whether its kernels are Triton kernels (interpreted,
    so checked and not timed, without a GPU), and how to build its module for a case."""

    name: str
    ours: bool
    triton: bool
    build: Callable[[Case, Inputs], torch.nn.Module]


def bitsandbytes_module() -> Any | None:
    """``bitsandbytes.nn`` when bitsandbytes imports, else ``None``."""
    try:
        return importlib.import_module("bitsandbytes.nn")
    except Exception:  # noqa: BLE001 - absent, or present without a usable backend: the peer is just missing
        return None


def liger_functions() -> tuple[Any | None, Any | None]:
    """(Liger's embedding autograd function, its LayerNorm autograd function), each ``None`` if absent."""
    found: list[Any | None] = []
    for module_names, attr in ((("liger_kernel.ops.experimental.embedding",), "LigerEmbeddingFunction"),
                               (("liger_kernel.ops.layer_norm", "liger_kernel.ops"), "LigerLayerNormFunction")):
        fn = None
        for name in module_names:
            try:
                fn = getattr(importlib.import_module(name), attr, None)
            except Exception:  # noqa: BLE001 - absent or broken: the peer is missing
                fn = None
            if fn is not None:
                break
        found.append(fn)
    return found[0], found[1]


def _construct(cls: type, case: Case, inputs: Inputs, **kwargs: Any) -> torch.nn.Module:
    """``cls(V, D, _weight=copy of the case weight)`` on the case device, with the case's γ, β copied in.

    Modules are created from ``_weight`` (no init pass over V×D) and without device/dtype arguments, which
    bitsandbytes 0.50's StableEmbedding mis-forwards; ``.to(device)`` then moves its LayerNorm.
    """
    if case.op == "renorm":
        kwargs["max_norm"] = MAX_NORM
    weight = inputs.weight.detach().clone()
    try:
        module = cls(case.vocab, case.dim, _weight=weight, **kwargs)
    except TypeError:
        module = cls(case.vocab, case.dim, device=weight.device, dtype=weight.dtype, **kwargs)
        with torch.no_grad():
            module.weight.copy_(weight)
    module = module.to(weight.device)
    if module.weight.dtype != weight.dtype:
        raise TypeError(f"{cls.__name__} holds its weight in {module.weight.dtype}, expected {weight.dtype}")
    norm = getattr(module, "norm", None)
    if norm is not None:
        with torch.no_grad():
            norm.weight.copy_(inputs.norm_weight)
            norm.bias.copy_(inputs.norm_bias)
    return module


def _ours(case: Case, inputs: Inputs) -> torch.nn.Module:
    if case.op == "layer_norm":
        return LayerNormModule(inputs.norm_weight, inputs.norm_bias, "triton_embed")
    cls = triton_embed.StableEmbedding if case.op == "stable" else triton_embed.Embedding
    return _construct(cls, case, inputs)


def build_reference(case: Case, inputs: Inputs) -> torch.nn.Module:
    """The reference module (PyTorch eager: bitsandbytes' ops, or ``F.layer_norm``) holding the case's data."""
    if case.op == "layer_norm":
        return LayerNormModule(inputs.norm_weight, inputs.norm_bias, "reference")
    if case.op == "stable":
        return _construct(reference.StableEmbedding, case, inputs)
    return _construct(getattr(reference, "Embedding", ReferenceEmbedding), case, inputs)


def _bitsandbytes(case: Case, inputs: Inputs) -> torch.nn.Module:
    bnb = bitsandbytes_module()
    cls = bnb.StableEmbedding if case.op == "stable" else bnb.Embedding
    return _construct(cls, case, inputs)


def _liger(case: Case, inputs: Inputs) -> torch.nn.Module:
    if case.op == "layer_norm":
        return LayerNormModule(inputs.norm_weight, inputs.norm_bias, "liger")
    return _construct(LigerEmbedding, case, inputs)


def _set_recompile_limit(limit: int = 256) -> None:
    """Static-shape compiles of many shapes must not hit dynamo's recompile limit (then it falls back to eager)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def _keep_saved_buffers() -> None:
    """The backward pass is timed by replaying one graph (``retain_graph=True``), which a compiled backward
    refuses when it donates its saved buffers to its outputs: compile the peers without donation (a memory
    reuse; every compiled pass is timed the same way)."""
    try:
        import torch._functorch.config as config
    except ImportError:  # a torch without AOTAutograd's config: nothing donates
        return
    if hasattr(config, "donated_buffer"):
        config.donated_buffer = False


def _compiled(mode: str | None) -> Callable[[Case, Inputs], torch.nn.Module]:
    def build(case: Case, inputs: Inputs) -> torch.nn.Module:
        _set_recompile_limit()
        _keep_saved_buffers()
        module = build_reference(case, inputs)
        return torch.compile(module, dynamic=False) if mode is None else torch.compile(module, dynamic=False, mode=mode)

    return build


def _missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here (None when it can)."""
    if peer == "bitsandbytes" and bitsandbytes_module() is None:
        return ("bitsandbytes is not importable here: its column is empty (the reference path runs the same "
                "PyTorch ops, op for op)")
    if peer == "liger" and liger_functions() == (None, None):
        return "liger-kernel is not importable here (pip install liger-kernel): no liger column"
    return None


def select(op: str, peers: list[str]) -> tuple[list[Impl], list[str]]:
    """The implementations to measure for ``op`` and notes on the peers left out."""
    impls = [Impl(OURS, True, True, _ours)]
    notes: list[str] = []
    builders = {"reference": build_reference, "bitsandbytes": _bitsandbytes, "liger": _liger,
                **{peer: _compiled(mode) for peer, mode in COMPILE_MODES.items()}}
    for peer in peers:
        why = _missing(peer)
        if why:
            notes.append(why)
            continue
        if op not in APPLIES[peer]:
            notes.append(f"{peer} has no {op} op: not measured there")
            continue
        if peer == "liger" and liger_functions()[0 if op == "embedding" else 1] is None:
            notes.append(f"liger-kernel here lacks its {op} function: not measured there")
            continue
        impls.append(Impl(peer, False, peer == "liger", builders[peer]))
    return impls, notes


def trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters that get gradients (weight, and γ, β for StableEmbedding and LayerNorm)."""
    return [p for p in module.parameters() if p.requires_grad]


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients by parameter name (``_orig_mod.`` of compiled modules stripped)."""
    return {
        name.removeprefix("_orig_mod."): p.grad
        for name, p in module.named_parameters()
        if p.grad is not None
    }
