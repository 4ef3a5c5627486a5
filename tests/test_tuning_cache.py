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
