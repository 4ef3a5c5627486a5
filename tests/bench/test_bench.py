"""``python -m triton_embed.bench``: the CLI end to end, its report schema, and the tuning cache.

The CLI runs in a subprocess without ``TRITON_INTERPRET`` in its environment, so on a machine without a GPU
the re-exec into the interpreter is exercised too. The cache tests cover the file layer (round trip, two
processes writing at once) and the run-time lookup in a fresh process without the interpreter (where
``tuning.choose`` is not short-circuited), down to the launch arguments of the gather launcher.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from triton_embed import tuning
from triton_embed.bench import cases, check, cli, host_time, report, runner, summary, tune
from triton_embed.bench.timing import _quantile

HAS_CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_EMBED_BENCH_REEXEC")}
    env["TRITON_EMBED_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(extra)
    return env


# --- the CLI end to end -------------------------------------------------------------------------------------

@pytest.mark.host_only
def test_cli_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Peers: the reference path only (no torch.compile warm-up, no multi-second bitsandbytes import).
    cmd = [sys.executable, "-m", "triton_embed.bench", "--quick", "--peers", "reference", "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[1/" in proc.stdout  # a progress line per case, with a counter
    assert "kernel configs (source):" in proc.stdout and "Performance targets" in proc.stdout
    if not HAS_CUDA:
        assert "GPU figures" in proc.stdout and "need a GPU" in proc.stdout
        assert "[interpreter]" in proc.stdout  # which config ran, and where it came from
        assert "not measured" in proc.stdout and "no GPU: triton_embed is not timed" in proc.stdout

    data = json.loads((out / "results.json").read_text())
    assert tuple(data) == report.JSON_KEYS
    assert data["ok"] is True and data["failures"] == []
    env = data["environment"]
    for key in ("gpu", "torch", "triton", "device_tag", "mode"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert env["mode"] == ("gpu" if HAS_CUDA else "cpu-interpreter")
    assert data["copy_bandwidth_gbps"] > 0
    assert set(data["bytes_models"]["minimum"]) == set(cases.OPS)
    assert set(data["bytes_models"]["own"]) == {"triton_embed", "reference", "compile", "liger"}
    assert env["index_check"] == "deferred" and data["methodology"]["index_check"] == "deferred"
    assert data["methodology"]["rounds"] == 1 and "round" in data["methodology"]["text"]
    assert isinstance(data["configs"], dict) and data["configs"]
    assert all(set(entry) == {"config", "source"} for entry in data["configs"].values())
    assert [t["key"] for t in data["targets"]] == [t.key for t in summary.TARGETS]
    rows = data["rows"]
    assert rows and all(list(r) == runner.column_names() for r in rows)
    assert {r["impl"] for r in rows} == {"triton_embed", "reference"}
    assert {r["op"] for r in rows} == set(cases.OPS)  # layer_norm and the max_norm renorm too
    assert {r["pass"] for r in rows} == {"forward", "backward", "fwd+bwd"}
    assert {r["pass"] for r in rows if r["op"] == "renorm"} == {"forward"}
    ours = [r for r in rows if r["impl"] == "triton_embed"]
    assert all(r["ok"] is True and r["max_abs_err"] is not None for r in ours)
    refs = [r for r in rows if r["impl"] == "reference"]
    assert all(r["median_ms"] > 0 and r["p20_ms"] <= r["p80_ms"] and r["rounds"] == 1 for r in refs)
    assert all(r["round_min_ms"] <= r["median_ms"] <= r["round_max_ms"] for r in refs)
    assert all(r["min_bytes"] > 0 and r["model_bytes"] > 0 for r in rows)
    assert all(r["model_speedup"] > 0 for r in refs)
    if HAS_CUDA:
        assert all(r["median_ms"] and r["gbps"] for r in ours if r["pass"] == "forward")
    else:
        assert all(r["median_ms"] is None for r in ours)  # interpreted kernels are checked, not timed
        assert {entry["source"] for entry in data["configs"].values()} == {"interpreter"}

    with open(out / "results.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == runner.column_names()
        assert len(list(reader)) == len(rows)

    host = data["host_time"]  # host time per call and the CPU path, beside the peers
    assert [r["key"] for r in host["rows"]] == [t.key for t in host_time.TARGETS]
    assert host["launches"] == ("real" if HAS_CUDA else "stubbed")
    assert (out / "host_time.csv").read_text().count("\n") == len(host["rows"]) + 1
    assert "host time" in proc.stdout and "CPU path" in proc.stdout

    md = (out / "report.md").read_text()
    assert "## Host time per call and the CPU path" in md
    assert "| case | pass | impl | median ms |" in md
    assert md.count("\n| ") >= len(rows) + 1
    for heading in ("## Results", "## Bytes models", "## Kernel configs", "Copy bandwidth", "## Performance targets"):
        assert heading in md
    from triton_embed.bench.plot import matplotlib_available

    assert (out / "plot.png").exists() == matplotlib_available()


@pytest.mark.host_only
def test_cli_exits_1_when_a_kernel_disagrees(monkeypatch, tmp_path: Path, capsys) -> None:
    """A wrong kernel result is a failure: the process exits 1 (run in-process, the interpreter is on)."""
    if HAS_CUDA:
        pytest.skip("in-process run targets the interpreter path")
    from triton_embed.ops import gather

    real = gather.gather
    monkeypatch.setattr(gather, "gather", lambda weight, ids: real(weight, ids) + 1)
    threads = torch.get_num_threads()
    try:
        code = cli.main(["--quick", "--ops", "embedding", "--dtype", "float32", "--peers", "reference",
                         "--out", str(tmp_path)], mode="interpreter")
    finally:
        torch.set_num_threads(threads)
    assert code == 1
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["ok"] is False and data["failures"]
    assert "FAIL" in capsys.readouterr().out


# --- pieces of the benchmark --------------------------------------------------------------------------------

def test_default_cases() -> None:
    triples = cases.shapes(None, None, None, gpu=True, quick=False)
    assert {(v, d) for v, d, _ in triples} == set(cases.LM_PAIRS)
    assert {v for v, _, _ in triples} == set(cases.LM_VOCABS) and {d for _, d, _ in triples} == set(cases.LM_DIMS)
    built = cases.build_cases(list(cases.OPS), triples, list(cases.DISTS), ["float32", "bfloat16"])
    # 24 cases per table op (3 pairs x 2 token counts x 2 dists x 2 dtypes); layer_norm has no ids: 12
    assert len(built) == 3 * 24 + 12
    assert all(c.vocab == 0 and c.dist == cases.NO_DIST for c in built if c.op == "layer_norm")
    crossed = cases.shapes([1000, 2000], [64], [128], gpu=True, quick=False)
    assert crossed == [(1000, 64, 128), (2000, 64, 128)]
    assert cases.shapes(None, None, None, gpu=False, quick=True) == list(cases.QUICK_CPU_SHAPES)


def test_zipf_ids_are_skewed_and_in_range() -> None:
    case = cases.Case("embedding", 5000, 8, 20000, "zipf", "float32")
    ids = cases.make_ids(case, torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 5000
    top = torch.bincount(ids).max().item()
    uniform = cases.make_ids(cases.Case("embedding", 5000, 8, 20000, "uniform", "float32"), torch.Generator())
    assert top > 10 * torch.bincount(uniform).max().item()


def test_quantiles_and_slug() -> None:
    assert _quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)
    assert report.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_check_flags_a_wrong_gradient() -> None:
    case = cases.Case("embedding", 50, 8, 40, "zipf", "float32")
    inputs = cases.make_inputs(case, torch.device("cpu"))
    exact = check.oracle(case, inputs)
    ref = check.Result(exact.output.float(), {k: v.float() for k, v in exact.grads.items()})
    assert check.compare(case, ref, ref, exact).ok
    bad = check.Result(ref.output, {"weight": ref.grads["weight"] + 1e-3})
    verdict = check.compare(case, bad, ref, exact)
    assert not verdict.ok and "weight" in verdict.detail


# --- the tuning cache ---------------------------------------------------------------------------------------

def test_cache_round_trip_is_used_at_run_time(tmp_path: Path, monkeypatch) -> None:
    """Written by the bench's code path, read back, then used by a fresh process's launcher."""
    monkeypatch.setenv("TRITON_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tag = tuning.device_tag()  # what a process without the interpreter reports on this machine
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tuned = {"BLOCK_T": 16, "BLOCK_D": 512, "num_warps": 8, "num_stages": 1}
    assert tuned != tuning.CONFIGS["gather"][0] and tuned in tuning.CONFIGS["gather"]
    key = tuning.tuning_key("gather", torch.float32, 1024, 100)
    path = tuning.write_cache({key: tuned}, tag=tag)
    assert path == tmp_path / "tuning.json"
    assert tuning.read_cache()["devices"][tag][key] == tuned

    script = textwrap.dedent(
        f"""
        import torch, triton_embed
        from triton_embed import tuning
        from triton_embed.ops import gather as launcher

        assert tuning.device_tag() == {tag!r}, tuning.device_tag()
        key = {key!r}
        assert tuning._cached_entries()[key] == {tuned!r}
        called = []
        assert tuning.choose("gather", torch.float32, 1024, 100, bench=called.append) == {tuned!r}
        assert called == [], "a cached key must not be re-timed"
        # a key the cache lacks falls back to the default (runtime tuning off)
        assert tuning.choose("gather", torch.float32, 1024, 5000) == tuning.CONFIGS["gather"][0]

        class Recorder:  # stands in for the jitted kernel: records how the launcher launches it
            launches = []
            def __getitem__(self, grid):
                return lambda *args, **kwargs: self.launches.append(kwargs)

        tuning.forget_choices()
        launcher.gather_rows_kernel = Recorder()
        launcher.gather(torch.randn(50, 1024), torch.randint(0, 50, (100,)))
        (kwargs,) = Recorder.launches
        assert {{k: kwargs[k] for k in {tuned!r}}} == {tuned!r}, kwargs
        assert tuning.chosen_configs() == {{key: {tuned!r}}}
        print("cache used")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_EMBED_BACKEND="reference", TRITON_EMBED_AUTOTUNE="0")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cache used" in proc.stdout


