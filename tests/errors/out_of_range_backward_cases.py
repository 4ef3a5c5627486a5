"""A call that meets an out-of-range id changes no parameter through any path, optimizer steps included:
every backward (Embedding dense, sparse, max_norm; StableEmbedding per-id, per-token, sparse, frozen table;
a LayerNorm after a lookup; a quantized StableEmbedding's norm gradients), every mode, the kernels and the
reference path. Run in a process of its own by ``test_out_of_range.py``; prints one JSON object: case name
-> "ok" or what went wrong.

What each mode must give:
- kernels, ``deferred``: the first triton_embed op after the bad call that sees the record (at once under
  the interpreter; on a GPU after the sync made before each backward here), at the latest the bad call's
  own backward, raises the IndexError before any gradient exists;
- kernels, ``sync``: the call itself raises;
- kernels, ``off``: nothing raises; the ids read zero rows, and the gradients are those of that forward (the
  oracle: PyTorch on the table with a zero row appended, the bad ids pointing at it, that row's gradient
  dropped): no gradient row and no sparse entry for a row no valid token named, and an optimizer step
  (SparseAdam with momentum on every row; SGD) leaves every such row bitwise unchanged;
- the reference path (CPU tensors), every mode: the lookup raises (PyTorch's own IndexError, or the check's)
  and nothing changes.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_EMBED_AUTOTUNE", "0")

import triton_embed  # noqa: E402
from triton_embed import functional  # noqa: E402
from triton_embed.runtime import errors

V, D = 9, 5
KERNELS_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
#: Where the current case runs: the kernels' device, or the CPU for the reference path (CPU tensors keep
#: PyTorch's IndexError; on a GPU, PyTorch's own ops would stop the process with a device assert).
DEVICE = KERNELS_DEVICE


class Case:
    """A model around one path: ``params`` (name -> leaf), ``run(ids)`` (the output), and ``oracle(ids, grad)``
    (the gradients of the same forward with bad ids reading a zero row, by PyTorch, in float64)."""

    sparse = False

    def __init__(self, dtype=torch.float32, padding_idx=None, **options):
        g = torch.Generator().manual_seed(0)
        self.dtype, self.padding_idx, self.options = dtype, padding_idx, options
        self.params = {"weight": torch.randn(V, D, generator=g).to(dtype).to(DEVICE).requires_grad_()}

    def rows(self, ids, table):
        """The looked-up rows of ``table`` (V + 1 rows in the oracle, the last a zero row)."""
        return F.embedding(ids, table, self.padding_idx)

    def oracle(self, ids, grad):
        params = {k: p.detach().cpu().double().requires_grad_() for k, p in self.params.items()}
        padded = torch.cat([params["weight"], params["weight"].new_zeros(1, D)])
        mapped = torch.where((ids >= 0) & (ids < V), ids, V).cpu()
        out = self.finish(self.rows(mapped, padded), params)
        out.backward(grad.cpu().double())
        return {k: p.grad for k, p in params.items()}

    def finish(self, rows, params):
        return rows


class Lookup(Case):
    def run(self, ids):
        return functional.embedding(ids, self.params["weight"], self.padding_idx, sparse=self.sparse, **self.options)


class SparseLookup(Lookup):
    sparse = True


class Stable(Case):
    def __init__(self, dtype=torch.float32, padding_idx=None, frozen=False, sparse=False):
        super().__init__(dtype, padding_idx)
        g = torch.Generator().manual_seed(1)
        self.params["norm_weight"] = (torch.rand(D, generator=g) + 0.5).to(DEVICE).requires_grad_()
        self.params["norm_bias"] = torch.randn(D, generator=g).to(DEVICE).requires_grad_()
        self.sparse = sparse
        if frozen:
            self.params["weight"].requires_grad_(False)

    def run(self, ids):
        p = self.params
        return functional.stable_embedding(ids, p["weight"], p["norm_weight"], p["norm_bias"], self.padding_idx,
                                           sparse=self.sparse)

    def finish(self, rows, params):
        return F.layer_norm(rows, (D,), params["norm_weight"], params["norm_bias"], 1e-5)


class LayerNormAfterLookup(Stable):
    def run(self, ids):
        p = self.params
        return functional.layer_norm(functional.embedding(ids, p["weight"]), D, p["norm_weight"], p["norm_bias"])


class QuantizedStable(Stable):
    """A frozen quantized table: only the norm's parameters learn."""

    def __init__(self, fmt):
        super().__init__()
        self.params.pop("weight")
        cls = triton_embed.StableEmbedding8bit if fmt == "int8" else triton_embed.StableEmbedding4bit
        kwargs = {} if fmt == "int8" else {"quant_type": fmt}
        self.module = cls(V, D, **kwargs).to(DEVICE).quantize()
        self.module.norm.weight.data.copy_(self.params["norm_weight"].detach())
        self.module.norm.bias.data.copy_(self.params["norm_bias"].detach())
        self.params = {"norm_weight": self.module.norm.weight, "norm_bias": self.module.norm.bias}
        self.table = self.module.dequantize().detach().float()

    def run(self, ids):
        return self.module(ids)

    def oracle(self, ids, grad):
        params = {k: p.detach().cpu().double().requires_grad_() for k, p in self.params.items()}
        padded = torch.cat([self.table.cpu().double(), torch.zeros(1, D, dtype=torch.float64)])
        mapped = torch.where((ids >= 0) & (ids < V), ids, V).cpu()
        self.finish(F.embedding(mapped, padded), params).backward(grad.cpu().double())
        return {k: p.grad for k, p in params.items()}


