"""The tuning cache at run time: entries are keyed by the package version too, checked against the
current config lists, and a stale, foreign or damaged cache falls back to the default configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import triton_embed
from triton_embed import tuning


@pytest.fixture
def compiled_mode(tmp_path: Path, monkeypatch):
    """``tuning.choose`` as a GPU process runs it (the interpreter short-circuits it), on an empty cache."""
    monkeypatch.setenv("TRITON_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "interpreter_enabled", lambda: False)
    tuning.forget_choices()
    yield tmp_path / "tuning.json"
    tuning.forget_choices()


def _write(path: Path, entries: dict, tag: str | None = None) -> None:
    path.write_text(json.dumps({"version": 1, "devices": {tag or tuning.device_tag(): entries}}))


def test_device_tag_names_gpu_triton_and_package_versions():
    tag = tuning.device_tag()
    assert tag.endswith(f"|triton_embed-{triton_embed.__version__}") and "|triton-" in tag


def test_an_entry_of_another_schema_falls_back_to_the_default(compiled_mode):
    """An older release's renorm entry named BLOCK_T/BLOCK_D; this one's launcher reads ELEMS (an entry of
    another schema once crashed a launcher with a KeyError)."""
    key = tuning.tuning_key("renorm", torch.bfloat16, 4096, 16384)
    _write(compiled_mode, {key: {"BLOCK_T": 4, "BLOCK_D": 512, "num_warps": 4, "num_stages": 1}})
    assert tuning.choose("renorm", torch.bfloat16, 4096, 16384) == tuning.CONFIGS["renorm"][0]


@pytest.mark.parametrize("entry", [
    {"BLOCK_T": 8, "BLOCK_D": 3, "num_warps": 4, "num_stages": 1},  # right keys, a value no config has
    {"BLOCK_T": 8, "BLOCK_D": 512, "num_warps": 4, "num_stages": 1, "extra": 1},
    "BLOCK_T=8", None, [8, 512],
])
def test_entries_not_in_the_config_list_are_ignored(compiled_mode, entry):
    key = tuning.tuning_key("gather", torch.float32, 768, 8192)
    _write(compiled_mode, {key: entry})
    assert tuning.choose("gather", torch.float32, 768, 8192) == tuning.CONFIGS["gather"][0]


def test_a_listed_entry_is_used(compiled_mode):
    key = tuning.tuning_key("gather", torch.float32, 768, 8192)
    _write(compiled_mode, {key: tuning.CONFIGS["gather"][2]})
    assert tuning.choose("gather", torch.float32, 768, 8192) == tuning.CONFIGS["gather"][2]


def test_entries_of_another_package_version_are_not_read(compiled_mode):
    key = tuning.tuning_key("gather", torch.float32, 768, 8192)
    old_tag = tuning.device_tag().rsplit("|", 1)[0] + "|triton_embed-0.0.1"
    _write(compiled_mode, {key: tuning.CONFIGS["gather"][2]}, tag=old_tag)
    assert tuning.choose("gather", torch.float32, 768, 8192) == tuning.CONFIGS["gather"][0]


def test_a_damaged_cache_file_warns_and_uses_the_defaults(compiled_mode):
    compiled_mode.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert tuning.choose("gather", torch.float32, 768, 8192) == tuning.CONFIGS["gather"][0]


MISSHAPEN = [
    pytest.param('[1, 2]', "holds a list", id="top-level-list"),
    pytest.param('"tuning"', "holds a str", id="top-level-string"),
    pytest.param('{"version": 1, "devices": []}', "'devices' is a list", id="devices-list"),
    pytest.param('{"version": 1}', "'devices' is a NoneType", id="devices-missing"),
    pytest.param('{"version": 1, "devices": {"TAG": [1, 2]}}', "holds a list", id="device-entry-list"),
    pytest.param('{"version": 1, "devices": {"TAG": "gather|float32"}}', "holds a str", id="device-entry-string"),
    pytest.param('{"version": 1, "devices": {"TAG": null}}', "holds a NoneType", id="device-entry-null"),
    pytest.param('{"version": 2, "devices": {}}', "version 2", id="other-version"),
    pytest.param('{"devices": {}}', "version None", id="no-version"),
]
UNREADABLE = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b"", id="empty"),
]


def _misshapen(path: Path, text: str) -> None:
    path.write_text(text.replace("TAG", tuning.device_tag()))


@pytest.mark.parametrize("text, problem", MISSHAPEN)
def test_a_misshapen_cache_gets_the_clear_error_on_read_and_write(tmp_path, text, problem):
    """write_cache once raised AttributeError on a device entry that was a list: every layout it cannot
    extend gets the unreadable file's clear RuntimeError, and the file is left as it was."""
    path = tmp_path / "tuning.json"
    _misshapen(path, text)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match=f"unknown layout .*{problem}.*delete it to retune"):
        tuning.read_cache(path)
    with pytest.raises(RuntimeError, match="delete it to retune"):
        tuning.write_cache({"gather|float32|768|8192": tuning.CONFIGS["gather"][0]}, path=path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("raw", UNREADABLE)
def test_an_unreadable_cache_gets_the_clear_error_on_read_and_write(tmp_path, raw):
    path = tmp_path / "tuning.json"
    path.write_bytes(raw)
    with pytest.raises(RuntimeError, match="is unreadable .*delete it to retune"):
        tuning.read_cache(path)
    with pytest.raises(RuntimeError, match="is unreadable"):
        tuning.write_cache({"gather|float32|768|8192": tuning.CONFIGS["gather"][0]}, path=path)
    assert path.read_bytes() == raw


@pytest.mark.parametrize("text", [p.values[0] for p in MISSHAPEN])
def test_a_misshapen_cache_warns_and_the_ops_use_the_defaults(compiled_mode, text):
    _misshapen(compiled_mode, text)
    with pytest.warns(RuntimeWarning, match="unknown layout"):
        assert tuning.choose("gather", torch.float32, 768, 8192) == tuning.CONFIGS["gather"][0]


def test_the_cache_file_is_strict_json(tmp_path):
    path = tuning.write_cache({"gather|float32|768|8192": tuning.CONFIGS["gather"][1]}, tag="gpu", path=tmp_path / "t.json")
    data = json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))
    assert data == {"version": 1, "devices": {"gpu": {"gather|float32|768|8192": tuning.CONFIGS["gather"][1]}}}


def test_runtime_tuning_is_opt_in(compiled_mode, monkeypatch):
    """A key missing from the cache runs its default config unless TRITON_EMBED_AUTOTUNE=1: tuning at first
    use would stall a training step for seconds (bench/tuning_cost.py measures it)."""
    monkeypatch.delenv("TRITON_EMBED_AUTOTUNE", raising=False)
    timed = []
    monkeypatch.setattr(tuning, "_fastest", lambda kernel, configs, bench: timed.append(kernel) or configs[1])
    assert tuning.choose("gather", torch.float32, 768, 8192, bench=lambda c: None) == tuning.CONFIGS["gather"][0]
    assert timed == [] and tuning.config_sources()[tuning.tuning_key("gather", torch.float32, 768, 8192)] == "default"
    monkeypatch.setenv("TRITON_EMBED_AUTOTUNE", "1")
    assert tuning.choose("gather", torch.float32, 768, 16384, bench=lambda c: None) == tuning.CONFIGS["gather"][1]
    assert timed == ["gather"]
