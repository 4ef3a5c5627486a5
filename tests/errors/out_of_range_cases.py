"""Out-of-range ids through every path and every mode, run in a process of its own by
``test_out_of_range.py`` (a wild pointer would crash this process, not pytest). Prints one JSON object:
case name -> "ok" or what went wrong.

Each case builds the table and every buffer a kernel writes as a view between guard rows of a sentinel
value, then checks: the process survives, the guard rows are bitwise unchanged, the table is unchanged,
bad ids give zero rows and nothing else, the valid rows are right, and the IndexError comes when the
mode says it does.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # the kernels under the interpreter (read when triton_embed is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_EMBED_AUTOTUNE", "0")

import triton_embed  # noqa: E402
from triton_embed import functional  # noqa: E402
from triton_embed.runtime import dispatch as _dispatch

V, D = 9, 5
SENTINEL = 12345.0
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_guarded: list[torch.Tensor] = []


def guarded_empty(shape, dtype, device):
    """A buffer with a guard row of SENTINEL (or -7) before and after it, recorded for the final check."""
    shape = tuple(shape)
    rows = shape[0] if shape else 1
    flat = int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1
    base = torch.empty((rows + 2) * flat, dtype=dtype, device=device)
    base.fill_(SENTINEL if dtype.is_floating_point else -7)
    _guarded.append((base, flat))
    return base[flat: flat + rows * flat].view(shape)


def guards_intact() -> bool:
    ok = True
    for base, flat in _guarded:
        fill = SENTINEL if base.dtype.is_floating_point else -7
        ok &= bool((base[:flat] == fill).all()) and bool((base[-flat:] == fill).all())
    _guarded.clear()
    return ok


def table() -> torch.Tensor:
    weight = guarded_empty((V, D), torch.float32, DEVICE)
    weight.copy_(torch.randn(V, D, generator=torch.Generator().manual_seed(0)))
    return weight


def expect_error(mode: str, call):
    """Run ``call`` as the mode says: "sync" raises at the call; "deferred" raises from check_errors (or
    from the next op); "off" never. Returns the call's result (None if it raised)."""
    result = None
    raised = False
    try:
        result = call()
    except IndexError:
        raised = True
    if mode == "sync":
        assert raised, "sync mode did not raise at the call"
    elif mode == "deferred":
        if not raised:
            try:
                triton_embed.check_errors()
            except IndexError:
                raised = True
        assert raised, "deferred mode never raised"
    else:
        assert not raised, "off mode raised"
        triton_embed.check_errors()
    triton_embed.check_errors()  # nothing left over
    return result


def case_gather(mode, bad):
    weight = table()
    before = weight.clone()
    ids = torch.tensor([2, bad, 4], device=DEVICE)
    out = expect_error(mode, lambda: functional.embedding(ids, weight))
    assert torch.equal(weight, before)
    if out is not None:
        assert torch.equal(out[0], weight[2]) and torch.equal(out[2], weight[4]) and not out[1].any()


def case_renorm(mode, bad):
    weight = table()
    before = weight.clone()
    ids = torch.tensor([2, bad, 4], device=DEVICE)
    expect_error(mode, lambda: functional.embedding(ids, weight, max_norm=0.1))
    assert torch.equal(weight, before), "a renorm that met a bad id changed the table"


def _dense_reference(grad, ids, padding=-1):
    keep = (ids >= 0) & (ids < V)
    return torch.ops.aten.embedding_dense_backward(grad[keep].cpu(), ids[keep].cpu(), V, padding, False)


def case_dense_backward(mode, bad):
    ids = torch.tensor([2, bad, 4, 2, bad], device=DEVICE)
    grad = torch.randn(5, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = torch.ops.triton_embed.embedding_dense_backward(grad, ids, V, -1, False, True)
    torch.testing.assert_close(got.cpu(), _dense_reference(grad, ids))


def case_sparse_backward(mode, bad):
    triton_embed.set_index_check("off")
    weight = table().requires_grad_()
    ids = torch.tensor([2, bad, 4], device=DEVICE)
    for padding in (None, 3):
        weight.grad = None
        functional.embedding(ids, weight, padding_idx=padding, sparse=True).sum().backward()
        grad = weight.grad.coalesce()
        assert bool((grad.indices() >= 0).all()) and bool((grad.indices() < V).all())
        dense = grad.to_dense()
        expected = torch.zeros(V, D)
        expected[2] += 1
        expected[4] += 1
        torch.testing.assert_close(dense.cpu(), expected)


def case_stable_forward(mode, bad):
    weight = table()
    before = weight.clone()
    ids = torch.tensor([2, bad, 4], device=DEVICE)
    out = expect_error(mode, lambda: functional.stable_embedding(ids, weight, None, None))
    assert torch.equal(weight, before)
    if out is not None:
        ref = F.layer_norm(weight[[2, 4]].cpu(), (D,))
        torch.testing.assert_close(out[[0, 2]].cpu(), ref)


def case_stable_backward(mode, bad):
    triton_embed.set_index_check("off")
    weight = table().requires_grad_()
    ids = torch.tensor([2, bad, 4, 2], device=DEVICE)
    grad = torch.randn(4, D, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    functional.stable_embedding(ids, weight, None, None).backward(grad)
    ref_weight = weight.detach().cpu().clone().requires_grad_()
    keep = torch.tensor([0, 2, 3])
    F.layer_norm(F.embedding(ids.cpu()[keep], ref_weight), (D,)).backward(grad.cpu()[keep])
    torch.testing.assert_close(weight.grad.cpu(), ref_weight.grad, rtol=1e-5, atol=1e-5)


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def main() -> None:
    results = {}
    original = _dispatch.new_output
    modules = [sys.modules[f"triton_embed.ops.{m}"] for m in ("gather", "embedding_backward", "stable_embedding")]
    for module in modules:
        module.new_output = guarded_empty
    try:
        for name, fn in CASES.items():
            for mode in ("deferred", "sync", "off"):
                for bad in (-1, V, 2**40):
                    key = f"{name}/{mode}/{bad}"
                    triton_embed.set_index_check(mode)
                    try:
                        fn(mode, bad)
                        results[key] = "ok" if guards_intact() else "a guard row changed"
                    except Exception as exc:  # noqa: BLE001 - every failure is a result
                        results[key] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-800:]}"
                    _guarded.clear()
    finally:
        for module in modules:
            module.new_output = original
    print(json.dumps(results))


if __name__ == "__main__":
    main()
