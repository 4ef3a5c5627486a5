"""The benchmark cases (op × shape × id distribution × dtype) and their inputs.

Ops: ``embedding`` (lookup), ``stable`` (StableEmbedding: lookup → LayerNorm), ``layer_norm``
(``functional.layer_norm`` of an N×D input; no table, no ids) and ``renorm`` (lookup with ``max_norm``: the
in-place renorm of the referenced rows, then the lookup; forward only, its backward is the embedding's).

Defaults on a GPU, the LM shapes of the performance targets (README). The full cross product of vocab × dim × tokens × dist
× dtype is too large for a routine run; the default pairs each vocab with one dim, as real models do, so
that every vocab and every dim of §5 appears once:

========================  ======  =====
model                     vocab   dim
========================  ======  =====
GPT-2 small               50257   768
TinyLlama-1.1B            32000   2048
Llama-3-8B                128256  4096
========================  ======  =====

× tokens 8192 and 32768 (the two ends of "8–32K per step") × Zipf and uniform ids × float32 and bfloat16.
``--vocab``/``--dim`` given on the command line switch to the cross product of the lists (a list not given
takes all three §5 values). ``--quick`` is one small LM shape. ``--validate`` has its own compact set
(:func:`validate_cases`).

Without a GPU the kernels run under the Triton interpreter, which executes every program in Python:
the default there is one small shape (V=1000, D=40, N=72: partial tiles in both dimensions) × Zipf ids
(hot tokens exercise the backward's crossing runs; ``--dist`` adds uniform) × both dtypes, checked
against the reference in seconds; ``--quick`` is V=500, D=32, N=64.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import torch

OPS = ("embedding", "stable", "layer_norm", "renorm")
#: Passes each op has: the max_norm renorm is a forward-only op (its backward is the embedding's).
OP_PASSES = {"embedding": None, "stable": None, "layer_norm": None, "renorm": ("forward",)}
#: Ops that look rows up in a table (the others take an N×D input).
TABLE_OPS = ("embedding", "stable", "renorm")
DISTS = ("zipf", "uniform")
#: The id distribution of ops without ids.
NO_DIST = "-"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

LM_VOCABS = (32000, 50257, 128256)
LM_DIMS = (768, 2048, 4096)
#: (vocab, dim) pairs of real models: the default GPU shapes.
LM_PAIRS = ((50257, 768), (32000, 2048), (128256, 4096))
LM_TOKENS = (8192, 32768)
#: Tokens per step of the validation run and of the README's bytes-model table (the middle of 8–32K).
VALIDATE_TOKENS = 16384
QUICK_GPU_PAIRS = ((50257, 2048),)
QUICK_GPU_TOKENS = (16384,)

#: CPU (interpreter) (vocab, dim, tokens): partial tiles in both the token and the column dimension
#: (the interpreter configs use 64-wide tiles).
CPU_SHAPES = ((1000, 40, 72),)
QUICK_CPU_SHAPES = ((500, 32, 64),)

#: Exponent of the Zipf law for token ids (≈1 for natural-language text).
ZIPF_EXPONENT = 1.0
INDEX_DTYPE = torch.int64
#: max_norm of the renorm op: below the norm of every random row (≈ √D), so the first call rescales every
#: referenced row; later calls (the timed ones) find them within the bound, as after a training step.
MAX_NORM = 1.0
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class Case:
    """One benchmark case: an op at one shape, id distribution and weight dtype (vocab 0 without a table)."""

    op: str
    vocab: int
    dim: int
    tokens: int
    dist: str
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weight (or input) dtype as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    def label(self) -> str:
        """Short human-readable name, e.g. ``embedding V=50257 D=768 N=8192 zipf bfloat16``."""
        if self.op not in TABLE_OPS:
            return f"{self.op} D={self.dim} N={self.tokens} {self.dtype}"
        return f"{self.op} V={self.vocab} D={self.dim} N={self.tokens} {self.dist} {self.dtype}"

    def seed(self) -> int:
        """A seed fixed by the shape, so every run and every implementation sees the same data."""
        return zlib.crc32(f"{self.vocab}|{self.dim}|{self.tokens}|{self.dist}".encode())

    def passes(self, requested: tuple[str, ...]) -> tuple[str, ...]:
        """The requested passes this op has."""
        allowed = OP_PASSES[self.op]
        return requested if allowed is None else tuple(p for p in requested if p in allowed)


@dataclass
class Inputs:
    """The tensors shared by every implementation of a case."""

    ids: torch.Tensor  # (N,) int64 (empty for layer_norm)
    weight: torch.Tensor  # (V, D) in the case dtype: copied into every module ((0, D) for layer_norm)
    norm_weight: torch.Tensor  # (D,) γ: float32 for StableEmbedding's LayerNorm, the case dtype for layer_norm
    norm_bias: torch.Tensor  # (D,) β
    grad_out: torch.Tensor  # (N, D) in the case dtype: d loss / d output
    unique_ids: int  # distinct ids in ``ids`` (rows the weight gradient touches)
    #: Σ over distinct ids of ⌈count / 10⌉: the partial segments of PyTorch's CUDA embedding backward.
    partial_segments: int = 0
    x: torch.Tensor | None = None  # (N, D) layer_norm input (a leaf that requires grad)

    @property
    def arg(self) -> torch.Tensor:
        """What the op's module is called with: the ids, or the layer_norm input."""
        return self.x if self.x is not None else self.ids


