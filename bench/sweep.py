"""The correctness sweep of ``--validate``: every op, option and dtype of triton_embed against the reference
path, on the device the command runs on (natively on a GPU; under the Triton interpreter on the CPU).

Each check compares our output and gradients with the same-dtype reference path (PyTorch's ops, as
bitsandbytes runs them) and a float64 oracle, with the tolerance rule (``check.judge``: a gather is exact;
the rest within 4× the reference's own error plus a small dtype term), and records name, ok, max error,
tolerance and seconds. Kernel outputs are poisoned (NaN) before they are written, and runtime tuning is
off (every kernel runs its default config), as in the test suite. The special checks (a table of more than
2³¹ elements, out-of-range ids, determinism, a CUDA-graph replay) are in ``sweep_special``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from triton_embed import functional, reference

from . import sweep_special
from .cases import LAYER_NORM_EPS
from .sweep_core import Data, Failed, Sweep, compare, leaf, make_data, sweep_settings
from .timing import Deadline

#: Table dtypes of the sweep (float64 too: the kernels accumulate it in float64).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
QUICK_DTYPES = ("float32", "bfloat16")
#: (V, D, N) on a GPU and under the interpreter: D not a power of two (partial column tiles), Zipf ids (a
#: hot token whose run crosses the backward's 32-position chunks).
GPU_SHAPE = (3000, 200, 4096)
CPU_SHAPE = (200, 40, 72)


def embedding_check(d: Data, padding_idx: int | None = None, scale: bool = False, int32: bool = False,
                    two_d: bool = False, sparse: bool = False) -> tuple[float, float, str]:
    """Lookup forward (exact) and weight gradient (dense or sparse) against the reference path."""
    ids = d.ids.view(-1, 8) if two_d else d.ids
    ids = ids.int() if int32 else ids
    grad = d.grad.view(*ids.shape, d.dim)
    w, wr, w64 = leaf(d.weight), leaf(d.weight), leaf(d.weight, torch.float64)
    out = functional.embedding(ids, w, padding_idx, None, 2.0, scale, sparse)
    out.backward(grad)
    out_r = reference.embedding(ids, wr, padding_idx, None, 2.0, scale, sparse)
    out_r.backward(grad)
    out64 = F.embedding(ids, w64, padding_idx, None, 2.0, scale, False)
    out64.backward(grad.double())
    if sparse and not (w.grad is not None and w.grad.is_sparse):
        raise Failed("sparse=True did not give a sparse gradient")
    return compare([("output", out, out_r, out64, True), ("weight.grad", w.grad, wr.grad, w64.grad, False)])


def renorm_check(d: Data, norm_type: float) -> tuple[float, float, str]:
    """max_norm renorm + lookup: output and table against the reference; untouched rows bitwise unchanged."""
    rows = d.weight.double()[d.ids.unique()]
    max_norm = float(rows.norm(p=norm_type, dim=1).median())  # about half the referenced rows get rescaled
    w, wr, w64 = d.weight.clone(), d.weight.clone(), d.weight.to(torch.float64, copy=True)
    with torch.no_grad():
        out = functional.embedding(d.ids, w, max_norm=max_norm, norm_type=norm_type)
        out_r = reference.embedding(d.ids, wr, None, max_norm, norm_type)
        out64 = F.embedding(d.ids, w64, max_norm=max_norm, norm_type=norm_type)
    untouched = torch.ones(d.weight.shape[0], dtype=torch.bool, device=d.weight.device)
    untouched[d.ids] = False
    if not torch.equal(w[untouched], d.weight[untouched]):
        raise Failed("rows the ids do not name changed")
    return compare([("output", out, out_r, out64, False), ("table", w, wr, w64, False)])


def stable_check(d: Data, padding_idx: int | None = None, scale: bool = False, sparse: bool = False
                 ) -> tuple[float, float, str]:
    """The fused StableEmbedding forward and backward (weight, γ, β gradients) against bitsandbytes' ops."""
    gen = torch.Generator(d.weight.device).manual_seed(1)
    gamma0 = 1.0 + 0.1 * torch.randn(d.dim, generator=gen, device=d.weight.device)
    beta0 = 0.1 * torch.randn(d.dim, generator=gen, device=d.weight.device)
    (w, g, b), (wr, gr, br) = ([leaf(t) for t in (d.weight, gamma0, beta0)] for _ in range(2))
    w64, g64, b64 = (leaf(t, torch.float64) for t in (d.weight, gamma0, beta0))
    out = functional.stable_embedding(d.ids, w, g, b, padding_idx, None, 2.0, scale, sparse)
    out.backward(d.grad)
    out_r = reference.stable_embedding(d.ids, wr, gr, br, padding_idx, None, 2.0, scale, sparse)
    out_r.backward(d.grad)
    out64 = F.layer_norm(F.embedding(d.ids, w64, padding_idx, None, 2.0, scale), (d.dim,), g64, b64, LAYER_NORM_EPS)
    out64.backward(d.grad.double())
    return compare([("output", out, out_r, out64, False), ("weight.grad", w.grad, wr.grad, w64.grad, False),
                    ("norm.weight.grad", g.grad, gr.grad, g64.grad, False),
                    ("norm.bias.grad", b.grad, br.grad, b64.grad, False)])


