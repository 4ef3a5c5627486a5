"""The README and the docs/ pages: every Python block runs as written, the README stays short with the two
commands first, every relative link (and its #anchor) resolves, and the tables the code generates are printed
as it generates them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: The two commands, exactly as CI (.ci/run) runs them.
COMMANDS = (
    "pip install torch==2.13.0 && pip install -e . && python -m triton_embed.bench",
    'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest',
)
#: The one command for a lent GPU; CI rehearses it on the CPU with its own output folder for ``$OUT``.
GPU_COMMAND = 'timeout -k 10 570 python3 bench/device/run.py "$OUT" || test -s "$OUT/device-run.json"'
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line of the block's first code line, code) of every ```python block of a page."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "python"]


BLOCKS = [(page, index) for page in PAGES for index in range(len(python_blocks(page)))]


@pytest.mark.parametrize("page,index", BLOCKS, ids=[f"{_name(page)}-block{index}" for page, index in BLOCKS])
def test_example_runs(page: Path, index: int) -> None:
    line, code = python_blocks(page)[index]
    # Padded so that a traceback names the page's own line numbers.
    exec(compile("\n" * (line - 1) + code, str(page), "exec"), {"__name__": f"docs_example_{index}"})


def test_every_page_has_examples_or_none_is_lost() -> None:
    assert python_blocks(README), "the README lost its examples"
    assert len(PAGES) >= 9, "docs/ lost a page"


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail to a docs/ page"
    head = "\n".join(lines[:30])
    for command in COMMANDS:
        assert command in head, f"the README's first 30 lines lack: {command}"


def test_the_two_commands_are_shell_blocks_as_ci_runs_them() -> None:
    shell = [m.group(2).strip() for m in FENCE.finditer(README.read_text()) if m.group(1) in ("bash", "sh")]
    for command in COMMANDS:
        assert command in shell, f"not a shell block of its own: {command}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(command in ci for command in COMMANDS), "CI runs other commands than the README's"


def test_the_gpu_command_is_a_shell_block_that_ci_rehearses() -> None:
    shell = [m.group(2).strip() for m in FENCE.finditer(README.read_text()) if m.group(1) in ("bash", "sh")]
    assert GPU_COMMAND in shell, "the README lost the one GPU command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert GPU_COMMAND.replace('"$OUT', '"$out') in ci, "CI rehearses another GPU command than the README's"
    guide = (ROOT / "docs" / "benchmark.md").read_text()
    assert GPU_COMMAND in guide, "docs/benchmark.md gives another GPU command than the README's"


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a page (lower case, punctuation dropped, spaces to '-')."""
    text = FENCE.sub("", page.read_text())
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 1
        while anchor in anchors:
            anchor, n = f"{slug}-{n}", n + 1
        anchors.add(anchor)
    return anchors


def relative_links(page: Path) -> list[str]:
    """The targets of a page's markdown links outside code, other than web addresses."""
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in github_anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_name(page)}: {broken}"


def test_the_link_checker_sees_broken_links(tmp_path: Path) -> None:
    """Self-test: a missing file and a missing heading are both caught; code spans are not links."""
    (tmp_path / "a.md").write_text("# Top\n\n## The `x` part: two\n\n[ok](#the-x-part-two) [web](https://e.org)"
                                   " `[not](a link)` [gone](missing.md) [bad](a.md#nowhere)\n")
    page = tmp_path / "a.md"
    assert relative_links(page) == ["#the-x-part-two", "missing.md", "a.md#nowhere"]
    assert github_anchors(page) == {"top", "the-x-part-two"}


def test_every_page_is_linked_from_the_readme_and_opens_with_a_summary() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"the README does not link {_name(page)}"
        blocks = page.read_text().split("\n\n")
        assert blocks[0].startswith("# ") and len(blocks[1].split()) >= 30, f"{_name(page)}: no opening summary"


def _page(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def test_the_budget_tables_are_printed_as_the_code_holds_them() -> None:
    from triton_embed.ops import traffic

    assert traffic.markdown_table() in _page("kernels.md")
    assert traffic.markdown_table(traffic.QUANTIZED_BUDGETS) in _page("quantized.md")


def test_the_bytes_table_and_roofline_are_the_models_output() -> None:
    from triton_embed.bench import bytes_table

    text = _page("kernels.md")
    assert "bytes model, not measured" in text
    assert bytes_table.table() in text, "regenerate with: python -m triton_embed.bench.bytes_table"
