"""The package version: one place, read by ``pyproject.toml`` and keyed into the tuning cache."""
__version__ = "0.2.0"
