"""Hypothesis strategies shared by the property tests: tables, index tensors and embedding options."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NORM_TYPES = (1.0, 2.0, math.inf, 3.0, 0.5)


@dataclass
class IndexCase:
    shape: tuple[int, ...]
    dtype: torch.dtype
    distribution: str
    seed: int

    def make(self, num_embeddings: int, device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        count = math.prod(self.shape)
        if self.distribution == "uniform":
            ids = torch.randint(0, num_embeddings, (count,), generator=gen)
        elif self.distribution == "hot":  # one id everywhere: the longest possible segment
            ids = torch.full((count,), int(torch.randint(0, num_embeddings, (1,), generator=gen)))
        else:  # zipf-like: a few ids dominate, as in real text
            ranks = torch.arange(1, num_embeddings + 1, dtype=torch.float64)
            probs = 1.0 / ranks ** 1.2
            ids = torch.multinomial(probs, count, replacement=True, generator=gen) if count else ids_empty()
        return ids.reshape(self.shape).to(self.dtype).to(device)


def ids_empty() -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64)


@st.composite
def index_cases(draw, max_tokens: int = 48) -> IndexCase:
    rank = draw(st.sampled_from([0, 1, 1, 2, 3]))
    if rank == 0:
        shape: tuple[int, ...] = ()
    else:
        shape = tuple(draw(st.integers(0 if rank == 1 else 1, 6 if rank > 1 else max_tokens)) for _ in range(rank))
        while math.prod(shape) > max_tokens:
            shape = tuple(max(1, s // 2) for s in shape)
    return IndexCase(
        shape=shape,
        dtype=draw(st.sampled_from([torch.int64, torch.int32])),
        distribution=draw(st.sampled_from(["uniform", "zipf", "hot"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclass
class TableCase:
    num_embeddings: int
    dim: int
    dtype: torch.dtype
    layout: str  # "contiguous" | "transposed" | "sliced": strides other than (D, 1)
    seed: int

    def make(self, device, requires_grad: bool = True) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        V, D = self.num_embeddings, self.dim
        if self.layout == "transposed":
            base = torch.randn(D, V, generator=gen).t()
        elif self.layout == "sliced":
            base = torch.randn(V, 2 * D + 1, generator=gen)[:, 1 : 2 * D + 1 : 2]
        else:
            base = torch.randn(V, D, generator=gen)
        # to(device) keeps strides; the dtype cast must too, so cast through empty_strided.
        table = torch.empty_strided(base.shape, base.stride(), dtype=self.dtype, device=device)
        table.copy_(base)
        return table.requires_grad_(requires_grad)


@st.composite
def table_cases(draw, max_rows: int = 40, max_dim: int = 70) -> TableCase:
    return TableCase(
        num_embeddings=draw(st.integers(1, max_rows)),
        dim=draw(st.one_of(st.just(1), st.integers(1, max_dim))),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        layout=draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@st.composite
def padding_choices(draw, num_embeddings: int):
    """None, a positive row, a negative row, or a row no token uses (decided later by the test)."""
    kind = draw(st.sampled_from(["none", "positive", "negative"]))
    if kind == "none":
        return None
    row = draw(st.integers(0, num_embeddings - 1))
    return row if kind == "positive" else row - num_embeddings


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """``torch.set_default_dtype(dtype)`` for the block, restored after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def make_ids(gen, shape, num_embeddings, distribution, padding_idx=None, index_dtype=torch.int64):
    """Ids of ``shape`` drawn uniformly, skewed towards small ids (Zipf-like), or all one hot id; with a
    padding row (negative counts from the end), about a third of the tokens are padding."""
    if distribution == "uniform":
        ids = torch.randint(0, num_embeddings, shape, generator=gen)
    elif distribution == "skewed":
        ids = (torch.rand(shape, generator=gen) ** 3 * num_embeddings).long().clamp_max(num_embeddings - 1)
    else:
        ids = torch.full(shape, int(torch.randint(0, num_embeddings, (), generator=gen)), dtype=torch.long)
    if padding_idx is not None and ids.numel():
        ids.view(-1)[::3] = padding_idx % num_embeddings
    return ids.to(index_dtype)
