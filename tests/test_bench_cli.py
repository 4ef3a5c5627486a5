"""``python -m triton_embed.bench`` validates its arguments and its output folder before any work: argparse's
exit code 2 with a plain message, never a traceback after minutes of measuring."""
from __future__ import annotations

from pathlib import Path

import pytest

from triton_embed.bench import benchmark, cli


@pytest.mark.parametrize("argv, message", [
    (["--vocab", "0"], "--vocab: must be at least 1, got 0"),
    (["--tokens", "0"], "--tokens: must be at least 1, got 0"),
    (["--dim", "-5"], "--dim: must be at least 1, got -5"),
    (["--dim", "4.5"], "--dim: '4.5' is not a whole number"),
    (["--tune-only", "--no-tune"], "contradict"),
    (["--name", "../elsewhere"], "--name must be a plain file name"),
    (["--time-budget", "0"], "--time-budget: must be above 0"),
    (["--index-check", "never"], "invalid choice: 'never'"),
    (["--validate", "--vocab", "100", "--ops", "stable"], "--validate runs its own shapes and checks: --vocab --ops"),
    (["--validate", "--no-check"], "cannot go with it"),
])
def test_bad_arguments_exit_2_before_any_work(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "run_case", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv, mode="interpreter")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unwritable_out_folder_fails_up_front(tmp_path: Path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(benchmark, "run_case", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(blocker / "results")], mode="interpreter")
    assert exit_info.value.code == 2
    assert "cannot write results to" in capsys.readouterr().err
    assert not (blocker.parent / "results").exists()


def test_a_writable_out_folder_is_created_and_left_clean(tmp_path: Path):
    out = tmp_path / "new" / "folder"
    assert cli.check_out_dir(out) is None
    assert out.is_dir() and not any(out.iterdir())
