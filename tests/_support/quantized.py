"""The quantized modules by storage format, as the tests of ``tests/quantized/`` build them."""
from __future__ import annotations

import triton_embed

#: Every storage format: int8 rows with a scale each, and the two 4-bit codes.
FORMATS = ["int8", "nf4", "fp4"]


def quantized_class(fmt: str, stable: bool = False) -> tuple[type, dict]:
    """(the module class of ``fmt``, the keyword arguments that pick the format): ``Embedding8bit`` or
    ``Embedding4bit`` (``StableEmbedding...`` when ``stable``), with ``quant_type`` for the 4-bit ones."""
    if fmt == "int8":
        return (triton_embed.StableEmbedding8bit if stable else triton_embed.Embedding8bit), {}
    return (triton_embed.StableEmbedding4bit if stable else triton_embed.Embedding4bit), {"quant_type": fmt}
