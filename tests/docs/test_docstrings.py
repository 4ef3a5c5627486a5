"""The examples in the public docstrings run and print what they say."""
import doctest
import importlib
import pkgutil

import pytest

import triton_embed

MODULES = sorted(
    {"triton_embed"}
    | {m.name for m in pkgutil.walk_packages(triton_embed.__path__, "triton_embed.") if ".bench" not in m.name}
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0