def test_forced_tuning_retimes_cached_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRITON_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    configs = tuning.CONFIGS["gather"]
    monkeypatch.setattr(tuning, "_fastest", lambda kernel, candidates, bench: candidates[2])
    key = tuning.tuning_key("gather", torch.bfloat16, 256, 4096)
    tuning.write_cache({key: configs[1]})
    try:
        tuning.forget_choices()
        assert tuning.choose("gather", torch.bfloat16, 256, 4096, bench=lambda c: None) == configs[1]
        with tuning.forced_tuning():
            assert tuning.choose("gather", torch.bfloat16, 256, 4096, bench=lambda c: None) == configs[2]
        assert tuning.chosen_configs()[key] == configs[2]
    finally:
        tuning.forget_choices()


def test_tuner_reaches_every_launcher(tmp_path: Path, monkeypatch) -> None:
    """The bench's tuning run under the interpreter, with the GPU benchmarker replaced by one launch per
    config: every kernel's launcher is asked, every config launches, the winners land in the cache."""
    monkeypatch.setenv("TRITON_EMBED_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "interpreter_enabled", lambda: False)
    launched: list[dict] = []

    def every_config(kernel, candidates, bench):
        for config in candidates:
            bench(config)
            launched.append(config)
        return candidates[-1]

    monkeypatch.setattr(tuning, "_fastest", every_config)
    # StableEmbedding's backward: per distinct id for a float32 table, per token (then summed) for bf16.
    ops = [("embedding", "float32"), ("stable", "float32"), ("stable", "bfloat16"), ("layer_norm", "float32")]
    tuner = tune.Tuner()
    try:
        for op, dtype in ops:
            vocab, dist = (0, cases.NO_DIST) if op == "layer_norm" else (300, "zipf")
            case = cases.Case(op, vocab, 32, 40, dist, dtype)
            assert tuner.needed(case)
            tuner.tune(case, cases.make_inputs(case, torch.device("cuda" if HAS_CUDA else "cpu")))
            other = cases.Case(op, vocab, 32, 33, "uniform" if vocab else dist, dtype)
            assert not tuner.needed(case) and not tuner.needed(other)
        # the renorm op's kernels are the embedding's: tuned with it; another table size is another key
        assert not tuner.needed(cases.Case("renorm", 300, 32, 40, "zipf", "float32"))
        assert tuner.needed(cases.Case("embedding", 5000, 32, 40, "zipf", "float32"))
    finally:
        tuning.forget_choices()
    written = tuning.read_cache()["devices"][tuning.device_tag()]
    families = {"gather", "embedding_pieces", "embedding_rows", "renorm", "stable_forward", "stable_backward",
                "stable_rows", "stable_runs", "layer_norm", "layer_norm_backward", "layer_norm_param_grad"}
    assert {key.split("|")[0].split("[")[0] for key in written} == families
    for key, config in written.items():
        assert config == tuning.CONFIGS[key.split("|")[0].split("[")[0]][-1], key
    assert tuning.tuning_key("embedding_rows", torch.float32, 32, 40, rows=300) in written
    assert written == tuner.written
    assert len(launched) >= sum(len(tuning.CONFIGS[k]) for k in families)


def _write_many(path: str, prefix: str, count: int, start) -> None:
    """One writer process: ``count`` separate cache writes, each under its own key, once both writers are up."""
    start.wait(timeout=120)
    for i in range(count):
        tuning.write_cache({f"{prefix}|float32|{i}|1024": {"BLOCK_T": i, "num_warps": 4}}, tag="race", path=Path(path))


def test_two_processes_writing_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tuning.json"
    count = 60
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    writers = [
        ctx.Process(target=_write_many, args=(str(path), name, count, start)) for name in ("gather", "scatter")
    ]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):  # readers never see half a file
        if path.exists():
            json.loads(path.read_text())
            reads += 1
        time.sleep(0.002)
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    data = tuning.read_cache(path)
    entries = data["devices"]["race"]
    assert len(entries) == 2 * count
    for name in ("gather", "scatter"):
        for i in range(count):
            assert entries[f"{name}|float32|{i}|1024"] == {"BLOCK_T": i, "num_warps": 4}
    assert not list(tmp_path.glob(".tuning-*"))  # no temporary file left behind
