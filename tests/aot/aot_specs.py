"""Every kernel's ahead-of-time spec (see ``aot_spec.py`` for what a spec holds, and ``aot_compile.py``), gathered
from one file per kernel family: ``aot_specs_lookup`` (gather, error probe, renorm, embedding backward),
``aot_specs_norm`` (LayerNorm, fused StableEmbedding and its per-id backward), ``aot_specs_quantized``.
"""
from __future__ import annotations

import aot_specs_lookup
import aot_specs_norm
import aot_specs_quantized
from aot_spec import TARGETS, KernelSpec, variant

#: ``max_barriers`` are regression guards: the most any config and case compiles to with ``--all-configs``
#: (tl.sum layouts, the error record's reductions, the fold tree of the dγ/dβ second stage), plus a margin;
#: the folding tree the LayerNorm family used before cost 32-131 barriers per kernel.
SPECS: dict[str, KernelSpec] = {
    spec.key: spec for spec in (*aot_specs_lookup.SPECS, *aot_specs_norm.SPECS, *aot_specs_quantized.SPECS)
}

#: Kernels whose main loads must compile to 128-bit global loads (D a multiple of 16, unit column stride).
NEEDS_VECTOR_LOADS = frozenset(spec.name for spec in SPECS.values() if spec.needs_vector_loads)

__all__ = ["SPECS", "NEEDS_VECTOR_LOADS", "TARGETS", "KernelSpec", "variant"]