def shapes(
    vocabs: list[int] | None, dims: list[int] | None, tokens: list[int] | None, gpu: bool, quick: bool
) -> list[tuple[int, int, int]]:
    """(vocab, dim, tokens) triples: the defaults, or the cross product of what was asked."""
    if not gpu and not (vocabs or dims or tokens):
        return list(QUICK_CPU_SHAPES if quick else CPU_SHAPES)
    if vocabs or dims:
        # A list not given takes the defaults of this machine and mode (a CPU or --quick run: its one shape).
        if gpu and not quick:
            default_vocabs, default_dims = LM_VOCABS, LM_DIMS
        elif gpu:
            default_vocabs, default_dims = [v for v, _ in QUICK_GPU_PAIRS], [d for _, d in QUICK_GPU_PAIRS]
        else:
            shape = (QUICK_CPU_SHAPES if quick else CPU_SHAPES)[0]
            default_vocabs, default_dims = [shape[0]], [shape[1]]
        pairs = list(itertools.product(vocabs or default_vocabs, dims or default_dims))
    elif gpu:
        pairs = list(QUICK_GPU_PAIRS if quick else LM_PAIRS)
    else:
        pairs = [(v, d) for v, d, _ in (QUICK_CPU_SHAPES if quick else CPU_SHAPES)]
    if not tokens:
        if gpu:
            tokens = list(QUICK_GPU_TOKENS if quick else LM_TOKENS)
        else:
            tokens = [n for _, _, n in (QUICK_CPU_SHAPES if quick else CPU_SHAPES)]
    return [(v, d, n) for v, d in pairs for n in tokens]


def build_cases(
    ops: list[str], triples: list[tuple[int, int, int]], dists: list[str], dtypes: list[str]
) -> list[Case]:
    """Every case, grouped by op then shape, so consecutive cases share inputs and compiled kernels.
    ``layer_norm`` has no table and no ids: one case per (dim, tokens, dtype)."""
    cases: list[Case] = []
    for op in ops:
        for v, d, n in triples:
            for dtype in dtypes:
                for dist in dists if op in TABLE_OPS else [NO_DIST]:
                    case = Case(op, v if op in TABLE_OPS else 0, d, n, dist, dtype)
                    if case not in cases:
                        cases.append(case)
    return cases


