"""Autotuning: the choice of a config per (kernel, dtype, dim, token bucket) from the config lists
(``runtime/configs.py``, re-exported here as ``CONFIGS``), and the persistent per-GPU cache written by
``python -m triton_embed.bench`` and read at run time.

Cache file: ``$TRITON_EMBED_CACHE_DIR/tuning.json``, default ``~/.cache/triton_embed/tuning.json``
(``$XDG_CACHE_HOME`` honoured). Entries are grouped by GPU name, Triton version and package version
(configs and their meaning change between releases); an entry is used only if it is one of the configs
listed in ``CONFIGS`` for its kernel, so a stale or hand-edited entry falls back to the default.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import triton

from ._version import __version__
from .runtime.dispatch import interpreter_enabled

from .runtime.configs import CONFIGS, INTERPRETER_CONFIGS, LAUNCH_OPTIONS, Config, split

_chosen: dict[str, Config] = {}
_sources: dict[str, str] = {}
_file_entries: dict[str, Config] | None = None
_forced = {"on": False}


def token_bucket(tokens: int) -> int:
    """Power-of-two bucket of a token count: configs are tuned per bucket, not per exact count."""
    return 1 if tokens <= 1 else 1 << (int(tokens) - 1).bit_length()


def tuning_key(kernel: str, dtype: torch.dtype, dim: int, tokens: int, rows: int | None = None,
               variant: str = "") -> str:
    """The cache key of one tuning decision: the kernel family (and variant, for kernels launched in
    several forms), dtype, dim, token bucket, and for kernels that walk the table a bucket of its rows.

    >>> tuning_key("gather", torch.float32, 768, 5000)
    'gather|float32|768|8192'
    >>> tuning_key("stable_backward", torch.bfloat16, 4096, 16384, variant="rows")
    'stable_backward[rows]|bfloat16|4096|16384'
    >>> tuning_key("embedding_rows", torch.bfloat16, 4096, 16384, rows=128256)
    'embedding_rows|bfloat16|4096|16384|v131072'
    """
    name = f"{kernel}[{variant}]" if variant else kernel
    key = f"{name}|{str(dtype).removeprefix('torch.')}|{dim}|{token_bucket(tokens)}"
    return key if rows is None else f"{key}|v{token_bucket(rows)}"


@functools.lru_cache(maxsize=4096)  # every launch asks: the string is built once per bucket
def _bucket_key(kernel: str, dtype: torch.dtype, dim: int, tokens: int, rows: int | None, variant: str) -> str:
    return tuning_key(kernel, dtype, dim, tokens, rows, variant)


def device_tag(device: torch.device | None = None) -> str:
    """GPU name, Triton version and package version: tuned configs are valid only where they were measured,
    and only for the release whose config lists they come from."""
    if interpreter_enabled() or not torch.cuda.is_available():
        gpu = "interpreter" if interpreter_enabled() else "cpu"
    else:
        gpu = torch.cuda.get_device_name(device)
    return f"{gpu}|triton-{triton.__version__}|triton_embed-{__version__}"


def cache_path() -> Path:
    """Where tuned configs persist (``TRITON_EMBED_CACHE_DIR`` overrides the folder).

    >>> cache_path().name
    'tuning.json'
    """
    folder = os.environ.get("TRITON_EMBED_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "triton_embed")
    return Path(folder) / "tuning.json"


#: The cache file's layout version (a file of another version is not this release's to read or extend).
CACHE_VERSION = 1


def read_cache(path: Path | None = None) -> dict[str, Any]:
    """The whole cache file as a dict (``{"version": 1, "devices": {tag: {key: config}}}``).

    A missing file is an empty cache. A file that cannot be read or parsed, or whose layout is not the one
    above (another version, ``devices`` or a device's entries not a mapping), raises ``RuntimeError`` saying
    so: writers must not extend it and readers fall back to the default configs. Entries themselves are
    checked where they are used (:func:`valid_config`).
    """
    path = path or cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": CACHE_VERSION, "devices": {}}
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise RuntimeError(f"triton_embed tuning cache {path} is unreadable ({exc}); delete it to retune") from exc
    problem = _layout_problem(data)
    if problem:
        raise RuntimeError(f"triton_embed tuning cache {path} has an unknown layout ({problem}); delete it to retune")
    return data


def _layout_problem(data: Any) -> str | None:
    """What is wrong with a parsed cache file's layout, or None.

    >>> _layout_problem({"version": 1, "devices": {"gpu": {}}}) is None
    True
    >>> _layout_problem({"version": 1, "devices": {"gpu": []}})
    "device 'gpu' holds a list, not a mapping of tuning keys"
    """
    if not isinstance(data, dict):
        return f"the file holds a {type(data).__name__}, not a mapping"
    if data.get("version") != CACHE_VERSION:
        return f"version {data.get('version')!r}, this release reads {CACHE_VERSION}"
    devices = data.get("devices")
    if not isinstance(devices, dict):
        return f"'devices' is a {type(devices).__name__}, not a mapping"
    for tag, entries in devices.items():
        if not isinstance(entries, dict):
            return f"device {tag!r} holds a {type(entries).__name__}, not a mapping of tuning keys"
    return None


def write_cache(entries: dict[str, Config], tag: str | None = None, path: Path | None = None) -> Path:
    """Merge ``entries`` into the cache under ``tag`` (default: this GPU), safely against concurrent writers.

    The file is rewritten under an exclusive lock and replaced atomically, so readers never see half a file
    and two writers never lose each other's entries.
    """
    path = path or cache_path()
    tag = tag or device_tag()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_cache(path)
        data["devices"].setdefault(tag, {}).update(entries)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tuning-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
        os.replace(tmp, path)
    global _file_entries
    _file_entries = None
    return path


def _cached_entries() -> dict[str, Config]:
    global _file_entries
    if _file_entries is None:
        try:
            entries = read_cache()["devices"].get(device_tag(), {})
        except RuntimeError as exc:  # a damaged cache must not break the ops: tune again, or use the defaults
            warnings.warn(f"{exc}; using untuned configs", RuntimeWarning, stacklevel=3)
            entries = {}
        _file_entries = entries
    return _file_entries


def valid_config(kernel: str, config: Any) -> bool:
    """Whether ``config`` is one of the configs listed for ``kernel`` (what the cache may hold).

    >>> valid_config("gather", CONFIGS["gather"][1]), valid_config("gather", {"BLOCK_T": 8})
    (True, False)
    """
    return isinstance(config, dict) and any(config == listed for listed in CONFIGS.get(kernel, ()))


def autotune_enabled() -> bool:
    """Runtime tuning of keys missing from the cache, opted into with ``TRITON_EMBED_AUTOTUNE=1``.

    Off by default: a key missing from the cache runs its shape-based default config (the first of its list),
    and ``python -m triton_embed.bench`` fills the cache ahead of training. Tuning at first use would time
    every config of each kernel a step launches (16 for a bfloat16 StableEmbedding step, each compiled first)
    on the first step of every new power-of-two token bucket: a stall of seconds mid-training, different on
    each rank when batch sizes vary (``python -m triton_embed.bench.tuning_cost`` measures it).

    >>> autotune_enabled() in (True, False)
    True
    """
    return os.environ.get("TRITON_EMBED_AUTOTUNE", "0") not in ("0", "", "false", "False")


def chosen_configs() -> dict[str, Config]:
    """Every config chosen in this process so far, by tuning key."""
    return dict(_chosen)


def forget_choices() -> None:
    """Drop the in-process choices (the next call consults the cache file or tunes again)."""
    global _file_entries
    _chosen.clear()
    _sources.clear()
    _file_entries = None


@contextlib.contextmanager
def forced_tuning() -> Iterator[None]:
    """Inside: every :func:`choose` given a bench closure times all configs again, whatever the in-process
    choices and the cache file hold (``python -m triton_embed.bench`` tunes this way: run each op once).

    >>> with forced_tuning():
    ...     pass
    """
    previous = _forced["on"]
    _forced["on"] = True
    try:
        yield
    finally:
        _forced["on"] = previous


def choose(
    kernel: str,
    dtype: torch.dtype,
    dim: int,
    tokens: int,
    bench: Callable[[Config], None] | None = None,
    force_tune: bool = False,
    rows: int | None = None,
    variant: str = "",
) -> Config:
    """The config for one launch: in-process choice, else the cache file, else (with runtime tuning opted
    into, :func:`autotune_enabled`, or forced) tuned with ``bench`` (which runs the kernel once with the
    given config; it may rewrite the launch's own outputs), else the default. Never tunes while a CUDA
    graph is being captured (timing would break the capture)."""
    force_tune = force_tune or _forced["on"]
    key = _bucket_key(kernel, dtype, dim, token_bucket(tokens), None if rows is None else token_bucket(rows), variant)
    # The in-process choice first: on a GPU every launch asks, and reading the environment costs more than
    # the rest of the call. Under the interpreter nothing is ever chosen here.
    chosen = None if force_tune else _chosen.get(key)
    if chosen is not None:
        return chosen
    if interpreter_enabled():
        return INTERPRETER_CONFIGS[kernel]
    if not force_tune:
        cached = _cached_entries().get(key)
        if valid_config(kernel, cached):
            _chosen[key], _sources[key] = cached, "cache"
            return cached
    config, source = CONFIGS[kernel][0], "default"
    # A family of one config has nothing to choose from: timing it would only stall the call.
    if bench is not None and len(CONFIGS[kernel]) > 1 and (force_tune or autotune_enabled()) and not _capturing():
        config, source = _fastest(kernel, CONFIGS[kernel], bench), "tuned"
    _chosen[key], _sources[key] = config, source
    return config


def config_sources() -> dict[str, str]:
    """Where each config chosen in this process came from: ``"cache"``, ``"tuned"`` or ``"default"``."""
    return dict(_sources)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _fastest(kernel: str, configs: list[Config], bench: Callable[[Config], None]) -> Config:
    """The config ``bench`` runs fastest. A config that fails to compile or launch (out of resources) is
    not a candidate; an out-of-memory is reported, not hidden, and the search goes on with the rest."""
    from triton.testing import do_bench

    best, best_ms = configs[0], float("inf")
    for config in configs:
        try:
            ms = do_bench(lambda: bench(config), warmup=5, rep=20)
        except torch.cuda.OutOfMemoryError as exc:
            warnings.warn(f"triton_embed tuning {kernel}: config {config} ran out of memory ({exc}); skipped",
                          RuntimeWarning, stacklevel=3)
            torch.cuda.empty_cache()
            continue
        except Exception:  # noqa: BLE001 - a config the GPU cannot run is just not a candidate
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    return best


__all__ = [
    "Config", "CONFIGS", "INTERPRETER_CONFIGS", "LAUNCH_OPTIONS", "split", "CACHE_VERSION",
    "token_bucket", "tuning_key", "device_tag", "cache_path", "read_cache", "write_cache", "valid_config",
    "autotune_enabled", "chosen_configs", "forget_choices", "forced_tuning", "choose", "config_sources",
]
