"""How the benchmark obtains its figures: interleaved rounds and their statistics (with a fake timer), the
bytes models, the performance-target summary, the deadline, the peers left out, the config sources."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import triton_embed
from triton_embed import tuning
from triton_embed.bench import benchmark, bytes_model, cases, impls, report, rounds, runner, summary
from triton_embed.bench.rounds import Timing
from triton_embed.bench.timing import Deadline

README = Path(__file__).resolve().parents[2] / "README.md"


# --- interleaved rounds -------------------------------------------------------------------------------------

def test_every_round_rotates_the_order() -> None:
    order = [(r, p, i) for r, p, i in rounds.schedule(["a", "b", "c"], ["fwd", "bwd"], 3)]
    assert [i for r, p, i in order if r == 0 and p == "fwd"] == ["a", "b", "c"]
    assert [i for r, p, i in order if r == 1 and p == "bwd"] == ["b", "c", "a"]
    assert [i for r, p, i in order if r == 2 and p == "fwd"] == ["c", "a", "b"]
    assert len(order) == 3 * 2 * 3


def test_interleave_reports_the_median_of_round_medians_and_the_spread() -> None:
    calls: list[tuple[str, str]] = []
    medians = {"a": iter([5.0, 1.0, 3.0]), "b": iter([2.0, 2.0, 8.0])}

    def time_one(impl: str, pass_: str) -> Timing:
        calls.append((impl, pass_))
        m = next(medians[impl])
        return Timing(m, m - 0.5, m + 0.5, (m - 0.5, m, m + 0.5))

    summaries, failed = rounds.interleave(["a", "b"], ["fwd"], 3, time_one)
    assert calls == [("a", "fwd"), ("b", "fwd"), ("b", "fwd"), ("a", "fwd"), ("a", "fwd"), ("b", "fwd")]
    a, b = summaries["a", "fwd"], summaries["b", "fwd"]
    assert (a.median, a.low, a.high, a.rounds) == (3.0, 1.0, 5.0, 3)
    assert (b.median, b.low, b.high) == (2.0, 2.0, 8.0)
    pooled = sorted([0.5, 1.0, 1.5, 2.5, 3.0, 3.5, 4.5, 5.0, 5.5])
    assert a.p20 == pytest.approx(rounds.quantile(pooled, 0.2)) and a.p80 == pytest.approx(rounds.quantile(pooled, 0.8))
    assert failed == {}


def test_a_failing_pass_loses_only_its_own_figures_and_a_deadline_keeps_finished_rounds() -> None:
    def time_one(impl: str, pass_: str) -> Timing:
        if impl == "bad" and pass_ == "bwd":
            raise RuntimeError("no backward\nsecond line")
        return Timing(1.0, 1.0, 1.0)

    summaries, failed = rounds.interleave(["ok", "bad"], ["fwd", "bwd"], 2, time_one)
    assert failed == {("bad", "bwd"): "RuntimeError: no backward"}
    assert set(summaries) == {("ok", "fwd"), ("ok", "bwd"), ("bad", "fwd")}
    summaries, _ = rounds.interleave(["ok"], ["fwd"], 5, time_one, stop=lambda: True)
    assert summaries["ok", "fwd"].rounds == 1  # at least one round, then the deadline stops it


class FakeTimer:
    """Stands in for timing.Timer: a fixed sequence of medians, in call order."""

    def __init__(self, medians: list[float]) -> None:
        self.device, self.gpu, self.medians, self.calls = torch.device("cpu"), False, iter(medians), 0

    def __call__(self, fn, reset=()) -> Timing:
        fn()
        self.calls += 1
        m = next(self.medians)
        return Timing(m, m, m, (m,))


def test_run_case_interleaves_implementations_and_derives_from_round_medians() -> None:
    case = cases.Case("embedding", 40, 8, 16, "zipf", "float32")
    peer = impls.Impl("reference", False, False, impls.build_reference)
    other = impls.Impl("bitsandbytes", False, False, impls.build_reference)  # a stand-in peer
    # schedule: round 0 reference, bitsandbytes; round 1 bitsandbytes, reference; round 2 as round 0
    timer = FakeTimer([1.0, 4.0, 6.0, 3.0, 2.0, 5.0])
    result = runner.run_case(case, [peer, other], ("forward",), timer, 0.0, time_triton=False, verify=True,
                             rounds=3)
    ref, bnb = (next(r for r in result.rows if r.impl == name) for name in ("reference", "bitsandbytes"))
    assert (ref.median_ms, ref.round_min_ms, ref.round_max_ms, ref.rounds) == (2.0, 1.0, 3.0, 3)
    assert (bnb.median_ms, bnb.round_min_ms, bnb.round_max_ms) == (5.0, 4.0, 6.0)
    assert ref.ok is True and ref.min_bytes == bytes_model.minimum("embedding", "forward", runner.sizes(
        case, cases.make_inputs(case, torch.device("cpu"))))
    assert ref.gbps == pytest.approx(ref.min_bytes / 2e-3 / 1e9)


# --- bytes models -------------------------------------------------------------------------------------------

def test_minimum_models_count_the_distinct_rows_and_the_compulsory_dense_write() -> None:
    n, d, v, u, e = 100, 16, 1000, 30, 2
    s = bytes_model.Sizes(n, d, v, u, 40, e)
    assert bytes_model.minimum("embedding", "forward", s) == n * 8 + u * d * e + n * d * e
    assert bytes_model.minimum("embedding", "backward", s) == n * 8 + n * d * e + v * d * e
    assert bytes_model.minimum("stable", "backward", s) == n * 8 + n * d * e + u * d * e + d * 4 + v * d * e + 8 * d
    assert bytes_model.minimum("layer_norm", "backward", s) == 3 * n * d * e + 3 * d * e
    both = bytes_model.minimum("stable", "fwd+bwd", s)
    assert both == bytes_model.minimum("stable", "forward", s) + bytes_model.minimum("stable", "backward", s)
    with pytest.raises(ValueError):
        bytes_model.minimum("renorm", "backward", s)


def test_each_implementation_has_its_own_model() -> None:
    n, d, v, u, segments = 4096, 1024, 5000, 900, 1000
    bf16 = bytes_model.Sizes(n, d, v, u, segments, 2)
    fp32 = bytes_model.Sizes(n, d, v, u, segments, 4)
    own = bytes_model.implementation
    # the gather: every implementation reads each token's row and writes the output
    assert {own(i, "embedding", "forward", bf16) for i in ("triton_embed", "reference", "compile", "liger")} == {
        n * 8 + 2 * n * d * 2}
    # PyTorch's dense backward: zero-fill, sort on log2(V) bits, float32 partial-segment sums, the U rows
    sort = n * 8 + 2 * 2 * n * 16  # 13 bits: 2 radix passes
    assert own("reference", "embedding", "backward", bf16) == (
        v * d * 2 + sort + n * 8 + n * d * 2 + 2 * segments * d * 4 + u * d * 2 + 4 * n * 8)
    small = bytes_model.Sizes(64, d, v, 20, 25, 2)  # ≤ 3072 tokens: ATen's direct kernel
    assert own("reference", "embedding", "backward", small) == v * d * 2 + 64 * 8 + 64 * d * 2 + 20 * d * 2
    # ours: written once, no fill; Inductor: float32 zeros + atomics + a cast for bf16, none for fp32
    ours = own("triton_embed", "embedding", "backward", bf16)
    assert v * d * 2 + n * d * 2 < ours < own("reference", "embedding", "backward", bf16)
    assert own("compile", "embedding", "backward", bf16) == (
        v * d * 4 + n * 8 + n * d * 2 + 2 * u * d * 4 + v * d * 6)
    assert own("compile", "embedding", "backward", fp32) == v * d * 4 + n * 8 + n * d * 4 + 2 * u * d * 4
    assert own("liger", "embedding", "backward", bf16) == v * d * 2 + n * 8 + n * d * 2 + 2 * u * d * 2
    # bitsandbytes' StableEmbedding: float32 casts around a float32 LayerNorm (none for fp32 tables)
    casts = 2 * n * d * (2 + 4)
    assert own("reference", "stable", "forward", bf16) - own("reference", "stable", "forward", fp32) == (
        casts + n * 8 + 2 * n * d * 2 - (n * 8 + 2 * n * d * 4))
    assert own("bitsandbytes", "stable", "backward", bf16) == own("reference", "stable", "backward", bf16)
    assert own("liger", "stable", "forward", bf16) is None and own("nobody", "embedding", "forward", bf16) is None
    fwd_bwd = own("triton_embed", "layer_norm", "fwd+bwd", fp32)
    assert fwd_bwd == own("triton_embed", "layer_norm", "forward", fp32) + own("triton_embed", "layer_norm",
                                                                                 "backward", fp32)


# --- the §5 summary -----------------------------------------------------------------------------------------

def _row(impl: str, op: str = "stable", pass_: str = "forward", dtype: str = "bfloat16", **figures) -> dict:
    base = dict(op=op, pass_=pass_, vocab=32000 if op != "layer_norm" else 0, dim=2048, tokens=16384,
                dist="zipf" if op != "layer_norm" else "-", dtype=dtype, unique_ids=100, impl=impl)
    row = runner.Row(**base)
    for name, value in figures.items():
        setattr(row, name, value)
    return row.as_dict()


def test_summary_judges_the_worst_case_against_each_target() -> None:
    rows = [
        _row("triton_embed", speedup_vs_reference=3.5, saved_bytes=10),
        _row("triton_embed", dtype="float32", speedup_vs_reference=1.5, speedup_vs_compile=1.4,
             speedup_vs_compile_max=1.1),
        _row("reference", saved_bytes=1000),
        _row("triton_embed", op="embedding", pct_copy=90.0, speedup_vs_reference=1.1),
        _row("triton_embed", op="embedding", pct_copy=70.0, speedup_vs_reference=0.9) | {"vocab": 1000},
    ]
    verdicts = {v["key"]: v for v in summary.evaluate(rows, gpu=True, host_syncs=0)}
    bf16, fp32 = verdicts["stable-forward-bnb-bf16"], verdicts["stable-forward-bnb-fp32"]
    assert bf16["status"] == "met" and bf16["against"] == "reference (bitsandbytes' ops)"
    assert fp32["status"] == "missed" and fp32["shortfall_pct"] == pytest.approx(100 * 0.3 / 1.8)
    assert verdicts["stable-forward-compile"]["value"] == 1.1  # the faster compile mode
    assert verdicts["stable-activation-memory"]["status"] == "met" and verdicts["stable-activation-memory"]["value"] == 1.0
    copy = verdicts["embedding-forward-copy"]  # the 1000-row table is not an LM shape
    assert copy["status"] == "met" and copy["value"] == 90.0
    eager = verdicts["embedding-forward-eager"]  # "never slower at any shape": every shape counts
    assert eager["status"] == "missed" and eager["value"] == 0.9 and "V=1000" in eager["case"]
    assert verdicts["host-syncs"]["status"] == "met"
    assert verdicts["stable-backward-bnb"]["status"] == "not measured"
    text = summary.format_summary(list(verdicts.values()))
    assert len(text.splitlines()) == len(summary.TARGETS) + 1 and "MISSED" in text and "missed by 17%" in text
    none = summary.evaluate(rows, gpu=False)
    assert {v["status"] for v in summary.evaluate([], gpu=False)} == {"not measured"}
    assert next(v for v in none if v["key"] == "host-syncs")["note"] == "the CUDA-graph check needs a GPU"


# --- the deadline, the peers, the configs -------------------------------------------------------------------

def test_cases_that_do_not_fit_the_time_budget_are_skipped_with_a_note(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda timer: (100.0, 2))

    def fake_run_case(case, impl_list, passes, timer, copy, **kwargs):
        now[0] += 30.0  # every case takes 30 s
        return runner.CaseResult(case)

    monkeypatch.setattr(benchmark, "run_case", fake_run_case)
    todo = [cases.Case("embedding", 100, 8, 16, "zipf", dtype) for dtype in ("float32", "bfloat16", "float16")]
    plan = benchmark.Plan(todo, ("forward",), ["reference", "compile"], compile_cases=todo[1:2],
                          deadline=Deadline(75.0, clock=lambda: now[0]), reserve_s=10.0)
    outcome = benchmark.run(plan, FakeTimer([]), False, benchmark.Outcome(), say=lambda text: None)
    assert outcome.cases_done == 2
    skipped_cases = [s for s in outcome.skipped if "not run," in s]
    assert len(skipped_cases) == 1 and "float16" in skipped_cases[0] and "time budget" in skipped_cases[0]
    assert any("compile left out" in note for note in outcome.notes)
    assert any("peers compile not run" in s for s in outcome.skipped)  # named among the skipped


def test_each_compile_peer_is_fitted_on_its_own_estimate_and_then_on_its_measured_cost(monkeypatch) -> None:
    """max-autotune compiles take minutes: it is left out (and named) where the default mode still fits; after
    a case, each mode's estimate is what its build and warm-up took there."""
    now = [0.0]
    monkeypatch.setattr(benchmark, "copy_bandwidth", lambda timer: (100.0, 2))
    ran: list[tuple[str, ...]] = []

    def fake_run_case(case, impl_list, passes, timer, copy, **kwargs):
        ran.append(tuple(i.name for i in impl_list))
        result = runner.CaseResult(case)
        result.prepare_s = {i.name: (20.0 if i.name == "compile" else 1.0) for i in impl_list}
        now[0] += 5.0 + sum(result.prepare_s.values())
        return result

    monkeypatch.setattr(benchmark, "run_case", fake_run_case)
    todo = [cases.Case("layer_norm", 0, 8, 16, "-", dtype) for dtype in ("float32", "bfloat16")]
    plan = benchmark.Plan(todo, ("forward",), ["reference", "compile", "compile-max"],
                          deadline=Deadline(200.0, clock=lambda: now[0]), reserve_s=10.0)
    outcome = benchmark.run(plan, FakeTimer([]), True, benchmark.Outcome(), say=lambda text: None)
    assert ran == [("triton_embed", "reference", "compile"), ("triton_embed", "reference", "compile")]
    assert sum("compile-max left out" in note for note in outcome.notes) == 2
    assert [s for s in outcome.skipped if "compile-max" in s] and not any("not run," in s for s in outcome.skipped)
    assert benchmark.fit_compile_peers(["compile"], 30.0, 5.0, {"compile": 20.0}) == (["compile"], [])


