"""Bytes models: what each op must move through GPU memory, and what each implementation really moves.

Two kinds of model, both formulas of the case's sizes (models, not measurements):

- the **minimum** (:func:`minimum`): the fewest bytes the op must move: the ids, each distinct row it must
  read once, its outputs and, for a dense weight gradient, the compulsory V·D write (a dense gradient is a
  V×D tensor: every element is written, whoever writes it). GB/s and % of copy bandwidth divide *this* by
  the measured time for every implementation, so those columns compare implementations on equal terms;
- each implementation's **own** model (:func:`implementation`): the traffic of the kernels it launches, for
  the CUDA implementations (PyTorch's ATen kernels, Inductor's lowering, Liger's and ours). Their ratio to
  ours is the speed-up the bytes predict (``model_speedup``), printed beside the measured one.

Symbols: N tokens, D dim, V vocab rows, U distinct ids, S = Σ⌈count/10⌉ over the distinct ids (the partial
segments of PyTorch's embedding backward), e bytes per weight element, i bytes per id (8), c = 4 (float32:
PyTorch's default dtype, StableEmbedding's LayerNorm dtype and the math dtype of low-precision ops),
C = ⌈N/32⌉ (our backward's chunks), P (our LayerNorm-family dγ/dβ partial rows, ≤ 1024), M (SM count, 132
assumed: Liger's LayerNorm partials). A stable sort of N (id, position) pairs is counted as an estimate:
N·8 (positions written) + ⌈bits/8⌉ radix passes × 2·N·(i+8) — 64-bit keys for ``torch.sort``, ⌈log₂V⌉
bits in PyTorch's embedding backward. Reads of a hot row's repeats that hit L2 are counted as reads.

>>> s = Sizes(tokens=10, dim=4, vocab=50, unique=3, segments=3, elt=4)
>>> minimum("embedding", "forward", s), minimum("embedding", "backward", s)
(288, 1040)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: The symbols of the models, for results.json and report.md.
SYMBOLS = (
    "N tokens, D dim, V vocab rows, U distinct ids, S = Σ⌈count/10⌉ over the distinct ids (PyTorch's partial "
    "segments), e bytes per weight element, i bytes per id (8), c = 4 (float32), C = ⌈N/32⌉ (our backward's "
    "chunks), P (our dγ/dβ partial rows, ≤ 1024), M (SMs, 132 assumed); sort(b bits) = N·8 + ⌈b/8⌉·2·N·(i+8), "
    "an estimate of a radix sort of (id, position) pairs"
)
#: Bytes of the math dtype of casts and low-precision accumulation (float32).
MATH = 4
#: Streaming multiprocessors assumed for Liger's per-SM LayerNorm partials (H100/H200: 132).
SMS = 132
#: The models in words, written to results.json and report.md.
MINIMUM: dict[str, dict[str, str]] = {
    "embedding": {
        "forward": "N·i (ids) + U·D·e (each distinct row read once) + N·D·e (output written)",
        "backward": "N·i + N·D·e (output gradient read) + V·D·e (the dense gradient: written whole)",
    },
    "stable": {
        "forward": "N·i + U·D·e + 2·D·4 (γ, β) + N·D·e (output)",
        "backward": "N·i + N·D·e (output gradient) + U·D·e (rows, for the normalised input) + D·4 (γ) + "
                    "V·D·e (dense gradient) + 2·D·4 (dγ, dβ)",
    },
    "layer_norm": {
        "forward": "N·D·e (input) + 2·D·e (γ, β) + N·D·e (output)",
        "backward": "N·D·e (output gradient) + N·D·e (input) + D·e (γ) + N·D·e (input gradient) + 2·D·e (dγ, dβ)",
    },
    "renorm": {"forward": "N·i + U·D·e (rows read for their norms and the lookup) + N·D·e (output); rows already "
                          "within max_norm are not written (the timed steady state)"},
}
OWN: dict[str, str] = {
    "triton_embed": "embedding: forward N·i + 2·N·D·e; backward sort(64 bits) + N·i + N·D·e + V·D·e (written once) "
                    "+ 2·N·(i+8) + 4·C·D·4 (crossing-run pieces). stable: forward N·i + 2·N·D·e + 2·D·4 + 2·N·4 "
                    "(mean, rstd); backward, float32 table (D ≤ 4096): the embedding backward's sort, pieces and "
                    "V·D·e on the output gradient + U·D·e (each distinct row) + 2·U·4 + D·4 + 4·C·D·4 (per-chunk "
                    "dγ/dβ partials) + 2·D·4; other tables N·i + N·D·e (rows re-read) + N·D·e (gradient) + N·D·e "
                    "(d(emb) written) + N·D·e (d(emb) read) + 4·P·D·4 + the embedding backward's. layer_norm: "
                    "forward 2·N·D·e + 2·D·e + 2·N·4; backward 3·N·D·e + 2·N·4 + 4·P·D·4 + 3·D·e. renorm: "
                    "4·(V+1) (row owners) + 3·N·i + 2·N·4 + U·D·e + 2·N·D·e",
    "reference": "PyTorch eager (and bitsandbytes: the same ops). embedding: forward N·i + 2·N·D·e; backward "
                 "V·D·e (zero-fill) + sort(log₂V bits) + N·i + N·D·e + 2·S·D·4 (float32 partial-segment sums "
                 "written and read) + U·D·e + 4·N·8 (N ≤ 3072: V·D·e + N·i + N·D·e + U·D·e). stable: the "
                 "lookup, a cast to float32 (bf16/fp16: N·D·(e+4)), LayerNorm in float32 (2·N·D·4 + 2·N·4 + "
                 "2·D·4), a cast back (N·D·(4+e)); backward: casts, LayerNorm backward reading the gradient and "
                 "the input twice (4·N·D·4 + N·D·4 written) and the embedding backward of the d(emb) rows; "
                 "the float32 activation N·D·4 is kept for backward. layer_norm: forward as ours; backward "
                 "4·N·D·e + N·D·e + 4·N·4. renorm: sort(64 bits) + unique + U·D·e + a host sync + the lookup",
    "compile": "torch.compile (Inductor's lowering, reasoned, not inspected per version). embedding backward: "
               "zeros V·D·c + atomic index_put 2·U·D·c + N·i + N·D·e, then a cast V·D·(c+e) when e < c (c = "
               "float32). stable: one fused forward kernel, saving the gathered rows (N·D·e) and the "
               "statistics; backward reads the gradient and the rows three times (row sums, dγ/dβ, the "
               "scatter) + the embedding backward as above. layer_norm: as PyTorch eager. renorm: as eager",
    "liger": "Liger-Kernel. embedding: forward as ours; backward V·D·e (zeros_like) + N·i + N·D·e + 2·U·D·e "
             "(atomic adds in the weight dtype). layer_norm: forward 2·N·D·e + 2·D·e + 2·N·4; backward "
             "3·N·D·e + 2·N·4 + D·e + 4·M·D·4 (per-SM partials) + 2·D·e",
}
COPY_MODEL = "2·S bytes for dst.copy_(src) of S bytes (one read, one write)"
#: Which model each implementation follows.
FAMILY = {"triton_embed": "triton_embed", "reference": "reference", "bitsandbytes": "reference",
          "compile": "compile", "compile-max": "compile", "liger": "liger"}


@dataclass(frozen=True)
class Sizes:
    """The sizes the models are functions of (see the module docstring for the symbols)."""

    tokens: int
    dim: int
    vocab: int = 0
    unique: int = 0
    segments: int = 0
    elt: int = 4
    idx: int = 8


def _sort(n: int, bits: int, idx: int) -> int:
    """Estimated bytes of a stable radix sort of n (key, position) pairs on ``bits`` key bits."""
    return n * 8 + math.ceil(max(bits, 1) / 8) * 2 * n * (idx + 8)


def _partials(tokens: int, dim: int, wide: bool) -> int:
    """P: dγ/dβ partial rows of our LayerNorm-family backward (``ops.layer_norm.backward_programs``)."""
    try:
        from triton_embed.ops.layer_norm import backward_programs
        from triton_embed.ops.tiles import backward_tile

        return backward_programs(tokens, backward_tile({}, dim, wide)[0]["BLOCK_T"])[0]
    except Exception:  # noqa: BLE001 - a model must not fail on a library refactor: the documented bound
        return min(tokens, 1024)


def _runs_max_dim() -> int:
    """The widest float32 row of our per-id StableEmbedding backward (``ops.stable_embedding_runs``)."""
    try:
        from triton_embed.ops.stable_embedding_runs import MAX_BLOCK_D

        return MAX_BLOCK_D
    except Exception:  # noqa: BLE001 - a model must not fail on a library refactor: the documented bound
        return 4096


def minimum(op: str, pass_: str, s: Sizes) -> int:
    """Bytes of :data:`MINIMUM` ``[op][pass_]`` (``fwd+bwd``: forward + backward)."""
    if pass_ == "fwd+bwd":
        return minimum(op, "forward", s) + minimum(op, "backward", s)
    n, d, v, u, e, i = s.tokens, s.dim, s.vocab, s.unique, s.elt, s.idx
    table = {
        ("embedding", "forward"): n * i + u * d * e + n * d * e,
        ("embedding", "backward"): n * i + n * d * e + v * d * e,
        ("stable", "forward"): n * i + u * d * e + 2 * d * 4 + n * d * e,
        ("stable", "backward"): n * i + n * d * e + u * d * e + d * 4 + v * d * e + 2 * d * 4,
        ("layer_norm", "forward"): 2 * n * d * e + 2 * d * e,
        ("layer_norm", "backward"): 3 * n * d * e + 3 * d * e,
        ("renorm", "forward"): n * i + u * d * e + n * d * e,
    }
    if (op, pass_) not in table:
        raise ValueError(f"no bytes model for op {op!r} pass {pass_!r}")
    return table[op, pass_]


def _dense_ours(s: Sizes, rows_read: int) -> int:
    n, d, v, e, i = s.tokens, s.dim, s.vocab, s.elt, s.idx
    chunks = -(-n // 32)
    return _sort(n, 64, i) + n * i + rows_read + v * d * e + 2 * n * (i + 8) + 4 * chunks * d * 4


def _dense_eager(s: Sizes, e: int) -> int:
    n, d, v, u, i = s.tokens, s.dim, s.vocab, s.unique, s.idx
    if n <= 3072:
        return v * d * e + n * i + n * d * e + u * d * e
    bits = max(1, (v - 1).bit_length())
    return v * d * e + _sort(n, bits, i) + n * i + n * d * e + 2 * s.segments * d * 4 + u * d * e + 4 * n * 8


def _dense_inductor(s: Sizes, e: int, rows_read: int) -> int:
    n, d, v, u, i = s.tokens, s.dim, s.vocab, s.unique, s.idx
    c = MATH if e < MATH else e
    cast = v * d * (c + e) if e < c else 0
    return v * d * c + n * i + rows_read + 2 * u * d * c + cast


def _ours(op: str, pass_: str, s: Sizes) -> int | None:
    n, d, v, u, e, i = s.tokens, s.dim, s.vocab, s.unique, s.elt, s.idx
    wide = e == 8
    if op == "embedding":
        return n * i + 2 * n * d * e if pass_ == "forward" else _dense_ours(s, n * d * e)
    if op == "stable":
        if pass_ == "forward":
            return n * i + 2 * n * d * e + 2 * d * 4 + 2 * n * 4
        if e == MATH and d <= _runs_max_dim():  # one LayerNorm backward per distinct id, no d(emb) rows
            chunks = -(-n // 32)
            return _dense_ours(s, n * d * e) + u * d * e + 2 * u * 4 + d * 4 + 4 * chunks * d * 4 + 2 * d * 4
        p = _partials(n, d, wide)
        return n * i + 3 * n * d * e + 2 * n * 4 + d * 4 + 4 * p * d * 4 + 2 * d * 4 + _dense_ours(s, n * d * e)
    if op == "layer_norm":
        if pass_ == "forward":
            return 2 * n * d * e + 2 * d * e + 2 * n * 4
        return 3 * n * d * e + 2 * n * 4 + 4 * _partials(n, d, wide) * d * 4 + 3 * d * e
    if op == "renorm" and pass_ == "forward":
        return 4 * (v + 1) + 3 * n * i + 2 * n * 4 + u * d * e + 2 * n * d * e
    return None


def _layer_norm_eager(pass_: str, n: int, d: int, x: int, p: int) -> int:
    """PyTorch's CUDA LayerNorm on rows of x-byte elements with p-byte γ, β."""
    if pass_ == "forward":
        return 2 * n * d * x + 2 * d * p + 2 * n * 4
    return 4 * n * d * x + n * d * x + 4 * n * 4 + 3 * d * p