def layer_norm_check(rows: int, dim: int, dtype: torch.dtype, device: torch.device, affine: bool = True
                     ) -> tuple[float, float, str]:
    """functional.layer_norm forward and backward (input, γ, β gradients) against F.layer_norm."""
    gen = torch.Generator(device).manual_seed(2)
    x0 = torch.randn(rows, dim, generator=gen, device=device).to(dtype)
    dy = torch.randn(rows, dim, generator=gen, device=device).to(dtype)
    params = [(1.0 + 0.1 * torch.randn(dim, generator=gen, device=device)).to(dtype),
              (0.1 * torch.randn(dim, generator=gen, device=device)).to(dtype)] if affine else [None, None]
    sets = []
    for kind in (dtype, dtype, torch.float64):
        x = leaf(x0, kind)
        wb = [None if p is None else leaf(p, kind) for p in params]
        sets.append((x, *wb))
    (x, w, b), (xr, wr, br), (x64, w64, b64) = sets
    out = functional.layer_norm(x, (dim,), w, b, LAYER_NORM_EPS)
    out.backward(dy)
    out_r = F.layer_norm(xr, (dim,), wr, br, LAYER_NORM_EPS)
    out_r.backward(dy)
    out64 = F.layer_norm(x64, (dim,), w64, b64, LAYER_NORM_EPS)
    out64.backward(dy.double())
    pairs = [("output", out, out_r, out64, False), ("input.grad", x.grad, xr.grad, x64.grad, False)]
    if affine:
        pairs += [("weight.grad", w.grad, wr.grad, w64.grad, False), ("bias.grad", b.grad, br.grad, b64.grad, False)]
    return compare(pairs)


CheckFn = Callable[[], tuple[float, float, str]]


def checks(device: torch.device, quick: bool, gpu: bool, notes: list[str]) -> Iterator[tuple[str, CheckFn]]:
    """Every check of the sweep as (name, function), in order; a dtype's data is made when its checks come.
    ``gpu``: the GPU's shapes and GPU-only checks (the plan walks them on the CPU, launches traced)."""
    shape = GPU_SHAPE if gpu else CPU_SHAPE
    dtypes = QUICK_DTYPES if quick else tuple(DTYPES)
    notes.append(f"shape V={shape[0]} D={shape[1]} N={shape[2]}, Zipf ids; dtypes {', '.join(dtypes)}")
    for name in dtypes:
        d = make_data(shape, DTYPES[name], device)
        yield f"embedding/{name}", lambda d=d: embedding_check(d)
        yield (f"embedding/{name}/padding+scale_grad_by_freq",
               lambda d=d: embedding_check(d, padding_idx=int(d.ids[0]), scale=True))
        if not quick:
            yield (f"embedding/{name}/int32-2d-ids+padding",
                   lambda d=d: embedding_check(d, padding_idx=-1, int32=True, two_d=True))
        if name in QUICK_DTYPES:
            yield f"embedding/{name}/sparse+padding", lambda d=d: embedding_check(d, padding_idx=int(d.ids[1]), sparse=True)
            for p in ((2.0,) if quick else (1.0, 2.0, math.inf, 3.0)):
                yield f"renorm/{name}/p={p:g}", lambda d=d, p=p: renorm_check(d, p)
        yield f"stable/{name}", lambda d=d: stable_check(d)
        yield (f"stable/{name}/padding+scale_grad_by_freq",
               lambda d=d: stable_check(d, padding_idx=int(d.ids[0]), scale=True))
        if name == "float32":
            yield f"stable/{name}/sparse", lambda d=d: stable_check(d, sparse=True)
        yield f"layer_norm/{name}", lambda name=name: layer_norm_check(shape[2], shape[1], DTYPES[name], device)
        if name in QUICK_DTYPES and not quick:
            yield (f"layer_norm/{name}/no-affine",
                   lambda name=name: layer_norm_check(shape[2], shape[1], DTYPES[name], device, affine=False))
    if gpu and not quick:
        for name in QUICK_DTYPES:  # rows wider than the widest register block: streamed in pieces
            yield f"layer_norm/{name}/D=8392", lambda name=name: layer_norm_check(512, 8392, DTYPES[name], device)
    yield from sweep_special.checks(device, shape, quick, gpu, notes)


def run_sweep(device: torch.device, quick: bool, deadline: Deadline, say: Callable[[str], None]) -> dict[str, Any]:
    """Every check, in order; the stage record (``ok`` False if any check failed)."""
    sweep = Sweep(deadline, say)
    notes: list[str] = []
    with sweep_settings():
        for name, fn in checks(device, quick, device.type == "cuda", notes):
            sweep.run(name, fn)
    result = sweep.result()
    result["notes"] = notes
    return result
