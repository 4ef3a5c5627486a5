"""The sweep's special checks: a table of more than 2³¹ elements, out-of-range ids in the deferred and sync
index-check modes (then the context still usable), bitwise-repeatable backwards (also under other launch
configs), and a CUDA-graph capture and replay of a training step (GPU only)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

import triton_embed
from triton_embed import functional, reference, tuning

from .cases import LAYER_NORM_EPS
from .sweep_core import Data, Failed, NotRun, compare, make_data

#: The table of more than 2³¹ elements on a GPU (bfloat16, 4.3 GB, and as much again for its gradient),
#: and its small stand-in under the interpreter.
BIG_GPU = (2**20 + 1, 2048)
BIG_CPU = (2**9 + 1, 40)
BAD_IDS = (-1, "V", 2**40)


def big_table_check(device: torch.device, size: tuple[int, int]) -> tuple[float, float, str]:
    """Rows near the end of a bf16 table of ``size`` = (V, D), V·D > 2³¹ on a GPU: gathered exactly (lookup and
    fused StableEmbedding forward), and their gradient rows exactly the sums of small exact values."""
    vocab, dim = size
    try:
        err, tol = _big_table(device, vocab, dim)
    finally:  # the table and its gradient are gone once _big_table returns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    size = "> 2³¹" if vocab * dim > 2**31 else "a small stand-in (the > 2³¹ case needs a GPU's memory)"
    return err, tol, f"V={vocab} D={dim}: {vocab * dim} elements, {size}"


def _big_table(device: torch.device, vocab: int, dim: int) -> tuple[float, float]:
    gen = torch.Generator(device).manual_seed(3)
    weight = torch.zeros(vocab, dim, dtype=torch.bfloat16, device=device)
    weight[:8] = torch.randn(8, dim, generator=gen, device=device).to(torch.bfloat16)
    weight[-64:] = torch.randn(64, dim, generator=gen, device=device).to(torch.bfloat16)
    ids = torch.tensor([vocab - 1, vocab - 2, vocab - 64, 0, vocab - 1, 5, vocab - 33], device=device)
    weight.requires_grad_(True)
    out = functional.embedding(ids, weight)
    rows = weight.detach()[ids]  # the same rows as a small table: the oracle of the lookup and the fused forward
    if not torch.equal(out, rows):
        raise Failed("gathered rows differ from the table's")
    stable = functional.stable_embedding(ids, weight.detach(), None, None)
    stable_ref = reference.stable_embedding(torch.arange(len(ids), device=device), rows, None, None)
    stable64 = torch.nn.functional.layer_norm(rows.double(), (dim,), eps=LAYER_NORM_EPS)
    err, tol, _ = compare([("stable output", stable, stable_ref, stable64, False)])
    grad = (torch.randint(-8, 8, (len(ids), dim), generator=gen, device=device) / 4).to(torch.bfloat16)
    out.backward(grad)
    g = weight.grad
    for v in ids.unique().tolist():  # sums of quarters: exact in every dtype
        expected = grad.double()[ids == v].sum(0).to(torch.bfloat16)
        if not torch.equal(g[v], expected):
            raise Failed(f"gradient row {v} is not the sum of its tokens' rows")
    tail = torch.ones(64, dtype=torch.bool, device=device)
    tail[ids[ids >= vocab - 64] - (vocab - 64)] = False
    if bool(g[-64:][tail].abs().sum() != 0) or bool(g[1:5].abs().sum() != 0):
        raise Failed("rows no id names are not zero")
    return err, tol


def out_of_range_check(device: torch.device, path: str, mode: str, bad: int) -> tuple[float, float, str]:
    """An out-of-range id: IndexError when the mode says (sync: at the call; deferred: by check_errors()),
    the table unchanged, then a normal lookup right and the device still usable."""
    vocab, dim = 50, 16
    gen = torch.Generator(device).manual_seed(4)
    w0 = torch.randn(vocab, dim, generator=gen, device=device)
    gamma, beta = torch.ones(dim, device=device), torch.zeros(dim, device=device)
    w = w0.clone()
    ids = torch.tensor([1, bad, 3], device=device)
    calls: dict[str, Callable[[], Any]] = {
        "gather": lambda: functional.embedding(ids, w),
        "renorm": lambda: functional.embedding(ids, w, max_norm=0.5),
        "stable_forward": lambda: functional.stable_embedding(ids, w, gamma, beta),
    }
    previous = triton_embed.index_check_mode()
    triton_embed.set_index_check(mode)
    try:
        raised_at_call = False
        try:
            with torch.no_grad():
                calls[path]()
        except IndexError:
            raised_at_call = True
        raised_later = False
        try:
            triton_embed.check_errors()
        except IndexError:
            raised_later = True
        if mode == "sync" and not (raised_at_call and not raised_later):
            raise Failed(f"sync mode: IndexError at the call {raised_at_call}, later {raised_later}")
        if mode == "deferred" and not (raised_at_call or raised_later):
            raise Failed("deferred mode: no IndexError from check_errors()")
        if not torch.equal(w, w0):
            raise Failed("a call that saw a bad id changed the table")
        good = torch.tensor([1, 2, 3], device=device)
        if not torch.equal(functional.embedding(good, w), w0[good]):
            raise Failed("a valid lookup after the bad one is wrong")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        triton_embed.check_errors()
    finally:
        triton_embed.set_index_check(previous)
    return 0.0, 0.0, ""


@contextlib.contextmanager
def other_configs() -> Iterator[None]:
    """Every launch uses the second config of its kernel's list instead of the one it would choose."""
    original = tuning.choose

    def choose(kernel: str, *args: Any, **kwargs: Any) -> tuning.Config:
        configs = tuning.CONFIGS[kernel]
        return configs[1 % len(configs)]

    tuning.choose = choose
    try:
        yield
    finally:
        tuning.choose = original


