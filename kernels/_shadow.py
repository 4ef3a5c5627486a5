"""Keeps the repository's top-level folders from shadowing other distributions' packages.

``kernels/`` and ``bench/`` are installed as ``triton_embed.kernels`` and ``triton_embed.bench``. Python started
in the repository root (a test run, a script, a notebook) also finds them as the top-level packages ``kernels``
and ``bench``, ahead of site-packages; and ``kernels`` is the name of Hugging Face's kernel hub, which
transformers imports. Imported under such a name, the folder's ``__init__`` calls :func:`step_aside`, which puts
the package of that name found on the rest of ``sys.path`` in its place, or raises ModuleNotFoundError as if the
folder were not there.
"""


def step_aside(name: str, init_file: str) -> None:
    """Replace the module being imported as ``name`` (a folder of this repository, ``init_file`` its
    ``__init__.py``) by the package ``name`` found outside the repository root, or raise ModuleNotFoundError."""
    # Imports in here: the callers run this file with runpy, whose module globals do not outlive the run.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    elsewhere = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {name!r} (the folder {os.path.join(root, name)} is triton_embed.{name}, "
            f"not a top-level package)", name=name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the import statement returns what sys.modules holds once this __init__ ends
    spec.loader.exec_module(module)
