"""Triton JIT kernels of triton_embed, one module per kernel family.

Kernels only: no torch allocation and no launch policy here. The launchers in
``triton_embed.ops`` allocate outputs, choose grids and configs, and call these.

This folder is the package ``triton_embed.kernels``. Found as a top-level ``kernels`` (Python started in the
repository root), it steps aside for the distribution of that name (``_shadow.py``).
"""
if __name__ == "kernels":
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_shadow.py"))["step_aside"](__name__, __file__)