def _gradients(op: str, d: Data) -> list[torch.Tensor]:
    """The backward's results of one fresh run of ``op`` on ``d``."""
    if op == "layer_norm":
        x = d.grad.clone().requires_grad_(True)
        w = torch.ones(d.dim, dtype=d.grad.dtype, device=d.grad.device, requires_grad=True)
        b = torch.zeros(d.dim, dtype=d.grad.dtype, device=d.grad.device, requires_grad=True)
        functional.layer_norm(x, (d.dim,), w, b).backward(d.grad.flip(0))
        return [x.grad, w.grad, b.grad]
    w = d.weight.clone().requires_grad_(True)
    if op == "stable":
        g = torch.ones(d.dim, device=d.weight.device, requires_grad=True)
        b = torch.zeros(d.dim, device=d.weight.device, requires_grad=True)
        functional.stable_embedding(d.ids, w, g, b).backward(d.grad)
        return [w.grad, g.grad, b.grad]
    functional.embedding(d.ids, w).backward(d.grad)
    return [w.grad]


def determinism_check(op: str, d: Data) -> tuple[float, float, str]:
    """The same backward twice, and once more with every kernel on another launch config: bitwise equal."""
    first = _gradients(op, d)
    again = _gradients(op, d)
    if not all(torch.equal(a, b) for a, b in zip(first, again)):
        raise Failed("two runs of the same backward differ")
    with other_configs():
        other = _gradients(op, d)
    if not all(torch.equal(a, b) for a, b in zip(first, other)):
        raise Failed("another launch config changed the gradient's bits")
    return 0.0, 0.0, "repeated and under the second config of every kernel"


