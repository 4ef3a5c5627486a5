"""Correctness against a float64 oracle, with the tolerance rule (README, Tests).

A gather (the embedding forward) must equal the reference bit for bit. Everything else (weight gradients,
LayerNorm outputs and their gradients, renormed rows) may differ from the float64 oracle by at most 4× what
PyTorch's own same-dtype reference path differs from it, plus a small absolute term relative to the largest
magnitude of the compared tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cases import LAYER_NORM_EPS, MAX_NORM, Case, Inputs

#: Absolute slack per dtype, relative to the largest magnitude of the compared tensor (at least 1).
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
RATIO = 4.0


@dataclass
class Result:
    """What one implementation computed for a case: output and gradients (or the renormed table) by name."""

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
    """The case in float64: gather (→ LayerNorm for ``stable``; renorm first for ``renorm``), or the LayerNorm
    of the input for ``layer_norm``, and its gradients by autograd."""
    if case.op == "layer_norm":
        x = inputs.x.detach().double().requires_grad_(True)
        gamma = inputs.norm_weight.detach().double().requires_grad_(True)
        beta = inputs.norm_bias.detach().double().requires_grad_(True)
        out = F.layer_norm(x, (case.dim,), gamma, beta, LAYER_NORM_EPS)
        out.backward(inputs.grad_out.double())
        return Result(out.detach(), {"input": x.grad, "weight": gamma.grad, "bias": beta.grad})
    if case.op == "renorm":
        table = inputs.weight.detach().double().clone()
        with torch.no_grad():
            out = F.embedding(inputs.ids, table, max_norm=MAX_NORM)
        return Result(out, {"table": table})
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


def max_error(a: torch.Tensor, b: torch.Tensor, rows: int = 4096) -> float:
    """max |a − b| in float64, a block of rows at a time (V×D float64 temporaries would be large on a GPU).

    >>> max_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    0.5
    """
    if a.is_sparse:  # summed in float64: the duplicates of an uncoalesced gradient add up exactly
        a = a.to(torch.float64).to_dense()
    if b.is_sparse:
        b = b.to(torch.float64).to_dense()
    if not b.numel():
        return 0.0
    a2 = a.reshape(-1, a.shape[-1]) if a.dim() else a.reshape(1, 1)
    b2 = b.reshape(-1, b.shape[-1]) if b.dim() else b.reshape(1, 1)
    worst = 0.0
    for start in range(0, a2.shape[0], rows):
        block = (a2[start : start + rows].detach().double() - b2[start : start + rows].detach().double()).abs()
        if block.numel():
            worst = max(worst, float(block.max()))
    return worst


_err = max_error


def judge(mine: torch.Tensor, ref: torch.Tensor | None, truth: torch.Tensor, exact: bool = False
          ) -> tuple[float, float, float, bool]:
    """(error against the oracle, the reference's error, tolerance, ok) of one tensor. ``exact``: must equal
    the same-dtype reference bit for bit (a gather).

    >>> t = torch.tensor([1.0, 2.0])
    >>> judge(t, t, t.double())
    (0.0, 0.0, 2e-05, True)
    """
    err = max_error(mine, truth)
    ref_err = max_error(ref, truth) if ref is not None else 0.0
    if exact:
        vs_ref = max_error(mine, ref) if ref is not None else err
        return err, ref_err, 0.0, vs_ref == 0.0 and not _has_nan(mine)
    dense = (truth.to(torch.float64).to_dense() if truth.is_sparse else truth).detach()
    scale = max(1.0, float(dense.abs().max())) if dense.numel() else 1.0
    tol = RATIO * ref_err + ATOL.get(mine.dtype, 1e-5) * scale
    return err, ref_err, tol, err <= tol and not _has_nan(mine)


def _has_nan(t: torch.Tensor) -> bool:
    values = t.coalesce().values() if t.is_sparse else t
    return bool(values.is_floating_point() and torch.isnan(values).any())


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
        gather = name == "output" and case.op == "embedding"
        err, ref_err, tol, good = judge(mine, theirs, truth, exact=gather)
        if not good:
            ok = False
            details.append(f"{name}: {'differs from the reference gather' if gather else f'err {err:.3g} > tol {tol:.3g}'}")
        worst, worst_ref, worst_tol = max(worst, err), max(worst_ref, ref_err), max(worst_tol, tol)
    return Verdict(worst, worst_ref, worst_tol, ok, "; ".join(details))
