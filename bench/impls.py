"""The implementations a case is measured on, each built as an ``nn.Module`` holding the case's weights.

- ``triton_embed``: our modules, atomic weight-gradient path;
- ``triton_embed[det]``: our modules, deterministic (sorted segment-sum) weight-gradient path;
- ``reference``: ``triton_embed.reference`` — the PyTorch ops bitsandbytes runs, op for op;
- ``bitsandbytes``: ``bitsandbytes.nn`` modules, when bitsandbytes imports;
- ``compile``: ``torch.compile`` of the reference module (static shapes: one graph per shape).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

import triton_embed
from triton_embed import reference

from .cases import Case, Inputs

OURS = ("triton_embed", "triton_embed[det]")
PEERS = ("reference", "bitsandbytes", "compile")


class ReferenceEmbedding(torch.nn.Embedding):
    """``bitsandbytes.nn.Embedding.forward`` through ``triton_embed.reference.embedding`` (one F.embedding)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return reference.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )


@dataclass(frozen=True)
class Impl:
    """One implementation: its name, whether it is ours, and how to build its module for a case."""

    name: str
    ours: bool
    deterministic: bool
    build: Callable[[Case, Inputs], torch.nn.Module]


def stable_available() -> bool:
    """Whether this triton_embed has a StableEmbedding (older releases had only the Embedding)."""
    return hasattr(triton_embed, "StableEmbedding")


def bitsandbytes_module() -> Any | None:
    """``bitsandbytes.nn`` when bitsandbytes imports, else ``None``."""
    try:
        return importlib.import_module("bitsandbytes.nn")
    except Exception:  # absent, or present without a usable backend: the peer is just missing
        return None


def _construct(cls: type, case: Case, inputs: Inputs, **kwargs: Any) -> torch.nn.Module:
    """``cls(V, D, _weight=copy of the case weight)`` on the case device, with the case's γ, β copied in.

    Modules are created from ``_weight`` (no init pass over V×D) and without device/dtype arguments, which
    bitsandbytes 0.50's StableEmbedding mis-forwards; ``.to(device)`` then moves its LayerNorm.
    """
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


def _ours(deterministic: bool) -> Callable[[Case, Inputs], torch.nn.Module]:
    def build(case: Case, inputs: Inputs) -> torch.nn.Module:
        cls = triton_embed.StableEmbedding if case.op == "stable" else triton_embed.Embedding
        module = _construct(cls, case, inputs)
        if deterministic:
            if not hasattr(module, "deterministic"):
                raise NotImplementedError(f"{cls.__name__} has no deterministic switch")
            module.deterministic = True
        return module

    return build


def _reference_class(op: str) -> type:
    if op == "stable":
        return reference.StableEmbedding
    return getattr(reference, "Embedding", ReferenceEmbedding)


def build_reference(case: Case, inputs: Inputs) -> torch.nn.Module:
    """The reference module (bitsandbytes' ops in PyTorch) holding the case's weights."""
    return _construct(_reference_class(case.op), case, inputs)


def _bitsandbytes(case: Case, inputs: Inputs) -> torch.nn.Module:
    bnb = bitsandbytes_module()
    cls = bnb.StableEmbedding if case.op == "stable" else bnb.Embedding
    return _construct(cls, case, inputs)


def _set_recompile_limit(limit: int = 256) -> None:
    """Static-shape compiles of many shapes must not hit dynamo's recompile limit (then it falls back to eager)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def _compiled(case: Case, inputs: Inputs) -> torch.nn.Module:
    _set_recompile_limit()
    return torch.compile(build_reference(case, inputs), dynamic=False)


def select(op: str, peers: list[str], deterministic: bool = True) -> tuple[list[Impl], list[str]]:
    """The implementations to measure for ``op`` and notes on the peers left out."""
    impls = [Impl("triton_embed", True, False, _ours(False))]
    if deterministic:
        impls.append(Impl("triton_embed[det]", True, True, _ours(True)))
    notes: list[str] = []
    builders = {"reference": build_reference, "bitsandbytes": _bitsandbytes, "compile": _compiled}
    for peer in peers:
        if peer == "bitsandbytes" and bitsandbytes_module() is None:
            notes.append(
                "bitsandbytes is not importable here: its column is empty (the reference path runs the same ops)"
            )
            continue
        impls.append(Impl(peer, False, False, builders[peer]))
    return impls, notes


def trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters that get gradients (weight, and γ, β for StableEmbedding)."""
    return [p for p in module.parameters() if p.requires_grad]


def gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients by parameter name (``_orig_mod.`` of compiled modules stripped)."""
    return {
        name.removeprefix("_orig_mod."): p.grad
        for name, p in module.named_parameters()
        if p.grad is not None
    }