def _named_rows(ids) -> set[int]:
    """The rows valid tokens of the call name."""
    return {i for i in ids.reshape(-1).tolist() if 0 <= i < V}


def _snapshot(case):
    return {k: p.detach().clone() for k, p in case.params.items()}


def _unchanged(case, before) -> None:
    for k, p in case.params.items():
        assert torch.equal(p.detach(), before[k]), f"{k} changed"
        assert p.grad is None, f"{k} has a gradient"


def _tolerance(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype in (torch.bfloat16, torch.float16) else dict(rtol=1e-5, atol=1e-5)


def _check_off(case, ids, grad, sparse_optimizer=False):
    """Mode "off" on the kernels: gradients as the oracle's, and an optimizer step that moves no row no valid
    token named."""
    weight = case.params.get("weight")
    if sparse_optimizer:  # momentum on every row first: a valid step naming them all
        optimizer = torch.optim.SparseAdam([weight], lr=0.1)
        case.run(torch.arange(V, device=DEVICE)).backward(torch.ones(V, D, device=DEVICE))
        optimizer.step()
        for p in case.params.values():
            p.grad = None
    before = _snapshot(case)
    grad = grad.to(case.dtype)  # the output's dtype (the oracle takes the same values)
    _forward_then_backward(case, ids, grad)
    expected = case.oracle(ids, grad)
    named = _named_rows(ids)
    for k, p in case.params.items():
        if not p.requires_grad:
            assert p.grad is None, k
            continue
        got = p.grad
        if got.is_sparse:
            rows = set(got.coalesce().indices().reshape(-1).tolist())
            assert rows <= named, f"sparse entries for rows {sorted(rows - named)} that no valid token named"
            got = got.to_dense()
        torch.testing.assert_close(got.double().cpu(), expected[k], **_tolerance(case.dtype), msg=lambda m: f"{k}: {m}")
        if k == "weight":
            others = [r for r in range(V) if r not in named]
            assert not got[others].any(), "a gradient row for a row no valid token named"
    if weight is None or not weight.requires_grad:
        return
    if sparse_optimizer:
        optimizer.step()
    else:
        torch.optim.SGD([weight], lr=0.1).step()
    for r in range(V):
        if r not in named:
            assert torch.equal(weight.detach()[r], before["weight"][r]), f"row {r} moved; no valid token named it"


def _forward_then_backward(case, ids, grad) -> None:
    out = case.run(ids)
    if DEVICE.type == "cuda":  # the bad call's record reaches the host, as it almost always has by a backward
        torch.cuda.synchronize(DEVICE)
    out.backward(grad)


def _run(case, ids, grad, mode, backend, sparse_optimizer=False):
    before = _snapshot(case)
    if backend == "reference" or mode != "off":
        try:
            _forward_then_backward(case, ids, grad.to(case.dtype))
        except IndexError:
            pass
        else:
            raise AssertionError("nothing raised")
        _unchanged(case, before)
        triton_embed.check_errors()  # reported once
        return
    _check_off(case, ids, grad, sparse_optimizer)
    triton_embed.check_errors()


def _ids(bad, all_bad=False):
    ids = [bad, bad, bad] if all_bad else [2, bad, 4, 2, bad, 7]
    return torch.tensor(ids, device=DEVICE)


def _grad(ids):
    return torch.randn(ids.numel(), D, generator=torch.Generator().manual_seed(2)).to(DEVICE)


def case_dense(mode, backend, bad):
    for padding in (None, 4):
        ids = _ids(bad)
        _run(Lookup(padding_idx=padding), ids, _grad(ids), mode, backend)


def case_max_norm(mode, backend, bad):
    ids = _ids(bad)
    _run(Lookup(max_norm=0.5), ids, _grad(ids), mode, backend)


def case_sparse(mode, backend, bad):
    for padding in (None, 4):
        for all_bad in (False, True):
            ids = _ids(bad, all_bad)
            _run(SparseLookup(padding_idx=padding), ids, _grad(ids), mode, backend, sparse_optimizer=True)


def case_sparse_before_the_host_sees_the_report(mode, backend, bad):
    """On a GPU the host may not see the record yet when the backward runs: without a padding row the
    masked tokens' zero entries then go to the call's first valid id (no sync), still no other row."""
    original = errors.reported
    errors.reported = lambda device: False
    try:
        ids = _ids(bad)
        _run(SparseLookup(), ids, _grad(ids), mode, backend, sparse_optimizer=True)
        if mode == "off" and backend == "auto":
            case = SparseLookup()
            _forward_then_backward(case, ids, _grad(ids))
            indices = case.params["weight"].grad._indices().reshape(-1).tolist()
            assert indices == [2, 2, 4, 2, 2, 7], indices
            # No valid id at all: zero entries on one row, but in range (a sparse tensor with an index
            # outside [0, V) would send coalesce() or an optimizer outside the table).
            case = SparseLookup()
            _forward_then_backward(case, _ids(bad, all_bad=True), _grad(_ids(bad, all_bad=True)))
            grad = case.params["weight"].grad
            assert all(0 <= i < V for i in grad._indices().reshape(-1).tolist()) and not grad._values().any()
    finally:
        errors.reported = original
        errors.forget(DEVICE)


def case_stable_per_id(mode, backend, bad):  # a table in the default dtype: one LayerNorm backward per id
    ids = _ids(bad)
    _run(Stable(padding_idx=4), ids, _grad(ids), mode, backend)


def case_stable_per_token(mode, backend, bad):  # a bfloat16 table: per-token rows, then the accumulation
    ids = _ids(bad)
    _run(Stable(torch.bfloat16, padding_idx=4), ids, _grad(ids), mode, backend)


def case_stable_sparse(mode, backend, bad):
    for padding in (None, 4):
        ids = _ids(bad)
        _run(Stable(padding_idx=padding, sparse=True), ids, _grad(ids), mode, backend, sparse_optimizer=True)


def case_stable_frozen_table(mode, backend, bad):  # only dγ/dβ
    ids = _ids(bad)
    _run(Stable(frozen=True), ids, _grad(ids), mode, backend)


def case_layer_norm_after_lookup(mode, backend, bad):
    ids = _ids(bad)
    _run(LayerNormAfterLookup(), ids, _grad(ids), mode, backend)


def case_quantized_stable(mode, backend, bad):
    for fmt in ("int8", "nf4"):
        ids = _ids(bad)
        _run(QuantizedStable(fmt), ids, _grad(ids), mode, backend)


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}
BADS = (-1, V, 2**40)


def main() -> None:
    global DEVICE
    results = {}
    for name, fn in CASES.items():
        for backend in ("auto", "reference"):
            DEVICE = KERNELS_DEVICE if backend == "auto" else torch.device("cpu")
            for mode in ("deferred", "sync", "off"):
                for bad in BADS:
                    key = f"{name}/{backend}/{mode}/{bad}"
                    triton_embed.set_index_check("sync" if mode == "off" else "off")
                    triton_embed.set_index_check(mode)  # a switch: no report left from an earlier case
                    try:
                        with triton_embed.use_backend(backend):
                            fn(mode, backend, bad)
                        results[key] = "ok"
                    except Exception as exc:  # noqa: BLE001 - every failure is a result
                        results[key] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1200:]}"
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
