"""The README's table of the bytes models at the LM shapes, and the static roofline of every kernel there:
models, not measurements.

For each op and pass, bfloat16 and float32, and each §5 (vocab, dim) pair at N = 16384 Zipf ids: the
minimum bytes, triton_embed's own model, PyTorch eager's (which is bitsandbytes': the same ops) and the
speed-up the two predict. U and S come from the benchmark's own Zipf draw for the shape (its fixed seed).
Then, per kernel, dtype and D, whether its compiled code would be issue-, latency- or memory-bound on an
H100 and a B200 (``roofline.py``). ``python -m triton_embed.bench.bytes_table`` prints both; a test keeps
the README's copy equal to it.
"""
from __future__ import annotations

from . import bytes_model, roofline
from .cases import LM_PAIRS, VALIDATE_TOKENS, Case, case_ids, id_stats

ROWS = (("embedding", "forward"), ("embedding", "backward"), ("stable", "forward"), ("stable", "backward"),
        ("layer_norm", "forward"), ("layer_norm", "backward"), ("renorm", "forward"))
ELEMENT = {"bfloat16": 2, "float32": 4}


def shape_stats(vocab: int, dim: int, tokens: int) -> tuple[int, int]:
    """(U, S) of the benchmark's Zipf ids for a shape (the seed depends on V, D, N and the distribution)."""
    return id_stats(case_ids(Case("embedding", vocab, dim, tokens, "zipf", "float32")))


def _cell(op: str, pass_: str, sizes: bytes_model.Sizes) -> str:
    least = bytes_model.minimum(op, pass_, sizes)
    ours = bytes_model.implementation("triton_embed", op, pass_, sizes)
    eager = bytes_model.implementation("reference", op, pass_, sizes)
    return f"{least / 1e6:.1f} / {ours / 1e6:.1f} / {eager / 1e6:.1f} ({eager / ours:.2f}x)"


def table(tokens: int = VALIDATE_TOKENS) -> str:
    """The markdown table (and the line of U, S per shape above it)."""
    stats = {pair: shape_stats(*pair, tokens) for pair in LM_PAIRS}
    lines = [f"N = {tokens} Zipf ids; distinct ids U (and PyTorch's partial segments S) of the benchmark's draw: "
             + ", ".join(f"{v}×{d}: U = {u}, S = {s}" for (v, d), (u, s) in stats.items()) + ".", ""]
    head = " | ".join(f"V×D = {v}×{d}" for v, d in LM_PAIRS)
    lines += [f"| op | pass | dtype | {head} |", "|---|---|---|" + "---|" * len(LM_PAIRS)]
    for op, pass_ in ROWS:
        for dtype, elt in ELEMENT.items():
            cells = []
            for (vocab, dim), (unique, segments) in stats.items():
                sizes = bytes_model.Sizes(tokens, dim, vocab, unique, segments, elt)
                cells.append(_cell(op, pass_, sizes))
            lines.append(f"| {op} | {pass_} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + roofline_section()


def roofline_section() -> str:
    """The static roofline: its legend, the table, and the kernels it calls issue-bound on an H100."""
    from .roofline_data import TRITON_VERSION

    remaining = roofline.remaining_note()
    return (f"Static roofline (a model from the compiled code, not a measurement; sm_90a and sm_100a SASS from "
            f"Triton {TRITON_VERSION}, default configs; `python tests/aot/aot_roofline.py --write "
            f"bench/roofline_data.py` regenerates it). {roofline.legend()}\n\n{roofline.table()}\n\n{remaining}")


if __name__ == "__main__":
    print(table())