def validate_cases(gpu: bool, quick: bool) -> tuple[list[Case], list[Case]]:
    """(cases, the subset also measured against torch.compile) of ``--validate``.

    On a GPU: the three §5 (vocab, dim) pairs × N = 16384 (the middle of 8–32K per step) × Zipf ids ×
    bfloat16 and float32 × every op, plus uniform ids for the embedding at (32000, 2048): 26 cases, which
    cover every vocab, dim, dtype and id distribution of §5 once and leave room in 8 minutes for the
    correctness sweep and the tuning. Ordered bfloat16 first and op by op within a shape, so that a run cut
    short by its time budget still has every op. torch.compile (two modes, each a compile of tens of
    seconds or more) runs on one shape per op: (50257, 768) bfloat16, measured last (StableEmbedding first,
    whose targets name torch.compile), each mode only when the time left holds its compiles.
    Without a GPU: the interpreter shape, bfloat16 and float32 (``quick``: bfloat16, V=500 D=32 N=64).
    """
    if gpu:
        pairs, tokens, dtypes = LM_PAIRS, VALIDATE_TOKENS, ["bfloat16", "float32"]
    else:
        (v, d, tokens), = QUICK_CPU_SHAPES if quick else CPU_SHAPES
        pairs, dtypes = ((v, d),), (["bfloat16"] if quick else ["bfloat16", "float32"])
    cases = [
        Case(op, v if op in TABLE_OPS else 0, d, tokens, "zipf" if op in TABLE_OPS else NO_DIST, dtype)
        for dtype in dtypes for v, d in pairs for op in OPS
    ]
    if gpu:
        cases += [Case("embedding", 32000, 2048, tokens, "uniform", dtype) for dtype in dtypes]
    compiled_pair = pairs[0]
    # StableEmbedding first: its targets are the ones judged against torch.compile.
    subset = [c for op in ("stable", "embedding", "layer_norm") for c in cases
              if c.op == op and c.dtype == dtypes[0] and c.dim == compiled_pair[1] and c.dist != "uniform"]
    if gpu:  # measured last: with the compile peers when the time budget allows, else without them
        cases = [c for c in cases if c not in subset] + subset
    return cases, subset


#: The most categories torch.multinomial takes.
MULTINOMIAL_MAX = 2**24


def make_ids(case: Case, generator: torch.Generator) -> torch.Tensor:
    """``case.tokens`` ids in ``[0, vocab)`` on the CPU.

    ``zipf``: rank k drawn with probability ∝ 1/k^s (s = :data:`ZIPF_EXPONENT`), ranks mapped to rows by a
    random permutation (hot tokens are scattered over the table); ``uniform``: every row equally likely.
    """
    if case.dist == "uniform":
        return torch.randint(0, case.vocab, (case.tokens,), generator=generator, dtype=INDEX_DTYPE)
    ranks = torch.arange(1, case.vocab + 1, dtype=torch.float64)
    probs = ranks.pow(-ZIPF_EXPONENT)
    if case.vocab <= MULTINOMIAL_MAX:
        drawn = torch.multinomial(probs, case.tokens, replacement=True, generator=generator)
    else:  # torch.multinomial takes at most 2**24 categories: invert the cumulative distribution instead
        cdf = probs.cumsum(0)
        uniform = torch.rand(case.tokens, generator=generator, dtype=torch.float64) * cdf[-1]
        drawn = torch.searchsorted(cdf, uniform).clamp_(max=case.vocab - 1)
    rows = torch.randperm(case.vocab, generator=generator)
    return rows[drawn].to(INDEX_DTYPE)


def case_bytes(case: Case) -> int:
    """A generous estimate of the memory one case needs at its peak: the table and the output gradient in
    their dtype, their float64 copies and gradients for the oracle, and the outputs of a few implementations."""
    element = torch.empty((), dtype=case.torch_dtype).element_size()
    table = case.vocab * case.dim
    rows = case.tokens * case.dim
    return table * (3 * element + 2 * 8) + rows * (6 * element + 4 * 8) + case.vocab * 8


