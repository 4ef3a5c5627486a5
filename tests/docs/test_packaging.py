"""What a fresh venv gets from ``pip install -e .``: every third-party module the package imports at module
level is a declared dependency (Triton's interpreter needs numpy, which nothing else installed); optional
peers are imported only inside functions, behind a try."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("triton_embed", "kernels", "bench")
#: Import name -> distribution name, where they differ.
DISTRIBUTION = {}
OPTIONAL = {"bitsandbytes", "matplotlib", "liger_kernel", "transformers"}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower().replace("-", "_") for dep in project["dependencies"]}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(top-level modules imported at module level, those imported anywhere)."""
    tree = ast.parse(path.read_text())
    anywhere, top = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        anywhere.update(n.split(".")[0] for n in names)
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top.add(node.module.split(".")[0])
    return top, anywhere


def test_every_imported_third_party_module_is_declared():
    declared = _declared()
    assert "numpy" in declared, "Triton's interpreter imports numpy: it must be a dependency"
    for folder in PACKAGE_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            top, anywhere = _imports(path)
            for module in anywhere - set(sys.stdlib_module_names) - {"triton_embed", "__future__"}:
                if module in OPTIONAL:
                    assert module not in top, f"{path}: optional peer {module} imported at module level"
                    continue
                assert DISTRIBUTION.get(module, module) in declared, f"{path} imports undeclared {module}"


def test_every_package_folder_is_installed():
    """A wheel (``pip install .``, not only ``-e``) holds exactly the folders listed in pyproject.toml:
    each folder with an ``__init__.py`` under the package dirs must be listed, under its installed name."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    folder_of = {name: Path(path) for name, path in tool["package-dir"].items()}
    found = set()
    for name, folder in folder_of.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join((name, *relative.parts)))
    assert found <= listed, f"package folders not installed by a wheel: {sorted(found - listed)}"
