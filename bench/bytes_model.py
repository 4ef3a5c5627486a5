"""Bytes models: the fewest bytes each op must move through GPU memory, for achieved GB/s.

Symbols: N tokens, D embedding dim, V vocab rows, U distinct ids among the N (rows the weight gradient
touches), e bytes per weight element (4 float32, 2 bfloat16), i bytes per id (8, int64). γ, β and their
gradients are float32 (StableEmbedding's LayerNorm is created without a dtype).

The dense weight gradient is V×D, but only U rows carry data: the other V−U rows are the zero-fill that
every implementation pays (``torch.zeros`` of V×D). The fill is timed apart (a ``torch.zeros(V, D)`` in the
weight dtype) and reported in its own column; the backward figures count the bytes below and divide them by
(backward time − fill time).
"""
from __future__ import annotations

#: The models in words, written to results.json and report.md.
MODELS: dict[str, dict[str, str]] = {
    "embedding": {
        "forward": "N·i (ids) + N·D·e (rows read) + N·D·e (output written)",
        "backward": "N·D·e (output gradient read) + N·i (ids) + U·D·e (touched weight-gradient rows written);"
        " zero-fill of the other rows timed apart",
        "fwd+bwd": "forward + backward",
    },
    "stable": {
        "forward": "N·i (ids) + N·D·e (rows read) + 2·D·4 (γ, β) + N·D·e (output written)",
        "backward": "N·D·e (output gradient read) + N·i (ids) + N·D·e (rows re-read to recompute the"
        " normalised input) + 2·D·4 (γ, β) + U·D·e (touched weight-gradient rows written) + 2·D·4 (dγ, dβ"
        " written); zero-fill of the other rows timed apart",
        "fwd+bwd": "forward + backward",
    },
}

FILL_MODEL = "V·D·e written (torch.zeros of the dense weight gradient)"
COPY_MODEL = "2·S bytes for dst.copy_(src) of S bytes (one read, one write)"


def op_bytes(op: str, pass_: str, tokens: int, dim: int, unique: int, elt: int, idx_elt: int = 8) -> int:
    """Bytes of :data:`MODELS` ``[op][pass_]`` for one case.

    >>> op_bytes("embedding", "forward", tokens=10, dim=4, unique=3, elt=4)
    400
    >>> op_bytes("embedding", "backward", tokens=10, dim=4, unique=3, elt=4)
    288
    """
    n, d = tokens, dim
    if pass_ == "fwd+bwd":
        forward = op_bytes(op, "forward", n, d, unique, elt, idx_elt)
        return forward + op_bytes(op, "backward", n, d, unique, elt, idx_elt)
    if op == "embedding":
        if pass_ == "forward":
            return n * idx_elt + 2 * n * d * elt
        if pass_ == "backward":
            return n * d * elt + n * idx_elt + unique * d * elt
    if op == "stable":
        if pass_ == "forward":
            return n * idx_elt + 2 * n * d * elt + 2 * d * 4
        if pass_ == "backward":
            return 2 * n * d * elt + n * idx_elt + 2 * d * 4 + unique * d * elt + 2 * d * 4
    raise ValueError(f"no bytes model for op {op!r} pass {pass_!r}")


def fill_bytes(vocab: int, dim: int, elt: int) -> int:
    """Bytes the zero-fill of the dense V×D weight gradient writes."""
    return vocab * dim * elt
