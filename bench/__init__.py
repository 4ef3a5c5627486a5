"""Benchmark and autotuning CLI: ``python -m triton_embed.bench``."""
