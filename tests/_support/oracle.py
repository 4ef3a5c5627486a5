"""Comparisons against the reference path and float64 oracles, with the tolerance rule (README, Tests)."""
from __future__ import annotations

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
#: The small absolute term of check_against_truth, relative to the values' scale, per dtype.
SLACK = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def assert_exact(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Bitwise equality (gathers and sparse gradient values): same dtype, shape and bits."""
    assert ours.dtype == expected.dtype, (ours.dtype, expected.dtype)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    assert torch.equal(ours, expected), f"max abs diff {(ours.double() - expected.double()).abs().max()}"


def assert_close_to_oracle(
    ours: torch.Tensor,
    oracle64: torch.Tensor,
    torch_same_dtype: torch.Tensor | None = None,
    *,
    factor: float = 4.0,
    rtol32: float = 1e-5,
    what: str = "",
) -> None:
    """float32/float64: within ``rtol32`` of the float64 oracle (scaled by its magnitude).
    float16/bfloat16: our max error against the oracle is at most ``factor`` x PyTorch's own error in the
    same dtype, plus a small absolute term (a few units in the last place of the values' scale)."""
    assert ours.shape == oracle64.shape, (what, ours.shape, oracle64.shape)
    assert not torch.isnan(ours).any(), f"{what}: NaN in output (unwritten poisoned element?)"
    err = (ours.double().cpu() - oracle64.double().cpu()).abs()
    scale = oracle64.double().abs().max().item() if oracle64.numel() else 0.0
    if ours.dtype in LOW_PRECISION:
        assert torch_same_dtype is not None
        torch_err = (torch_same_dtype.double().cpu() - oracle64.double().cpu()).abs().max().item() if err.numel() else 0
        eps = torch.finfo(ours.dtype).eps
        bound = factor * torch_err + 2 * eps * max(scale, 1e-3)
    else:
        eps = rtol32 if ours.dtype == torch.float32 else 1e-12
        bound = eps * max(scale, 1e-6)
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= bound, f"{what}: max error {worst:.3g} > bound {bound:.3g} (dtype {ours.dtype}, scale {scale:.3g})"


def check_against_truth(ours, theirs, exact, dtype, what, factor=3.0):
    """Our error against the float64 truth is at most ``factor`` x the reference's own error in the same
    dtypes plus a small absolute term; float32 math lands far under 1e-5 relative."""
    if exact is None:  # a gradient that does not exist (no parameter): ours must not exist either
        assert ours is None, what
        return
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (what, ours.shape, theirs.shape, ours.dtype, theirs.dtype)
    if not exact.numel():
        return
    exact = exact.double()
    scale = max(exact.abs().max().item(), 1.0)
    ours_err = (ours.double() - exact).abs().max().item()
    theirs_err = (theirs.double() - exact).abs().max().item()
    if dtype in (torch.float32, torch.float64):
        # Far under 1e-5 relative, unless the case is ill-conditioned (a nearly constant row) and the
        # reference's own error is larger too.
        bound = 1e-5 * scale if dtype == torch.float32 else 1e-11 * scale
        assert ours_err <= max(bound, factor * theirs_err), (what, ours_err, theirs_err, scale)
    else:
        assert ours_err <= factor * theirs_err + SLACK[dtype] * scale, (what, ours_err, theirs_err, scale)
