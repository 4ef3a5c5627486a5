"""Tests against optional peers (bitsandbytes, transformers, liger-kernel): ``@needs("bitsandbytes")``
marks a test ``peer`` (CI runs ``pytest -m peer`` after installing the peers) and skips it, with the reason,
where the package is not installed."""
from __future__ import annotations

import importlib.util

import pytest


def installed(module: str) -> bool:
    """Whether ``module`` can be found (without importing it: bitsandbytes' import takes seconds)."""
    return importlib.util.find_spec(module) is not None


def needs(module: str):
    """Decorator: the test compares against ``module``."""
    def mark(test):
        test = pytest.mark.peer(test)
        return pytest.mark.skipif(not installed(module), reason=f"{module} is not installed (an optional peer)")(test)

    return mark
