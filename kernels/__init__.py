"""Triton JIT kernels of triton_embed, one module per kernel family.

Kernels only: no torch allocation and no launch policy here. The launchers in
``triton_embed.ops`` allocate outputs, choose grids and configs, and call these.
"""
