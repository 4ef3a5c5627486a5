"""Correctness of every implementation against a float64 oracle, with DESIGN.md §4's tolerance rule.

The embedding forward is a gather: it must equal the reference bit for bit. Everything else (weight
gradients, StableEmbedding's LayerNorm and its γ/β gradients) may differ from the float64 oracle by at
most 4× what PyTorch's own same-dtype reference path differs from it, plus a small absolute term.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cases import Case, Inputs

#: Absolute slack per dtype, relative to the largest magnitude of the compared tensor (at least 1).
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
RATIO = 4.0
LAYER_NORM_EPS = 1e-5


@dataclass
class Result:
    """What one implementation computed for a case: output and gradients by parameter name."""

    output: torch.Tensor
    grads: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Verdict:
    """Worst error of an implementation against the oracle, the reference path's, the tolerance, and ok."""

    max_abs_err: float
    reference_err: float
    tolerance: float
    ok: bool
    detail: str = ""


def oracle(case: Case, inputs: Inputs) -> Result:
    """The case in float64: gather (→ LayerNorm for ``stable``) and its gradients by autograd."""
    weight = inputs.weight.detach().double().requires_grad_(True)
    out = F.embedding(inputs.ids, weight)
    leaves = {"weight": weight}
    if case.op == "stable":
        gamma = inputs.norm_weight.detach().double().requires_grad_(True)
        beta = inputs.norm_bias.detach().double().requires_grad_(True)
        out = F.layer_norm(out, (case.dim,), gamma, beta, LAYER_NORM_EPS)
        leaves.update({"norm.weight": gamma, "norm.bias": beta})
    out.backward(inputs.grad_out.double())
    return Result(out.detach(), {name: leaf.grad for name, leaf in leaves.items()})


def _err(a: torch.Tensor, b: torch.Tensor, rows: int = 4096) -> float:
    """max |a − b| in float64, a block of rows at a time (V×D float64 temporaries would be large on a GPU)."""
    if a.is_sparse:
        a = a.to_dense()
    if not b.numel():
        return 0.0
    a2 = a.reshape(-1, a.shape[-1]) if a.dim() else a.reshape(1, 1)
    b2 = b.reshape(-1, b.shape[-1]) if b.dim() else b.reshape(1, 1)
    worst = 0.0
    for start in range(0, a2.shape[0], rows):
        block = (a2[start : start + rows].double() - b2[start : start + rows].double()).abs()
        worst = max(worst, float(block.max()) if block.numel() else 0.0)
    return worst


def compare(case: Case, got: Result, ref: Result, exact: Result, with_grads: bool = True) -> Verdict:
    """Judge ``got`` against the float64 oracle ``exact``, with the same-dtype reference ``ref`` as the yardstick."""
    worst, worst_ref, worst_tol, ok, details = 0.0, 0.0, 0.0, True, []
    names = ["output"] + (sorted(exact.grads) if with_grads else [])
    for name in names:
        mine = got.output if name == "output" else got.grads.get(name)
        theirs = ref.output if name == "output" else ref.grads.get(name)
        truth = exact.output if name == "output" else exact.grads[name]
        if mine is None:
            ok = False
            details.append(f"{name}: missing")
            continue
        if mine.shape != truth.shape:
            ok = False
            details.append(f"{name}: shape {tuple(mine.shape)} != {tuple(truth.shape)}")
            continue
        err = _err(mine, truth)
        ref_err = _err(theirs, truth) if theirs is not None else 0.0
        if name == "output" and case.op == "embedding":
            tol = 0.0  # a gather is exact
            err_vs_ref = _err(mine, theirs) if theirs is not None else err
            good = err_vs_ref == 0.0
        else:
            scale = max(1.0, float(truth.abs().max())) if truth.numel() else 1.0
            tol = RATIO * ref_err + ATOL.get(mine.dtype, 1e-5) * scale
            good = err <= tol
        if not good:
            ok = False
            details.append(f"{name}: err {err:.3g} > tol {tol:.3g}")
        worst, worst_ref, worst_tol = max(worst, err), max(worst_ref, ref_err), max(worst_tol, tol)
    return Verdict(worst, worst_ref, worst_tol, ok, "; ".join(details))
