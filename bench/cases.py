"""The benchmark cases (op × shape × id distribution × dtype) and their inputs.

Defaults on a GPU, from DESIGN.md §5 (LM shapes). The full cross product of vocab × dim × tokens × dist
× dtype × op is 216 cases: too many for a routine run. The default pairs each vocab with one dim, as real
models do, so that every vocab and every dim of §5 appears once:

========================  ======  =====
model                     vocab   dim
========================  ======  =====
GPT-2 small               50257   768
TinyLlama-1.1B            32000   2048
Llama-3-8B                128256  4096
========================  ======  =====

× tokens 8192 and 32768 (the two ends of "8–32K per step") × Zipf and uniform ids × float32 and bfloat16
× embedding and stable: 48 cases. ``--vocab``/``--dim`` given on the command line switch to the cross
product of the lists (a list not given takes all three §5 values). ``--quick`` is one small LM shape.

Without a GPU the kernels run under the Triton interpreter, which executes every program in Python:
the default there is one small shape (V=1000, D=40, N=72: partial tiles in both dimensions) × Zipf ids
(hot tokens exercise both backward paths; ``--dist`` adds uniform) × both dtypes × both ops, checked
against the reference in seconds; ``--quick`` is V=500, D=32, N=64. ``--quick`` on a GPU takes Zipf ids only.
"""
from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import torch

OPS = ("embedding", "stable")
DISTS = ("zipf", "uniform")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

LM_VOCABS = (32000, 50257, 128256)
LM_DIMS = (768, 2048, 4096)
#: (vocab, dim) pairs of real models: the default GPU shapes.
LM_PAIRS = ((50257, 768), (32000, 2048), (128256, 4096))
LM_TOKENS = (8192, 32768)
QUICK_GPU_PAIRS = ((50257, 2048),)
QUICK_GPU_TOKENS = (16384,)

#: CPU (interpreter) (vocab, dim, tokens): partial tiles in both the token and the column dimension
#: (the interpreter configs use 64-wide tiles). The interpreter runs every program in Python, the
#: deterministic backward's sort + two launches cost about a second even at this size.
CPU_SHAPES = ((1000, 40, 72),)
QUICK_CPU_SHAPES = ((500, 32, 64),)

#: Exponent of the Zipf law for token ids (≈1 for natural-language text).
ZIPF_EXPONENT = 1.0
INDEX_DTYPE = torch.int64


@dataclass(frozen=True)
class Case:
    """One benchmark case: an op at one shape, id distribution and weight dtype."""

    op: str
    vocab: int
    dim: int
    tokens: int
    dist: str
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weight dtype as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    def label(self) -> str:
        """Short human-readable name, e.g. ``embedding V=50257 D=768 N=8192 zipf bfloat16``."""
        return f"{self.op} V={self.vocab} D={self.dim} N={self.tokens} {self.dist} {self.dtype}"

    def seed(self) -> int:
        """A seed fixed by the shape, so every run and every implementation sees the same data."""
        return zlib.crc32(f"{self.vocab}|{self.dim}|{self.tokens}|{self.dist}".encode())


@dataclass
class Inputs:
    """The tensors shared by every implementation of a case."""

    ids: torch.Tensor  # (N,) int64
    weight: torch.Tensor  # (V, D) in the case dtype: copied into every module
    norm_weight: torch.Tensor  # (D,) float32, γ of StableEmbedding's LayerNorm
    norm_bias: torch.Tensor  # (D,) float32, β
    grad_out: torch.Tensor  # (N, D) in the case dtype: d loss / d output
    unique_ids: int  # distinct ids in ``ids`` (rows the weight gradient touches)


def shapes(
    vocabs: list[int] | None, dims: list[int] | None, tokens: list[int] | None, gpu: bool, quick: bool
) -> list[tuple[int, int, int]]:
    """(vocab, dim, tokens) triples: the defaults, or the cross product of what was asked."""
    if not gpu and not (vocabs or dims or tokens):
        return list(QUICK_CPU_SHAPES if quick else CPU_SHAPES)
    if vocabs or dims:
        pairs = list(itertools.product(vocabs or LM_VOCABS, dims or LM_DIMS))
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
    """Every case, grouped by op then shape, so consecutive cases share inputs and compiled kernels."""
    return [
        Case(op, v, d, n, dist, dtype)
        for op in ops
        for v, d, n in triples
        for dtype in dtypes
        for dist in dists
    ]


def make_ids(case: Case, generator: torch.Generator) -> torch.Tensor:
    """``case.tokens`` ids in ``[0, vocab)`` on the CPU.

    ``zipf``: rank k drawn with probability ∝ 1/k^s (s = :data:`ZIPF_EXPONENT`), ranks mapped to rows by a
    random permutation (hot tokens are scattered over the table); ``uniform``: every row equally likely.
    """
    if case.dist == "uniform":
        return torch.randint(0, case.vocab, (case.tokens,), generator=generator, dtype=INDEX_DTYPE)
    ranks = torch.arange(1, case.vocab + 1, dtype=torch.float64)
    probs = ranks.pow(-ZIPF_EXPONENT)
    drawn = torch.multinomial(probs, case.tokens, replacement=True, generator=generator)
    rows = torch.randperm(case.vocab, generator=generator)
    return rows[drawn].to(INDEX_DTYPE)


def make_inputs(case: Case, device: torch.device) -> Inputs:
    """Random inputs for a case (never zeros) from seeds fixed by the case; the ids are drawn on the CPU,
    the large tensors directly on ``device``."""
    ids = make_ids(case, torch.Generator().manual_seed(case.seed()))
    gen = torch.Generator(device).manual_seed(case.seed())
    dtype = case.torch_dtype
    weight = torch.randn(case.vocab, case.dim, generator=gen, device=device).to(dtype)
    norm_weight = 1.0 + 0.1 * torch.randn(case.dim, generator=gen, device=device)
    norm_bias = 0.1 * torch.randn(case.dim, generator=gen, device=device)
    grad_out = torch.randn(case.tokens, case.dim, generator=gen, device=device).to(dtype)
    unique_ids = int(torch.unique(ids).numel())
    return Inputs(ids.to(device), weight, norm_weight, norm_bias, grad_out, unique_ids)