def test_missing_and_inapplicable_peers_are_left_out_with_a_note(monkeypatch) -> None:
    monkeypatch.setattr(impls, "bitsandbytes_module", lambda: None)
    monkeypatch.setattr(impls, "liger_functions", lambda: (None, None))
    chosen, notes = impls.select("embedding", ["reference", "bitsandbytes", "liger"])
    assert [i.name for i in chosen] == ["triton_embed", "reference"]
    assert any("bitsandbytes is not importable" in n for n in notes)
    assert any("liger-kernel is not importable" in n for n in notes)
    monkeypatch.setattr(impls, "liger_functions", lambda: (object(), object()))
    chosen, notes = impls.select("stable", ["liger", "bitsandbytes"])
    assert [i.name for i in chosen] == ["triton_embed"] and any("liger has no stable op" in n for n in notes)
    chosen, notes = impls.select("layer_norm", ["liger", "compile-max"])
    assert [i.name for i in chosen] == ["triton_embed", "liger", "compile-max"] and chosen[1].triton


def test_the_config_report_says_where_each_config_came_from(monkeypatch) -> None:
    assert set(benchmark.config_report({})) == set(tuning.INTERPRETER_CONFIGS) or not triton_embed.interpreter_enabled()
    monkeypatch.setattr(triton_embed, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(tuning, "chosen_configs", lambda: {"gather|bfloat16|768|16384": {"BLOCK_T": 8},
                                                           "renorm|bfloat16|768|16384": {"ELEMS": 4096},
                                                           "layer_norm|bfloat16|768|16384": {"ELEMS": 8192}})
    monkeypatch.setattr(tuning, "config_sources", lambda: {"gather|bfloat16|768|16384": "cache",
                                                           "renorm|bfloat16|768|16384": "cache",
                                                           "layer_norm|bfloat16|768|16384": "default"})
    configs = benchmark.config_report({"gather|bfloat16|768|16384": {"BLOCK_T": 8}})
    assert configs["gather|bfloat16|768|16384"]["source"] == "cache (tuned in this run)"
    assert configs["renorm|bfloat16|768|16384"]["source"] == "cache"
    lines = report.config_lines(configs)
    assert "layer_norm|bfloat16|768|16384: {'ELEMS': 8192} [default]" in lines


def test_layer_norm_is_a_case_of_its_own() -> None:
    case = cases.Case("layer_norm", 0, 24, 10, cases.NO_DIST, "float32")
    assert case.label() == "layer_norm D=24 N=10 float32"
    result = runner.run_case(case, impls.select("layer_norm", ["reference"])[0], runner.PASSES["both"],
                             FakeTimer([1.0] * 3), 0.0, time_triton=False, verify=True)
    ours = [r for r in result.rows if r.impl == "triton_embed"]
    assert [r.pass_ for r in ours] == ["forward", "backward", "fwd+bwd"] and not result.failures
    assert all(r.ok is True and r.model_bytes for r in ours)
    validate, subset = cases.validate_cases(gpu=True, quick=False)
    assert len(validate) == 26 and {c.op for c in validate} == set(cases.OPS) and len(subset) == 3
    assert validate[-3:] == subset and {c.op for c in subset} == {"embedding", "stable", "layer_norm"}


def test_the_gpu_timer_keeps_every_sample_and_falls_back_to_quantiles(monkeypatch) -> None:
    """The do_bench path, with do_bench replaced (no GPU needed): samples kept, or quantiles from an older
    Triton that lacks return_mode="all"."""
    import triton.testing

    from triton_embed.bench.timing import Timer

    seen: list[dict] = []

    def fake(fn, warmup, rep, grad_to_none=None, quantiles=None, return_mode="mean"):
        seen.append({"warmup": warmup, "rep": rep, "grads": grad_to_none, "mode": return_mode, "q": quantiles})
        fn()
        return [3.0, 1.0, 2.0] if return_mode == "all" else [2.0, 1.5, 2.5]

    monkeypatch.setattr(triton.testing, "do_bench", fake)
    timer = Timer(torch.device("cpu"), profile="validate")
    timer.gpu = True
    grad = torch.zeros(1, requires_grad=True)
    timing = timer(lambda: None, reset=[grad])
    assert (timing.median, timing.samples) == (2.0, (1.0, 2.0, 3.0))
    assert seen[-1] == {"warmup": 10, "rep": 40, "grads": [grad], "mode": "all", "q": None}

    def older(fn, warmup, rep, grad_to_none=None, quantiles=None, return_mode="mean"):
        assert return_mode in ("min", "max", "mean", "median")
        return [2.0, 1.5, 2.5]

    monkeypatch.setattr(triton.testing, "do_bench", older)
    assert timer(lambda: None) == Timing(2.0, 1.5, 2.5)
