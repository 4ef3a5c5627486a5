"""The traffic budget of each public op: Triton launches, host syncs, and bytes of the tensors it makes.

One table, checked by ``tests/ops/test_traffic.py`` (a recorder over aten ops and Triton launches, the kernels
under the interpreter) and printed in the README. Bytes count every tensor an op allocates, its outputs
included; a dense weight gradient must be the only tensor of V·D elements a backward makes.

Symbols: N tokens, D embedding dim, V table rows, e bytes per table element, i bytes per id, a bytes per
accumulator element (4; 8 for float64), P dγ/dβ partial rows (``ops.layer_norm.backward_programs``: at most
min(N, 1024)), C = ⌈N/32⌉ chunks of sorted positions.

>>> budget("embedding backward").launches
2
>>> budget("embedding backward").bytes(Sizes(tokens=64, dim=16, rows=1000, element=2, index=8))
33280
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .embedding_backward import CHUNK


@dataclass(frozen=True)
class Sizes:
    """The sizes a budget is a function of."""

    tokens: int
    dim: int
    rows: int = 0
    element: int = 4
    index: int = 8
    accumulator: int = 4
    #: dγ/dβ partial rows of a LayerNorm-family backward (0 where there are none).
    partials: int = 0
    #: bytes per LayerNorm parameter element (their gradients are made in their dtype).
    param: int = 4


@dataclass(frozen=True)
class Budget:
    """What one op may cost: Triton launches (exactly), host syncs (exactly), bytes of tensors made (at
    most), and the bytes formula in words."""

    launches: int
    syncs: int
    bytes: Callable[[Sizes], int]
    formula: str


def _chunks(s: Sizes) -> int:
    return -(-s.tokens // CHUNK)


def _sorted(s: Sizes) -> int:
    return s.tokens * (s.index + 8)


BUDGETS: dict[str, Budget] = {
    "embedding forward": Budget(1, 0, lambda s: s.tokens * s.dim * s.element, "N·D·e (the output)"),
    "embedding forward, max_norm": Budget(
        3, 0, lambda s: s.tokens * s.dim * s.element + 4 * (s.rows + 1),
        "N·D·e + 4·(V+1) (one owner per row, for the renorm)",
    ),
    "embedding backward": Budget(
        2, 0, lambda s: s.rows * s.dim * s.element + _sorted(s) + 2 * _chunks(s) * s.dim * s.accumulator,
        "V·D·e (the gradient, written once) + N·(i+8) (sorted ids and order) + 2·C·D·a (pieces of runs that "
        "cross chunks)",
    ),
    "stable_embedding forward": Budget(
        1, 0, lambda s: s.tokens * s.dim * s.element + 2 * s.tokens * s.accumulator,
        "N·D·e (the output) + 2·N·a (mean, rstd)",
    ),
    "stable_embedding backward": Budget(
        3, 0,
        lambda s: (s.rows * s.dim * s.element + s.tokens * s.dim * s.element + _sorted(s)
                   + 2 * _chunks(s) * s.dim * s.accumulator + 2 * s.partials * s.dim * s.accumulator
                   + 2 * s.dim * s.param),
        "V·D·e (the gradient) + N·D·e (d(emb) rows) + N·(i+8) + 2·C·D·a + 2·P·D·a (dγ/dβ partials) + 2·D·4 "
        "(dγ, dβ)",
    ),
    "stable_embedding backward, table in the default dtype": Budget(
        3, 0,
        lambda s: (s.rows * s.dim * s.element + _sorted(s) + 4 * _chunks(s) * s.dim * s.accumulator
                   + 2 * s.dim * s.param),
        "V·D·e (the gradient) + N·(i+8) + 2·C·D·a (pieces) + 2·C·D·a (dγ/dβ partials, one row per chunk) + "
        "2·D·4 (dγ, dβ): one LayerNorm backward per distinct id, no d(emb) rows",
    ),
    "layer_norm forward": Budget(
        1, 0, lambda s: s.tokens * s.dim * s.element + 2 * s.tokens * s.accumulator,
        "N·D·e (the output) + 2·N·a (mean, rstd)",
    ),
    "layer_norm backward": Budget(
        2, 0, lambda s: s.tokens * s.dim * s.element + 2 * s.partials * s.dim * s.accumulator + 2 * s.dim * s.param,
        "N·D·e (dx) + 2·P·D·a (dγ/dβ partials) + 2·D·4 (dγ, dβ)",
    ),
}


#: The quantized tables' ops (``quantized/ops.py``; printed in the README's quantized section). The table is
#: frozen: a backward makes dγ/dβ only, nothing of V or N·D elements.
QUANTIZED_BUDGETS: dict[str, Budget] = {
    "quantized embedding forward": Budget(1, 0, lambda s: s.tokens * s.dim * s.element, "N·D·e (the output)"),
    "quantized stable_embedding forward": Budget(
        1, 0, lambda s: s.tokens * s.dim * s.element + 2 * s.tokens * s.accumulator,
        "N·D·e (the output) + 2·N·a (mean, rstd)",
    ),
    "quantized stable_embedding backward": Budget(
        2, 0, lambda s: 2 * s.partials * s.dim * s.accumulator + 2 * s.dim * s.param,
        "2·P·D·a (dγ/dβ partials) + 2·D·4 (dγ, dβ)",
    ),
}


def budget(op: str) -> Budget:
    """The budget of ``op`` (a key of :data:`BUDGETS` or :data:`QUANTIZED_BUDGETS`)."""
    return BUDGETS[op] if op in BUDGETS else QUANTIZED_BUDGETS[op]


def markdown_table(budgets: dict[str, Budget] | None = None) -> str:
    """A budget table (default :data:`BUDGETS`) as the README prints it."""
    lines = ["| op | Triton launches | host syncs | bytes of tensors made (at most) |", "|---|---|---|---|"]
    for op, b in (BUDGETS if budgets is None else budgets).items():
        lines.append(f"| {op} | {b.launches} | {b.syncs} | {b.formula} |")
    return "\n".join(lines)


__all__ = ["Sizes", "Budget", "BUDGETS", "QUANTIZED_BUDGETS", "budget", "markdown_table"]