def _reference(op: str, pass_: str, s: Sizes) -> int | None:
    n, d, u, e, i = s.tokens, s.dim, s.unique, s.elt, s.idx
    cast = n * d * (e + MATH) if e != MATH else 0  # a .to() between e and float32: read one, write the other
    if op == "embedding":
        return n * i + 2 * n * d * e if pass_ == "forward" else _dense_eager(s, e)
    if op == "stable":
        if pass_ == "forward":
            return n * i + 2 * n * d * e + cast + _layer_norm_eager("forward", n, d, MATH, 4) + cast
        return cast + _layer_norm_eager("backward", n, d, MATH, 4) + cast + _dense_eager(s, e)
    if op == "layer_norm":
        return _layer_norm_eager(pass_, n, d, e, e)
    if op == "renorm" and pass_ == "forward":
        return _sort(n, 64, i) + 3 * n * i + u * d * e + n * i + 2 * n * d * e
    return None


def _compile(op: str, pass_: str, s: Sizes) -> int | None:
    n, d, e, i = s.tokens, s.dim, s.elt, s.idx
    if op == "embedding":
        return n * i + 2 * n * d * e if pass_ == "forward" else _dense_inductor(s, e, n * d * e)
    if op == "stable":
        if pass_ == "forward":
            return n * i + 3 * n * d * e + 2 * d * 4 + 2 * n * 4
        return 6 * n * d * e + 2 * n * 4 + 3 * d * 4 + _dense_inductor(s, e, 0)
    return _reference(op, pass_, s)