def cuda_graph_check(device: torch.device) -> tuple[float, float, str]:
    """A training step (StableEmbedding → Linear → cross-entropy → Adam) captured in a CUDA graph and
    replayed on new batches matches the same steps run eagerly: no host sync in it (one breaks a capture)."""
    torch.manual_seed(0)
    models = [_graph_model(device) for _ in range(2)]
    eager, graphed = models
    graphed.load_state_dict(eager.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, capturable=True) for m in models]
    batches = [(torch.randint(0, 1000, (4, 32), device=device), torch.randint(0, 1000, (4, 32), device=device))
               for _ in range(4)]
    ids, targets = batches[0][0].clone(), batches[0][1].clone()
    step = _step

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up: compile, choose configs, create the optimizer state
        for _ in range(3):
            step(graphed, opts[1], ids, targets)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss_graphed = step(graphed, opts[1], ids, targets)
    graphed.load_state_dict(eager.state_dict())
    for state in opts[1].state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()
    worst = 0.0
    for x, y in batches:
        ids.copy_(x)
        targets.copy_(y)
        graph.replay()
        loss = step(eager, opts[0], x, y)
        worst = max(worst, abs(float(loss_graphed) - float(loss)))
    params = max(float((a - b).abs().max()) for a, b in zip(graphed.parameters(), eager.parameters()))
    if worst > 1e-4 or params > 1e-4:
        raise Failed(f"replays differ from eager steps: loss {worst:.3g}, parameters {params:.3g}")
    triton_embed.check_errors()
    return max(worst, params), 1e-4, "4 replays of a captured training step match eager steps"


def _graph_model(device: torch.device) -> torch.nn.Module:
    """The CUDA-graph check's model: StableEmbedding → Linear."""
    return torch.nn.Sequential(triton_embed.StableEmbedding(1000, 64, padding_idx=0), torch.nn.Linear(64, 1000)).to(device)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One training step (cross-entropy, backward, the optimizer)."""
    opt.zero_grad(set_to_none=False)
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    opt.step()
    return loss


def training_step(device: torch.device) -> tuple[float, float, str]:
    """The CUDA-graph check's training step, run once eagerly (the plan traces its launches on the CPU)."""
    torch.manual_seed(0)
    model = _graph_model(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randint(0, 1000, (4, 32), device=device), torch.randint(0, 1000, (4, 32), device=device)
    return float(_step(model, opt, x, y).detach()), 0.0, "eager"


def checks(device: torch.device, shape: tuple[int, int, int], quick: bool, gpu: bool, notes: list[str]
           ) -> Iterator[tuple[str, Callable[[], tuple[float, float, str]]]]:
    """The special checks as (name, function), in order; the CUDA-graph check on a GPU only (elsewhere it is
    listed with a function that says it was skipped)."""
    yield "big_table", lambda: big_table_check(device, BIG_GPU if gpu else BIG_CPU)
    if not gpu:
        notes.append(f"big_table: V={BIG_CPU[0]} D={BIG_CPU[1]} stands in for V·D > 2³¹ (a GPU's memory needed)")
    paths = ("gather",) if quick else ("gather", "renorm", "stable_forward")
    for path in paths:
        for mode in ("deferred", "sync"):
            for bad in BAD_IDS:
                value = 50 if bad == "V" else bad
                label = "2^40" if bad == 2**40 else bad
                yield (f"out_of_range/{path}/{mode}/{label}",
                       lambda path=path, mode=mode, value=value: out_of_range_check(device, path, mode, value))
    d = make_data(shape, torch.bfloat16, device, seed=5)
    for op in ("embedding", "stable", "layer_norm"):
        yield f"deterministic/{op}/bfloat16", lambda op=op: determinism_check(op, d)
    if gpu:
        yield "cuda_graph/training_step", lambda: cuda_graph_check(device)
    else:
        notes.append("cuda_graph: skipped (needs a GPU)")
        yield "cuda_graph/training_step", skipped_without_gpu


def skipped_without_gpu() -> tuple[float, float, str]:
    """The CUDA-graph check off a GPU."""
    raise NotRun("skipped: needs a GPU")
