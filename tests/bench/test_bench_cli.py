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
    (["--time-budget", "-3"], "--time-budget: must be above 0"),
    (["--time-budget", "inf"], "--time-budget: must be a finite number of seconds, got 'inf'"),
    (["--time-budget", "Infinity"], "must be a finite number of seconds"),
    (["--time-budget", "nan"], "--time-budget: must be a finite number of seconds, got 'nan'"),
    (["--time-budget", "1e300"], "--time-budget: must be at most 604800 s"),
    (["--time-budget", "ten"], "--time-budget: 'ten' is not a number"),
    (["--rounds", "0"], "--rounds: must be at least 1, got 0"),
    (["--rounds", "1000000"], "--rounds: must be at most 100"),
    (["--vocab", str(2**70)], "--vocab: must be at most"),
    (["--tokens", "nan"], "--tokens: 'nan' is not a whole number"),
    (["--validate", "--time-budget", "inf"], "must be a finite number of seconds"),
    (["--index-check", "never"], "invalid choice: 'never'"),
    (["--validate", "--vocab", "100", "--ops", "stable"], "--validate runs its own shapes and checks: --vocab --ops"),
    (["--validate", "--no-check"], "cannot go with it"),
    (["--validate", "--pass", "forward"], "--pass cannot go with it"),
    (["--out", ""], "--out: needs a folder path"),
    (["--peers"], "--peers: expected at least one argument"),
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


@pytest.mark.parametrize("argv", [["--vocab", "10000000000000", "--dim", "4096"], ["--quick", "--dim", "99999"]])
@pytest.mark.host_only
def test_shapes_too_large_for_the_interpreter_exit_2_before_any_work(argv, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "run_case", lambda *a, **k: pytest.fail("work started"))
    assert cli.main([*argv, "--out", str(tmp_path)], mode="interpreter") == 2
    assert "too large for the Triton interpreter" in capsys.readouterr().out


def test_one_list_given_takes_this_machines_default_for_the_other():
    from triton_embed.bench import cases

    assert cases.shapes(None, [64], None, gpu=False, quick=True) == [(500, 64, 64)]
    assert cases.shapes([100], None, None, gpu=False, quick=False) == [(100, 40, 72)]
    assert {v for v, _, _ in cases.shapes(None, [64], None, gpu=True, quick=False)} == set(cases.LM_VOCABS)


def test_zipf_ids_for_vocabularies_beyond_multinomials_limit():
    import torch

    from triton_embed.bench import cases

    case = cases.Case("embedding", cases.MULTINOMIAL_MAX + 5, 8, 4096, "zipf", "float32")
    ids = cases.make_ids(case, torch.Generator().manual_seed(0))
    assert ids.shape == (4096,) and int(ids.min()) >= 0 and int(ids.max()) < case.vocab
    assert torch.unique(ids).numel() < 4096  # Zipf: the hot ranks repeat


@pytest.mark.host_only
def test_a_reference_backend_setting_does_not_hide_the_kernels(tmp_path: Path, monkeypatch, capsys):
    """TRITON_EMBED_BACKEND=reference would compare the reference path with itself: the bench runs the
    kernels anyway, says so, and restores the setting afterwards."""
    import triton_embed

    triton_embed.set_backend("reference")
    try:
        before = triton_embed.launch_counts.copy()
        assert cli.main(["--quick", "--ops", "embedding", "--dtype", "float32", "--peers", "reference",
                         "--out", str(tmp_path)], mode="interpreter") == 0
        assert sum((triton_embed.launch_counts - before).values()) > 0  # the kernels ran
        assert triton_embed.get_backend() == "reference"
    finally:
        triton_embed.set_backend("auto")
    assert "runs with 'auto'" in capsys.readouterr().out


@pytest.mark.host_only
def test_no_check_claims_nothing(tmp_path: Path, capsys):
    import json

    assert cli.main(["--quick", "--ops", "embedding", "--dtype", "float32", "--peers", "reference", "--no-check",
                     "--out", str(tmp_path)], mode="interpreter") == 0
    assert "no triton_embed result was checked (--no-check)" in capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["checked"] == 0 and data["complete"] and "No triton_embed result was checked" in \
        (tmp_path / "report.md").read_text()


@pytest.mark.host_only
def test_ctrl_c_keeps_the_cases_done_marked_incomplete(tmp_path: Path, capsys, monkeypatch):
    """SIGINT (Ctrl-C) as SIGTERM: a clean message, exit 130, and results that say they are partial."""
    import json
    import os
    import signal

    real = benchmark.run_case
    calls = []

    def second_case_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(benchmark, "run_case", second_case_interrupted)
    code = cli.main(["--quick", "--ops", "embedding", "--dtype", "float32", "bfloat16", "--peers", "reference",
                     "--out", str(tmp_path)], mode="interpreter")
    assert code == 130 and "interrupted (SIGINT)" in capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["complete"] is False and data["ok"] is False and data["rows"]
    assert "Interrupted" in (tmp_path / "report.md").read_text()


def _strict_load(path: Path):
    import json

    return json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"{path.name}: non-JSON token {token}"))


@pytest.mark.host_only
def test_every_json_file_is_strict_even_with_non_finite_figures(tmp_path: Path, monkeypatch):
    """NaN and infinity (an error that is NaN, an unmeasurable bandwidth) are written as strings, never as the
    bare tokens NaN / Infinity that strict JSON readers refuse."""
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda timer: (float("inf"), 1))
    assert cli.main(["--quick", "--ops", "embedding", "--dtype", "float32", "--peers", "reference",
                     "--time-budget", "600", "--name", "named", "--out", str(tmp_path)], mode="interpreter") == 0
    for name in ("results.json", "named.json"):
        data = _strict_load(tmp_path / name)
        assert data["copy_bandwidth_gbps"] == "inf" and data["methodology"]["time_budget_s"] == 600.0


def test_write_json_spells_non_finite_floats_as_strings(tmp_path: Path):
    from triton_embed.bench import files

    files.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("-inf"), 1.0], "c": (2, float("inf"))})
    assert _strict_load(tmp_path / "x.json") == {"a": "nan", "b": ["-inf", 1.0], "c": [2, "inf"]}


def test_a_misshapen_tuning_cache_fails_up_front_on_a_gpu_run(tmp_path: Path, capsys, monkeypatch):
    """The tuning would write into the cache: a file it cannot extend is an argparse-style error before any
    work, not an AttributeError (or a lost tuning) minutes later."""
    monkeypatch.setenv("TRITON_EMBED_CACHE_DIR", str(tmp_path))
    (tmp_path / "tuning.json").write_text('{"version": 1, "devices": {"some GPU": [1, 2]}}')
    monkeypatch.setattr(benchmark, "run_case", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(cli, "tune_cases", lambda *a, **k: pytest.fail("tuning started"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--quick", "--out", str(tmp_path / "out")], mode="gpu")
    assert exit_info.value.code == 2
    assert "unknown layout" in capsys.readouterr().err