def _liger(op: str, pass_: str, s: Sizes) -> int | None:
    n, d, u, e, i = s.tokens, s.dim, s.unique, s.elt, s.idx
    if op == "embedding":
        return n * i + 2 * n * d * e if pass_ == "forward" else s.vocab * d * e + n * i + n * d * e + 2 * u * d * e
    if op == "layer_norm":
        if pass_ == "forward":
            return 2 * n * d * e + 2 * d * e + 2 * n * 4
        return 3 * n * d * e + 2 * n * 4 + d * e + 4 * SMS * d * 4 + 2 * d * e
    return None


_MODELS = {"triton_embed": _ours, "reference": _reference, "compile": _compile, "liger": _liger}


def implementation(impl: str, op: str, pass_: str, s: Sizes) -> int | None:
    """Bytes the implementation ``impl`` moves for ``op``/``pass_`` by its own model (:data:`OWN`);
    ``None`` where it has no model (an op it does not run).

    >>> s = Sizes(tokens=10, dim=4, vocab=50, unique=3, segments=3, elt=2)
    >>> implementation("reference", "embedding", "forward", s), implementation("liger", "stable", "forward", s)
    (240, None)
    """
    family = FAMILY.get(impl)
    if family is None:
        return None
    if pass_ == "fwd+bwd":
        parts = [implementation(impl, op, p, s) for p in ("forward", "backward")]
        return None if None in parts else sum(parts)  # type: ignore[arg-type]
    return _MODELS[family](op, pass_, s)
