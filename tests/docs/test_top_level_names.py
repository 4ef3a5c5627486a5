"""The repository's top-level folders ``kernels/`` and ``bench/`` are the packages ``triton_embed.kernels`` and
``triton_embed.bench``. Python started in the repository root finds them as top-level ``kernels`` and ``bench``
too; under those names they must step aside for other distributions (transformers imports Hugging Face's
``kernels``) and otherwise not exist."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _support.peers import needs

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("kernels", "bench")


def _run_in_repo_root(code: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # `python -c` puts the working directory first on sys.path: the repository root shadows site-packages.
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_top_level_folders_defer_to_installed_packages(tmp_path):
    for name in FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHO = 'the other {name}'\n")
    code = (
        "import kernels, bench; print(kernels.WHO); print(bench.WHO)\n"
        "from triton_embed.kernels.gather import gather_rows_kernel\n"
        "import triton_embed.bench.cli\n"
        "print('triton_embed ok')\n"
    )
    result = _run_in_repo_root(code, pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["the other kernels", "the other bench", "triton_embed ok"]


@pytest.mark.parametrize("name", FOLDERS)
def test_top_level_folder_is_not_a_package_of_its_own(name):
    """Without another distribution of that name the import fails as for any missing package; with one (the
    peers' environment has Hugging Face's ``kernels``), it is that one."""
    code = (
        f"try:\n    import {name}\nexcept ModuleNotFoundError as exc:\n    print('absent', exc.name)\n"
        f"else:\n    print('found', {name}.__file__)\n"
    )
    result = _run_in_repo_root(code)
    assert result.returncode == 0, result.stderr
    outcome, where = result.stdout.split()
    if _distribution_installed(name):
        assert outcome == "found" and Path(where).resolve() != REPO / name / "__init__.py", result.stdout
    else:
        assert (outcome, where) == ("absent", name)


def _distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@needs("transformers")
def test_transformers_imports_from_the_repository_root():
    """With the newest transformers (which imports Hugging Face's ``kernels``) installed, a script or a test run
    in the repository root imports it, and gets the installed ``kernels``."""
    code = (
        "import importlib.util, transformers\n"
        "from transformers import LlamaConfig\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "import kernels\n"
        "print(kernels.__file__ if hasattr(kernels, '__file__') else None)\n"
    )
    if not _distribution_installed("kernels"):
        code = "import transformers\nfrom transformers import LlamaConfig\nprint(None)\n"
    result = _run_in_repo_root(code)
    assert result.returncode == 0, result.stderr
    location = result.stdout.strip().splitlines()[-1]
    assert location == "None" or Path(location).resolve() != REPO / "kernels" / "__init__.py", location
