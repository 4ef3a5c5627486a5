"""Launchers (allocate, pick a config, launch the kernels) and the custom ops built on them."""
