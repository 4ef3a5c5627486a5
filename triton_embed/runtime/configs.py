"""The candidate launch configs of every kernel family, kept as data (``triton_embed.tuning`` chooses among them
and re-exports them), the one config per family under the interpreter, and how a config splits into kernel
constexprs and launch options.

>>> split({"BLOCK_T": 8, "BLOCK_D": 512, "num_warps": 4, "num_stages": 1})
({'BLOCK_T': 8, 'BLOCK_D': 512}, {'num_warps': 4, 'num_stages': 1})
"""
from __future__ import annotations

Config = dict[str, int]

#: Candidate launch configs per kernel family. Block keys are the kernels' constexprs (or, as ``ELEMS``, a
#: budget the launcher turns into them: ``ops/tiles.py``); num_warps/num_stages are launch options. The
#: first entry is the default used without tuning. No entry changes a result's bits: the block sizes that
#: shape a sum are fixed by the row width alone (``ops/tiles.py``), so tuning changes speed only.
_FORWARD_ROWS = [
    {"ELEMS": 8192, "num_stages": 1},
    {"ELEMS": 1024, "num_stages": 1},
]
_BACKWARD_ROWS = [
    {"num_stages": 1},
]
_GRADIENT_ROWS = [
    {"BLOCK_V": 16, "BLOCK_D": 2048, "num_warps": 8, "num_stages": 1},
    {"BLOCK_V": 32, "BLOCK_D": 1024, "num_warps": 4, "num_stages": 1},
    {"BLOCK_V": 8, "BLOCK_D": 4096, "num_warps": 16, "num_stages": 1},
    {"BLOCK_V": 64, "BLOCK_D": 1024, "num_warps": 8, "num_stages": 1},
    {"BLOCK_V": 4, "BLOCK_D": 8192, "num_warps": 16, "num_stages": 1},
]
CONFIGS: dict[str, list[Config]] = {
    "gather": [
        {"BLOCK_T": 8, "BLOCK_D": 512, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 4, "BLOCK_D": 1024, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 16, "BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 16, "BLOCK_D": 512, "num_warps": 8, "num_stages": 1},
        {"BLOCK_T": 32, "BLOCK_D": 128, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 2, "BLOCK_D": 2048, "num_warps": 8, "num_stages": 1},
    ],
    # max_norm: rows of the referenced ids per program (BLOCK_D is fixed by D: the norm is a sum).
    "renorm": [
        {"ELEMS": 4096, "num_warps": 4, "num_stages": 1},
        {"ELEMS": 1024, "num_warps": 4, "num_stages": 1},
        {"ELEMS": 8192, "num_warps": 8, "num_stages": 1},
    ],
    # The dense weight gradient (kernels/embedding_backward.py): the crossing-run pieces, one program per
    # chunk of sorted positions walking BLOCK_D columns at a time; then every row written once, BLOCK_V
    # rows per program. "stable_rows" is the same kernel finishing StableEmbedding's dγ/dβ too.
    "embedding_pieces": [
        {"BLOCK_D": 2048, "num_warps": 8, "num_stages": 1},
        {"BLOCK_D": 1024, "num_warps": 4, "num_stages": 1},
        {"BLOCK_D": 4096, "num_warps": 16, "num_stages": 1},
        {"BLOCK_D": 512, "num_warps": 4, "num_stages": 1},
    ],
    "embedding_rows": [dict(c) for c in _GRADIENT_ROWS],
    "stable_rows": [dict(c) for c in _GRADIENT_ROWS],
    # StableEmbedding's backward for a table in the default dtype (kernels/stable_embedding_runs.py): BLOCK_V
    # rows x BLOCK_D columns per store of the zeroing programs; the run programs hold a whole row.
    "stable_runs": [dict(c) for c in _GRADIENT_ROWS],
    # LayerNorm and StableEmbedding: a row up to 8192 wide is held in registers whole (ops/tiles.py), the
    # warps fixed by D (they order the row sums). Forward: ELEMS bounds the rows x columns tile (halved for
    # float64 statistics): one row per program, or as many as the registers allow. Backward: the rows per
    # tile are fixed by D too, so there is nothing to tune.
    "layer_norm": [dict(c) for c in _FORWARD_ROWS],
    "stable_forward": [dict(c) for c in _FORWARD_ROWS],
    "layer_norm_backward": [dict(c) for c in _BACKWARD_ROWS],
    "stable_backward": [dict(c) for c in _BACKWARD_ROWS],
    # dγ/dβ from the backward's per-program partials: BLOCK_D columns per program.
    "layer_norm_param_grad": [
        {"BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
        {"BLOCK_D": 128, "num_warps": 4, "num_stages": 1},
        {"BLOCK_D": 512, "num_warps": 8, "num_stages": 1},
    ],
    # Quantized tables (kernels/quantized.py): the lookup's tokens x columns tiles (each element is dequantized
    # on its own: any config gives the same bits), and the fused StableEmbedding, tiled as "stable_forward" and
    # "stable_backward" are.
    "quantized_gather": [
        {"BLOCK_T": 8, "BLOCK_D": 512, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 4, "BLOCK_D": 1024, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 16, "BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
        {"BLOCK_T": 2, "BLOCK_D": 2048, "num_warps": 8, "num_stages": 1},
    ],
    "quantized_stable_forward": [dict(c) for c in _FORWARD_ROWS],
    "quantized_stable_backward": [dict(c) for c in _BACKWARD_ROWS],
}

#: One config per kernel under the interpreter: no GPU benchmarker there, and big tiles keep the
#: number of interpreted programs small; narrow column blocks make the tests' small rows walk several.
INTERPRETER_CONFIGS: dict[str, Config] = {
    "gather": {"BLOCK_T": 64, "BLOCK_D": 64, "num_warps": 4, "num_stages": 1},
    "renorm": {"ELEMS": 1024, "num_warps": 4, "num_stages": 1},
    "embedding_pieces": {"BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
    "embedding_rows": {"BLOCK_V": 8, "BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
    "stable_rows": {"BLOCK_V": 8, "BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
    "stable_runs": {"BLOCK_V": 8, "BLOCK_D": 256, "num_warps": 4, "num_stages": 1},
    "layer_norm": {"ELEMS": 1024, "num_warps": 4, "num_stages": 1},
    "stable_forward": {"ELEMS": 1024, "num_warps": 4, "num_stages": 1},
    "layer_norm_backward": {"num_warps": 4, "num_stages": 1},
    "stable_backward": {"num_warps": 4, "num_stages": 1},
    "layer_norm_param_grad": {"BLOCK_D": 64, "num_warps": 4, "num_stages": 1},
    "quantized_gather": {"BLOCK_T": 64, "BLOCK_D": 64, "num_warps": 4, "num_stages": 1},
    "quantized_stable_forward": {"ELEMS": 1024, "num_warps": 4, "num_stages": 1},
    "quantized_stable_backward": {"num_warps": 4, "num_stages": 1},
}

LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion")


def split(config: Config) -> tuple[dict[str, int], dict[str, int]]:
    """(kernel constexprs, launch options) of a config."""
    meta = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
    options = {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}
    return meta, options


__all__ = ["Config", "CONFIGS", "INTERPRETER_CONFIGS", "LAUNCH_OPTIONS", "split"]