#: Without a GPU the kernels run under Triton's interpreter (numpy, element by element in places): tables
#: and token rows up to this many elements, and rows up to INTERPRETER_MAX_DIM wide, finish in minutes.
INTERPRETER_MAX_ELEMENTS = 2**22
INTERPRETER_MAX_DIM = 8192


def memory_problem(selected: list[Case], device: torch.device) -> str | None:
    """Why the largest case cannot run here (None when it can): said before any work. Under the interpreter
    (no GPU) shapes are kept interpreter-sized; elsewhere the estimate must fit the device's memory."""
    if device.type != "cuda":
        for case in selected:
            if max(case.vocab, case.tokens) * case.dim > INTERPRETER_MAX_ELEMENTS or case.dim > INTERPRETER_MAX_DIM:
                return (f"{case.label()} is too large for the Triton interpreter (no GPU here): keep vocab x dim and "
                        f"tokens x dim within {INTERPRETER_MAX_ELEMENTS} elements and dim within "
                        f"{INTERPRETER_MAX_DIM}")
    largest = max(selected, key=case_bytes)
    need = case_bytes(largest)
    if device.type == "cuda":
        have, where = torch.cuda.mem_get_info(device)[1], "this GPU has"
    else:
        import os

        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    if need <= have:
        return None
    return (f"the largest case ({largest.label()}) needs about {need / 2**30:.1f} GiB; {where} "
            f"{have / 2**30:.1f} GiB: choose smaller --vocab/--dim/--tokens")


def id_stats(ids: torch.Tensor) -> tuple[int, int]:
    """(distinct ids U, Σ ⌈count/10⌉ over distinct ids): what the bytes models need of an id batch.

    >>> id_stats(torch.tensor([3, 3, 5] + [7] * 11))
    (3, 4)
    """
    if not ids.numel():
        return 0, 0
    _, counts = torch.unique(ids.reshape(-1), return_counts=True)
    return int(counts.numel()), int(((counts + 9) // 10).sum())


def case_ids(case: Case) -> torch.Tensor:
    """The ids of a table case (on the CPU), as :func:`make_inputs` draws them."""
    return make_ids(case, torch.Generator().manual_seed(case.seed()))


def make_inputs(case: Case, device: torch.device) -> Inputs:
    """Random inputs for a case (never zeros) from seeds fixed by the case; the ids are drawn on the CPU,
    the large tensors directly on ``device``."""
    gen = torch.Generator(device).manual_seed(case.seed())
    dtype = case.torch_dtype
    if case.op not in TABLE_OPS:
        x = torch.randn(case.tokens, case.dim, generator=gen, device=device).to(dtype).requires_grad_(True)
        norm_weight = (1.0 + 0.1 * torch.randn(case.dim, generator=gen, device=device)).to(dtype)
        norm_bias = (0.1 * torch.randn(case.dim, generator=gen, device=device)).to(dtype)
        grad_out = torch.randn(case.tokens, case.dim, generator=gen, device=device).to(dtype)
        ids = torch.empty(0, dtype=INDEX_DTYPE, device=device)
        weight = torch.empty(0, case.dim, dtype=dtype, device=device)
        return Inputs(ids, weight, norm_weight, norm_bias, grad_out, 0, 0, x)
    ids = case_ids(case)
    weight = torch.randn(case.vocab, case.dim, generator=gen, device=device).to(dtype)
    norm_weight = 1.0 + 0.1 * torch.randn(case.dim, generator=gen, device=device)
    norm_bias = 0.1 * torch.randn(case.dim, generator=gen, device=device)
    grad_out = torch.randn(case.tokens, case.dim, generator=gen, device=device).to(dtype)
    unique, segments = id_stats(ids)
    return Inputs(ids.to(device), weight, norm_weight, norm_bias, grad_out, unique, segments)
